"""The one place a sender and a dispatcher are built from the config.

``bot run`` (through :mod:`bot.app`), ``bot send`` / :class:`~bot.outbound.Outbound` and
``bot chat`` all take the same way: each entry point hands over what it owns (store,
transport, flows, registry) and gets the pipeline the config describes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from bot.config import Config
from bot.dispatcher import HANDLING, Dispatcher, ErrorReplies, Handler, PureHandler, TurnResult
from bot.jobs import JobDispatcher, job_policy
from bot.live_templates import LiveTemplates
from bot.metrics import Metrics
from bot.models import InboundMessage, OutboxEntry, UserRecord
from bot.ratelimit import SharedRateLimiter
from bot.retry import RetryPolicy
from bot.scheduling import schedule_turn
from bot.sender import Sender, Transport
from bot.store.base import JobStore, Store
from bot.templates import TemplateRegistry
from bot.typing_indicator import with_typing
from bot.window import Decision, WindowPolicy


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A dispatcher (not started), the sender it drains users through, if any, and the job
    dispatcher (not started) that hands due reminders to it, if the store keeps jobs."""

    sender: Sender | None
    dispatcher: Dispatcher
    jobs: JobDispatcher | None = None


def build_pipeline(
    config: Config,
    store: Store,
    transport: Transport | None,
    *,
    handler: Handler | None = None,
    pure_handler: PureHandler | None = None,
    error_replies: ErrorReplies | None = None,
    registry: TemplateRegistry | None = None,
    policy: WindowPolicy | None = None,
    metrics: Metrics | None = None,
    on_decision: Callable[[OutboxEntry, Decision], None] | None = None,
    clock: Callable[[], float] = time.time,
    typing: Callable[[UserRecord], bool] | None = None,
) -> Pipeline:
    """The sender and dispatcher for ``config`` on ``store``.

    Args:
        config: workers, retries and send grace come from it.
        store: an opened (or about to be opened) store.
        transport: the Cloud API client or a stand-in; ``None`` leaves replies queued.
        handler: the flow engine's ``handle`` (``None``: messages are recorded only).
        pure_handler: the engine's ``handle_pure``: turns that call no hook then run on
            the webhook's path (see :meth:`Dispatcher.receive`).
        error_replies: the engine's ``error_replies``.
        registry: the templates fallbacks may use.
        policy: the window decision's settings (default: ``WindowPolicy()``).
        metrics: shared by sender and dispatcher (default: a fresh one).
        on_decision: told how each reply goes out (``bot send``, ``bot chat``).
        clock: the dispatcher's clock (``bot chat`` moves it).
        typing: which users' flows asked for ``typing_indicator`` (read receipt and
            "typing…" through ``transport``, best effort).
    """
    metrics = metrics or Metrics()
    jobs_store = store if isinstance(store, JobStore) else None
    sender = None
    if transport is not None:
        limiter = None  # the number's send rate, shared by every process on the store
        if jobs_store is not None and config.whatsapp.send_rate:
            limiter = SharedRateLimiter(jobs_store, config.whatsapp.send_rate)
        sender = Sender(
            store,
            transport,
            registry=registry,
            policy=policy or WindowPolicy(),
            metrics=metrics,
            on_decision=on_decision,
            retry=RetryPolicy(max_attempts=config.whatsapp.max_retries + 1),
            grace=config.workers.send_grace_seconds,
            live=LiveTemplates(store, registry, metrics),
            limiter=limiter,
        )
        if handler is not None and typing is not None:
            handler = with_typing(handler, transport, typing)
            if pure_handler is not None:  # the typing indicator goes with the usual path
                pure_handler = _unless(typing, pure_handler)
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
        reminders=None if jobs_store is None else partial(schedule_turn, jobs_store),
        pure_handler=pure_handler if handler is not None else None,
    )
    jobs = None
    if jobs_store is not None and sender is not None and config.jobs.enabled:
        jobs = JobDispatcher(
            jobs_store,
            wake=dispatcher.notify,
            registry=registry,
            window=policy or WindowPolicy(),
            policy=job_policy(config),
            metrics=metrics,
            clock=clock,
        )
    return Pipeline(sender, dispatcher, jobs)


def _unless(skip: Callable[[UserRecord], bool], pure: PureHandler) -> PureHandler:
    """``pure``, except for the users ``skip`` names (``None`` for them)."""

    def handle(record: UserRecord, message: InboundMessage, now: float) -> TurnResult | None:
        return None if skip(record) else pure(record, message, now)

    return handle
