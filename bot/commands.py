"""The ``bot check``, ``bot graph`` and ``bot send`` commands (``bot chat`` is in bot.chat)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bot.config import Config, resolve
from bot.engine import Engine, check_folder, mermaid
from bot.errors import BotError, ConfigError
from bot.findings import format_findings
from bot.models import Outgoing, TemplateCall, UserRecord
from bot.runtime import fallback_checker, load_registry, make_transport, window_policy
from bot.sender import Sender
from bot.store import store_from_url


def check(config: Config) -> int:
    """Check every flow and the template registry; print all findings; 0 if no error."""
    flows_dir = resolve(config, config.flows.dir)
    if not flows_dir.is_dir():
        print(f"bot: flows folder {flows_dir} does not exist (set [flows] dir or BOT_FLOWS_DIR)")
        return 1
    registry, template_findings = load_registry(flows_dir)
    findings = [
        *template_findings,
        *check_folder(flows_dir, fallback_checker=fallback_checker(registry)),
    ]
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    if findings:
        print(format_findings(findings))
    flows = len([p for p in flows_dir.glob("*.yaml") if not p.name.startswith(("_", "templates"))])
    print(f"{flows_dir}: {flows} flow file(s), {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def graph(config: Config, flow: str, output: Path | None) -> int:
    """Print (or write as Markdown) a flow's Mermaid state diagram."""
    flows_dir = resolve(config, config.flows.dir)
    registry, _ = load_registry(flows_dir)
    engine = Engine.load(flows_dir, fallback_checker=fallback_checker(registry))
    if flow not in engine.flows:
        known = ", ".join(sorted(engine.flows))
        raise ConfigError(f"no flow named {flow!r} in {flows_dir} (flows: {known})")
    diagram = mermaid(engine, flow)
    if output is None:
        sys.stdout.write(diagram if diagram.endswith("\n") else diagram + "\n")
    else:
        output.write_text(f"# Flow `{flow}`\n\n```mermaid\n{diagram}\n```\n", encoding="utf-8")
        print(f"wrote {output}")
    return 0


def parse_params(values: Sequence[str]) -> tuple[str, ...] | dict[str, str]:
    """``--param`` values: all ``NAME=VALUE`` (named template) or all plain (positional)."""
    named = [v for v in values if "=" in v]
    if named and len(named) != len(values):
        raise ConfigError("--param: use NAME=VALUE for every parameter or for none")
    if named:
        return dict(v.split("=", 1) for v in values)
    return tuple(values)


async def send(
    config: Config,
    user: str,
    text: str | None,
    template: str | None,
    params: Sequence[str],
    language: str,
) -> int:
    """Queue a business-initiated message for ``user`` and send it now if nobody holds them."""
    flows_dir = resolve(config, config.flows.dir)
    registry, _ = load_registry(flows_dir)
    fallback = None
    if template:
        fallback = TemplateCall(name=template, parameters=parse_params(params), language=language)
        if registry is None:
            raise BotError(f"no valid templates.yaml in {flows_dir}: run `bot check`")
        problems = [
            p
            for p in registry.check_call(template, language or "user", fallback.parameters)
            if not p.startswith("warning")
        ]
        if problems:
            raise BotError(f"template {template}: " + "; ".join(problems))
    message = {"type": "text", "text": {"body": text, "preview_url": False}} if text else None
    outgoing = Outgoing(message=message, fallback=fallback, note="bot send")
    store = store_from_url(config.store.url, base_dir=config.base_dir)
    await store.open()
    try:
        now = time.time()
        record = await store.get_user(user) or UserRecord(key=user, wa_id=user)
        await store.commit_turn(None, record, [outgoing], now)
        owner = f"bot-send-{now}"
        if not await store.acquire_user(user, owner, now + 30, now):
            print(f"queued for {user}; a running bot holds this user and will send it")
            return 0
        try:
            async with make_transport(config) as transport:
                decisions: list[str] = []
                sender = Sender(
                    store,
                    transport,
                    registry=registry,
                    policy=window_policy(config),
                    on_decision=lambda e, d: decisions.append(f"{d.kind}: {d.reason}"),
                )
                record = await store.get_user(user) or record
                await sender.drain(record, now)
        finally:
            await store.release_user(user, owner)
        for line in decisions:
            print(line)
        return 0
    finally:
        await store.close()
