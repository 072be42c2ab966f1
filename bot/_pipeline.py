"""The one place a sender and a dispatcher are built from the config.

``bot run`` (through :mod:`bot.app`), ``bot send`` / :class:`~bot.outbound.Outbound` and
``bot chat`` all take the same way: each entry point hands over what it owns (store,
transport, flows, registry) and gets the pipeline the config describes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from bot.config import Config
from bot.dispatcher import HANDLING, Dispatcher, ErrorReplies, Handler
from bot.metrics import Metrics
from bot.models import OutboxEntry
from bot.retry import RetryPolicy
from bot.sender import Sender, Transport
from bot.store.base import Store
from bot.templates import TemplateRegistry
from bot.window import Decision, WindowPolicy


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A dispatcher (not started) and the sender it drains users through, if any."""

    sender: Sender | None
    dispatcher: Dispatcher


def build_pipeline(
    config: Config,
    store: Store,
    transport: Transport | None,
    *,
    handler: Handler | None = None,
    error_replies: ErrorReplies | None = None,
    registry: TemplateRegistry | None = None,
    policy: WindowPolicy | None = None,
    metrics: Metrics | None = None,
    on_decision: Callable[[OutboxEntry, Decision], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> Pipeline:
    """The sender and dispatcher for ``config`` on ``store``.

    Args:
        config: workers, retries and send grace come from it.
        store: an opened (or about to be opened) store.
        transport: the Cloud API client or a stand-in; ``None`` leaves replies queued.
        handler: the flow engine's ``handle`` (``None``: messages are recorded only).
        error_replies: the engine's ``error_replies``.
        registry: the templates fallbacks may use.
        policy: the window decision's settings (default: ``WindowPolicy()``).
        metrics: shared by sender and dispatcher (default: a fresh one).
        on_decision: told how each reply goes out (``bot send``, ``bot chat``).
        clock: the dispatcher's clock (``bot chat`` moves it).
    """
    metrics = metrics or Metrics()
    sender = None
    if transport is not None:
        sender = Sender(
            store,
            transport,
            registry=registry,
            policy=policy or WindowPolicy(),
            metrics=metrics,
            on_decision=on_decision,
            retry=RetryPolicy(max_attempts=config.whatsapp.max_retries + 1),
            grace=config.workers.send_grace_seconds,
        )
    workers = config.workers
    dispatcher = Dispatcher(
        store,
        handler=handler,
        drainer=sender,
        error_replies=error_replies,
        metrics=metrics,
        concurrency=workers.concurrency,
        lease_seconds=workers.lease_seconds,
        sweep_seconds=workers.sweep_seconds,
        retention=config.store.retention_days * 86400,
        handling=replace(HANDLING, max_attempts=workers.max_handling_attempts),
        clock=clock,
    )
    return Pipeline(sender, dispatcher)
