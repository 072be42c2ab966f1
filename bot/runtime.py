"""Assembling a running bot from its config: store, flows, templates, sender, app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from bot.config import Config, resolve
from bot.engine import Engine, FallbackSpec
from bot.engine.loader import flow_files
from bot.errors import ConfigError, FlowError
from bot.findings import Finding
from bot.sender import LogTransport, Transport
from bot.store import store_from_url
from bot.templates import TEMPLATES_FILE, RegistryFileError, TemplateRegistry, check_file
from bot.whatsapp import CloudAPI
from bot.window import WindowPolicy

if TYPE_CHECKING:  # ``import bot`` (Outbound) must not load the web server
    from aiohttp import web

log = structlog.get_logger("windowbot.runtime")


def load_registry(flows_dir: Path) -> tuple[TemplateRegistry | None, list[Finding]]:
    """The flows folder's template registry (``None`` without one) and what is wrong in it."""
    path = flows_dir / TEMPLATES_FILE
    if not path.is_file():
        return None, []
    findings = check_file(path)
    try:
        return TemplateRegistry.load(path), findings
    except RegistryFileError:
        return None, findings


def fallback_checker(
    registry: TemplateRegistry | None, *, broken: bool = False
) -> Callable[[FallbackSpec], list[str]]:
    """How ``bot check`` validates a reply's template fallback against the registry.

    Only errors are returned: a template's status warnings are findings of the template
    file. ``broken``: the folder has a template file that did not load; fallbacks are then
    not checked (its own findings say why).
    """

    missing = not broken  # said once, at the first fallback: one cause, one finding

    def check(spec: FallbackSpec) -> list[str]:
        nonlocal missing
        if registry is None:
            if not missing:
                return []  # the template file's own errors, or the first fallback, say it
            missing = False
            return [
                f"template fallback {spec.template!r}: the flows folder has no {TEMPLATES_FILE} "
                "to declare it (add one; flows/README.md shows its format); no other "
                "fallback is checked until it exists"
            ]
        params: int | tuple[str, ...] = spec.names if spec.named else len(spec.params)
        problems = registry.check_call(spec.template, spec.language or "user", params)
        # A status warning (PENDING) is the template file's own finding: said there, once.
        return [p for p in problems if not p.startswith("warning: ")]

    return check


def window_policy(config: Config) -> WindowPolicy:
    """The window decision's settings from the config."""
    return WindowPolicy(
        margin_seconds=config.window.margin_seconds,
        country_languages=dict(config.window.country_languages),
        default_language=config.window.default_language,
    )


@contextlib.asynccontextmanager
async def make_transport(config: Config) -> AsyncIterator[Transport]:
    """The Cloud API client, or, in sandbox mode, a transport that logs replies."""
    if config.sandbox:
        yield LogTransport()
        return
    wa = config.whatsapp
    async with CloudAPI(
        phone_number_id=wa.phone_number_id,
        token=wa.token,
        base_url=wa.api_url,
        api_version=wa.api_version,
        rate_limit=wa.send_rate,
        timeout=wa.timeout,
    ) as api:
        yield api


RECORD_ONLY_HINT = (
    "to record messages without ever answering them, say so: `bot run --record-only` "
    "(or BOT_RECORD_ONLY=1, [flows] record_only = true)"
)


def flows_folder(config: Config) -> Path:
    """The config's flows folder; ``ConfigError`` when it is missing or holds no flow."""
    flows_dir = resolve(config, config.flows.dir)
    if not flows_dir.is_dir():
        raise ConfigError(
            f"flows folder {flows_dir} does not exist (set [flows] dir or BOT_FLOWS_DIR)"
        )
    if not flow_files(flows_dir):
        raise ConfigError(f"flows folder {flows_dir} holds no flow file (*.yaml)")
    return flows_dir


def load_engine(config: Config) -> tuple[Engine, TemplateRegistry | None]:
    """Load and check the flows and templates; raise ``FlowError`` with the whole report.

    Raises:
        ConfigError: the flows folder is missing or holds no flow file.
        FlowError: a flow or the template file has errors (``findings`` holds them).
    """
    flows_dir = flows_folder(config)
    registry, findings = load_registry(flows_dir)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise FlowError(
            f"{TEMPLATES_FILE} has {len(errors)} error(s); run `bot check` for the report:\n"
            + "\n".join(str(f) for f in errors),
            list(errors),
        )
    engine = Engine.load(
        flows_dir,
        fallback_checker=fallback_checker(registry),
        default_flow=config.flows.default_flow or None,
    )
    for warning in [*findings, *engine.warnings]:
        log.warning("flow_check_warning", finding=str(warning))
    log.info(
        "flows_loaded",
        flows=sorted(engine.flows),
        folder=str(flows_dir),
        templates=sorted(registry.templates) if registry else [],
    )
    return engine, registry


def build_app(config: Config, *, reload: bool = False) -> web.Application:
    """The application ``bot run`` serves, with everything the config names.

    ``reload`` (``bot run --reload``) answers through a :class:`~bot.reload.EngineRef` that a
    watcher of the flows folder swaps on every edit that passes the checks.
    """
    from bot.app import SENDER, Components, create_app

    if reload:
        from bot import reload as reloading

        reloading.require_watcher()
    engine: Engine | None = None
    registry: TemplateRegistry | None = None
    if config.flows.record_only:
        log.warning(
            "record_only",
            effect="messages are recorded and never answered (no flows are loaded)",
            flows=str(resolve(config, config.flows.dir)),
        )
        registry, _ = load_registry(resolve(config, config.flows.dir))
    else:
        try:
            engine, registry = load_engine(config)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; {RECORD_ONLY_HINT}") from None
    store = store_from_url(
        config.store.url, base_dir=config.base_dir, timeout=config.server.store_timeout_seconds
    )
    if config.sandbox:
        log.warning(
            "sandbox_mode",
            reason="no WHATSAPP_TOKEN" if not config.whatsapp.token else "server.sandbox = true",
            effect="replies are logged, not sent to Meta",
            store=store.description,
            flows=str(resolve(config, config.flows.dir)),
        )
    if not config.whatsapp.app_secret and config.sandbox:
        log.warning(
            "signature_check_disabled",
            reason="sandbox mode and no WHATSAPP_APP_SECRET",
            effect="ANY caller can post webhooks: set WHATSAPP_APP_SECRET before going live",
        )
    components = Components(
        store=store,
        handler=engine.handle if engine is not None else None,
        pure_handler=engine.handle_pure if engine is not None else None,
        error_replies=engine.error_replies if engine is not None else None,
        transport=lambda: make_transport(config),
        registry=registry,
        policy=window_policy(config),
        typing=engine.wants_typing if engine is not None and engine.typing_flows else None,
        sandbox_cloud=config.sandbox,
    )
    if not reload or engine is None:
        return create_app(config, components)
    ref = reloading.EngineRef(engine, registry)
    components.handler, components.error_replies = ref.handle, ref.error_replies
    components.pure_handler = ref.handle_pure
    app = create_app(config, components)

    def tell_sender(new: TemplateRegistry | None) -> None:
        if SENDER in app:
            app[SENDER].registry = new

    ref.on_swap.append(tell_sender)
    app.cleanup_ctx.append(reloading.reloader(ref, config, load_engine))
    return app
