"""``bot run --reload``: edits to flows, templates and hooks swap the running engine.

The app answers through an :class:`EngineRef`; a watcher (``watchfiles``) sees the flows
folder change, loads and checks it again off the event loop, and on success swaps the
engine and the template registry between two messages. Users keep their state: the store
is never touched, and a record whose state the edit removed starts over in the default flow,
as after any deploy. An edit with errors is refused: its findings are logged
(``flows_reload_failed``) and the previous flows keep answering.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from bot.config import Config, resolve
from bot.engine import Engine, Turn
from bot.errors import ConfigError, FlowError
from bot.findings import Finding, format_findings
from bot.models import InboundMessage, Outgoing, UserRecord
from bot.templates import TemplateRegistry

log = structlog.get_logger("windowbot.reload")

WATCHED = (".yaml", ".yml", ".py")


class EngineRef:
    """The engine and registry a running app answers with; :meth:`swap` replaces both.

    The dispatcher calls :meth:`handle` and :meth:`error_replies`; each message reads the
    engine once, so a swap never splits a turn between two versions of the flows.
    """

    __slots__ = ("engine", "on_swap", "registry")

    def __init__(self, engine: Engine, registry: TemplateRegistry | None) -> None:
        self.engine = engine
        self.registry = registry
        self.on_swap: list[Callable[[TemplateRegistry | None], None]] = []

    async def handle(self, record: UserRecord, message: InboundMessage, now: float) -> Turn:
        """The current engine's :meth:`~bot.engine.Engine.handle`."""
        return await self.engine.handle(record, message, now)

    def handle_pure(self, record: UserRecord, message: InboundMessage, now: float) -> Turn | None:
        """The current engine's :meth:`~bot.engine.Engine.handle_pure`."""
        return self.engine.handle_pure(record, message, now)

    def error_replies(
        self, record: UserRecord, message: InboundMessage | None, now: float, reason: str
    ) -> Sequence[Outgoing]:
        """The current engine's :meth:`~bot.engine.Engine.error_replies`."""
        return self.engine.error_replies(record, message, now, reason)

    def swap(self, engine: Engine, registry: TemplateRegistry | None) -> None:
        """Answer with ``engine`` from the next message on; tell the sender the registry."""
        self.engine, self.registry = engine, registry
        for listener in self.on_swap:
            listener(registry)


def require_watcher() -> None:
    """Raise a clear error when ``watchfiles`` is not installed."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise ConfigError(
            "bot run --reload needs the watchfiles package: pip install 'windowbot[reload]'"
        ) from None


def _is_source(_: Any, path: str) -> bool:
    return path.endswith(WATCHED) and "__pycache__" not in path


def reloader(
    ref: EngineRef,
    config: Config,
    load: Callable[[Config], tuple[Engine | None, TemplateRegistry | None]],
) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp cleanup context that reloads ``ref`` whenever the flows folder changes."""
    import watchfiles

    folder = resolve(config, config.flows.dir)

    async def watch(stop: asyncio.Event) -> None:
        async for changes in watchfiles.awatch(folder, watch_filter=_is_source, stop_event=stop):
            files = sorted({Path(path).name for _, path in changes})
            await reload_once(ref, config, load, files)

    async def ctx(_: Any) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(watch(stop))
        log.info("reload_watching", folder=str(folder))
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=5.0)

    return ctx


async def reload_once(
    ref: EngineRef,
    config: Config,
    load: Callable[[Config], tuple[Engine | None, TemplateRegistry | None]],
    files: Sequence[str] = (),
) -> bool:
    """Load the flows again and swap them in; ``False`` (findings logged) if they have errors."""
    try:
        engine, registry = await asyncio.to_thread(load, config)
    except FlowError as exc:
        findings = [f for f in exc.findings if isinstance(f, Finding)]
        log.error(
            "flows_reload_failed",
            changed=list(files),
            findings=format_findings(findings) if findings else str(exc),
            effect="the previous flows keep running; fix the files and save again",
        )
        return False
    except Exception as exc:  # a hook module that fails oddly must not stop the watcher
        log.error("flows_reload_failed", changed=list(files), error=f"{type(exc).__name__}: {exc}")
        return False
    if engine is None:
        log.error("flows_reload_failed", changed=list(files), error="the flows folder is gone")
        return False
    ref.swap(engine, registry)
    log.info("flows_reloaded", changed=list(files), flows=sorted(engine.flows))
    return True
