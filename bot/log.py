"""structlog configuration: JSON lines for machines, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from bot import _json
from bot.config import SECRETS

_REDACTED = "***"


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret reach a log line, whoever logged it.

    Secret-named fields are replaced; any string field that holds a URL with credentials
    (``scheme://user:password@host``, or a secret-looking option such as ``?password=``), in
    a message or an error, has them masked. Only strings with ``://`` and an ``@`` or ``=``
    are looked at, so ordinary lines cost a scan or two.
    """
    for key in SECRETS & event.keys():
        event[key] = _REDACTED
    if "authorization" in event:
        event["authorization"] = _REDACTED
    for key, value in event.items():
        if isinstance(value, str) and "://" in value and ("@" in value or "=" in value):
            from bot.store._mongo_errors import mask_url  # not at import: pymongo is heavy

            event[key] = mask_url(value)
    return event


def _stamp(clock: Callable[[], float]) -> Callable[..., MutableMapping[str, Any]]:
    def stamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event["timestamp"] = datetime.fromtimestamp(clock(), UTC).isoformat()
        return event

    return stamp


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of writing (tests and tools swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    cache: bool = False,
    clock: Callable[[], float] | None = None,
) -> None:
    """Set up structlog once, at start-up.

    Args:
        level: debug, info, warning or error.
        fmt: ``json``, ``console`` or ``auto`` (console on a terminal, JSON otherwise).
        stream: where lines go (default stderr).
        cache: bind each logger once, on first use (``bot run``: much cheaper per line);
            leave it off where logging is reconfigured later (tests, ``bot chat``).
        clock: stamp lines with this clock instead of the wall clock (``bot chat``'s
            clock, which ``/wait`` moves).
    """
    out = stream or _Stderr()
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if console
        else structlog.processors.JSONRenderer(serializer=_json.render)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True)
            if clock is None
            else _stamp(clock),
            _redact,
            structlog.processors.format_exc_info if not console else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),  # type: ignore[arg-type]
        cache_logger_on_first_use=cache,
    )


def logger_name(module: str) -> str:
    """The logger name of a ``bot`` module: ``windowbot.<module>``, a subpackage's modules
    sharing its name (``bot.engine._on_error`` logs as ``windowbot.engine``)."""
    parts = module.split(".")
    return "windowbot" if len(parts) < 2 else f"windowbot.{parts[1].lstrip('_')}"


def get_logger(module: str, **context: Any) -> Any:
    """The structlog logger of ``module`` (pass ``__name__``), with ``context`` bound."""
    return structlog.get_logger(logger_name(module), **context)
