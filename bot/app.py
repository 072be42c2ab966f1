"""The aiohttp application: webhook routes, health and metrics, resources by cleanup context.

One message's way in: verify the signature over the raw bytes, parse (pure), insert into the
inbox (unique wamid), and only then answer 200; the dispatcher's workers take it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot._pipeline import build_pipeline
from bot.config import Config
from bot.dispatcher import Dispatcher, ErrorReplies, Handler, PureHandler
from bot.errors import ConfigError, PayloadError, SignatureError, StoreError
from bot.jobs import JobDispatcher
from bot.live_templates import record_ledgers
from bot.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bot.metrics import Metrics, render_pricing
from bot.models import UserRecord
from bot.sender import Sender, Transport
from bot.store.base import Added, Store
from bot.templates import TemplateRegistry
from bot.webhook import SIGNATURE_HEADER, parse_body, verify_challenge, verify_signature
from bot.window import WindowPolicy

log = structlog.get_logger("windowbot.app")


@dataclass(slots=True)
class Components:
    """What the app is made of; ``bot.runtime`` builds it from the config, tests their own.

    Attributes:
        store: where everything is kept.
        handler: the flow engine's ``handle`` (``None``: messages are recorded, not answered).
        pure_handler: the flow engine's ``handle_pure`` (``None``: every turn runs in a
            worker; see :meth:`~bot.dispatcher.Dispatcher.receive`).
        error_replies: what a user gets when their message could not be handled.
        transport: opens the Cloud API client (or a stand-in) for the app's lifetime;
            ``None`` leaves replies queued in the outbox.
        registry: the templates fallbacks may use.
        policy: the window decision's settings.
        typing: whether a user's flow asked for ``typing_indicator`` (the engine says).
        clock: the dispatcher's time (the sandbox console moves it per user).
        sandbox_cloud: in sandbox mode, send replies to a fake Cloud API inside the process
            (the console shows them as WhatsApp would) instead of ``transport``.
    """

    store: Store
    handler: Handler | None = None
    pure_handler: PureHandler | None = None
    error_replies: ErrorReplies | None = None
    transport: Callable[[], AbstractAsyncContextManager[Transport]] | None = None
    registry: TemplateRegistry | None = None
    policy: WindowPolicy = field(default_factory=WindowPolicy)
    #: Which users' messages get a read receipt and typing indicator (``None``: nobody).
    typing: Callable[[UserRecord], bool] | None = None
    clock: Callable[[], float] = time.time
    sandbox_cloud: bool = False


CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
METRICS = web.AppKey("metrics", Metrics)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
SENDER = web.AppKey("sender", Sender)
JOBS = web.AppKey("jobs", JobDispatcher)


def create_app(config: Config, components: Components) -> web.Application:
    """The webhook server for ``config``, on the given store, flows and sender."""
    if not config.whatsapp.app_secret and not config.sandbox:
        raise ConfigError(
            "WHATSAPP_APP_SECRET is not set: webhooks cannot be verified. Set it (Meta app "
            "dashboard → App settings → Basic → App secret); only sandbox mode (no "
            "WHATSAPP_TOKEN) accepts unsigned webhooks"
        )
    if not config.whatsapp.verify_token and not config.sandbox:
        raise ConfigError(
            "WHATSAPP_VERIFY_TOKEN is not set: Meta's webhook handshake cannot succeed. Set "
            "it to a string of your choice and give Meta the same one (WhatsApp → "
            "Configuration → Webhook → Verify token)"
        )
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[CONFIG] = config
    app[STORE] = components.store
    app[METRICS] = Metrics()
    app[HEALTH] = WriteHealth()
    app.cleanup_ctx.append(_store_ctx)
    from bot.console import mount_console  # it reads this module's app keys

    components = mount_console(
        app, config, components, token=os.environ.get("BOT_CONSOLE_TOKEN", "")
    )
    app.cleanup_ctx.append(_dispatcher_ctx(components))
    path = config.server.path
    app.router.add_get(path, verify)
    app.router.add_post(path, receive)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    try:
        await store.open()
    except BaseException:
        await store.close()  # a half-opened store (a client, a thread) is released
        raise
    config = app[CONFIG]
    log.info(
        "store_opened",
        store=store.description,
        sandbox=config.sandbox,
        signature_check=bool(config.whatsapp.app_secret),
    )
    try:
        yield
    finally:
        await store.close()


def _dispatcher_ctx(
    components: Components,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        async with contextlib.AsyncExitStack() as stack:
            transport: Transport | None = None
            if components.transport is not None:
                transport = await stack.enter_async_context(components.transport())
            pipeline = build_pipeline(
                config,
                app[STORE],
                transport,
                handler=components.handler,
                pure_handler=components.pure_handler,
                error_replies=components.error_replies,
                registry=components.registry,
                policy=components.policy,
                metrics=app[METRICS],
                clock=components.clock,
                typing=components.typing,
            )
            if pipeline.sender is not None:
                app[SENDER] = pipeline.sender
            dispatcher = app[DISPATCHER] = pipeline.dispatcher
            await dispatcher.start()
            stack.push_async_callback(dispatcher.stop)
            if pipeline.jobs is not None:  # due reminders, handed to the users' workers
                jobs = app[JOBS] = pipeline.jobs
                await jobs.start()
                stack.push_async_callback(jobs.stop)
            yield

    return ctx


async def verify(request: web.Request) -> web.Response:
    """Meta's subscription handshake: echo ``hub.challenge`` if the verify token matches."""
    config = request.app[CONFIG]
    challenge = verify_challenge(request.query, config.whatsapp.verify_token)
    if challenge is None:
        if not config.whatsapp.verify_token:
            reason = "WHATSAPP_VERIFY_TOKEN is not set: no handshake can succeed; set it"
        elif request.query.get("hub.mode") != "subscribe":
            reason = "hub.mode is not 'subscribe'"
        else:
            reason = "hub.verify_token does not match WHATSAPP_VERIFY_TOKEN (or no challenge)"
        log.warning(
            "webhook_verification_refused", mode=request.query.get("hub.mode", ""), reason=reason
        )
        return web.Response(status=403, text="verification failed")
    log.info("webhook_verified")
    return web.Response(text=challenge)


def _why(exc: BaseException) -> str:
    """What aiohttp's chain of read errors says, innermost last, in ASCII (it is answered)."""
    reasons: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(reasons) < 4:
        text = (cause.message if isinstance(cause, HttpProcessingError) else str(cause)).strip()
        if text and not text.startswith("400, message:") and text not in reasons:
            reasons.append(text)
        cause = cause.__cause__ or cause.__context__
    return ascii("; ".join(reasons))[1:-1][:300] or type(exc).__name__


async def receive(request: web.Request) -> web.Response:
    """A webhook delivery: stored durably, then acknowledged."""
    app = request.app
    config, store, metrics = app[CONFIG], app[STORE], app[METRICS]
    started = time.perf_counter()
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        metrics.rejected_requests += 1
        log.warning("webhook_too_large", limit=config.server.max_body_bytes)
        return web.Response(
            status=413, text=f"body larger than {config.server.max_body_bytes} bytes"
        )
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # aiohttp decodes Content-Encoding and chunking while reading: a body that is not what
        # its headers say (not gzip, a broken chunk) is the sender's fault, not a 500.
        metrics.rejected_requests += 1
        encoding = ascii(request.headers.get("Content-Encoding", "identity"))
        reason = f"body could not be read as sent (Content-Encoding {encoding}): {_why(exc)}"
        log.warning("webhook_unreadable", reason=reason)
        response = web.Response(status=400, text=reason)
        response.force_close()  # the parser gave up on this connection's stream
        return response
    try:
        if config.whatsapp.app_secret:
            verify_signature(
                body, request.headers.get(SIGNATURE_HEADER), config.whatsapp.app_secret
            )
        delivery = parse_body(body)
    except SignatureError as exc:
        metrics.rejected_requests += 1
        log.warning("webhook_signature_rejected", reason=str(exc))
        return web.Response(status=401, text=str(exc))
    except PayloadError as exc:
        metrics.rejected_requests += 1
        log.warning("webhook_malformed", reason=str(exc))
        return web.Response(status=400, text=str(exc))
    now = time.time()
    try:
        async with asyncio.timeout(config.server.store_timeout_seconds):
            # Re-keys first: the delivery's messages may already use the new id.
            changes = delivery.identity_changes
            rekeyed = await store.add_identity_changes(changes, now) if changes else []
            fresh = (
                await app[DISPATCHER].receive(delivery.messages, now, started)
                if delivery.messages
                else Added()
            )
            seen = (
                await store.add_statuses(delivery.statuses, now) if delivery.statuses else Added()
            )
            await record_ledgers(store, delivery, now)
    except (StoreError, TimeoutError) as exc:
        error = str(exc) or f"no answer within {config.server.store_timeout_seconds:g}s"
        app[HEALTH].failed(error)
        log.error("webhook_store_unavailable", error=error)
        return web.Response(status=503, text="store unavailable; retry later")
    app[HEALTH].succeeded()
    dispatcher = app[DISPATCHER]
    for change, user in zip(delivery.identity_changes, rekeyed, strict=True):
        log.info("user_id_changed", wa_id=user, previous=change.previous, user_id=change.user_id)
    for message, new, user in zip(delivery.messages, fresh, fresh.users, strict=True):
        if new:
            metrics.received += 1
        else:
            metrics.duplicates += 1
            log.info("message_duplicate", wa_id=user, message_id=message.id)
    for status, new, user in zip(delivery.statuses, seen, seen.users, strict=True):
        if new:
            metrics.statuses += 1
            dispatcher.status_arrived(user, failed=status.status == "failed")
    return web.Response(text="OK")


async def healthz(request: web.Request) -> web.Response:
    """200 when the store takes a write within the store timeout, 503 otherwise.

    The write path is what webhooks need: a store that answers reads but cannot write (a
    full disk, a lock held elsewhere) is unhealthy. The probe's result is reused for a
    second, so a busy health checker does not turn into load.
    """
    app = request.app
    error = await app[HEALTH].probe(app[STORE], app[CONFIG].server.store_timeout_seconds)
    if error:
        return web.json_response({"status": "unavailable", "error": error}, status=503)
    return web.json_response({"status": "ok", "store": app[STORE].description})


class WriteHealth:
    """Whether the store's write path works, from webhooks and from a bounded probe."""

    def __init__(self) -> None:
        self.error = ""
        self._probed_at = -1.0

    def failed(self, error: str) -> None:
        """A write failed (or did not finish in time)."""
        self.error = error or "store write failed"
        self._probed_at = -1.0

    def succeeded(self) -> None:
        """A write went through."""
        self.error = ""

    async def probe(self, store: Store, bound: float) -> str:
        """The current write error ('' when healthy), probing at most once a second."""
        now = time.monotonic()
        if self._probed_at >= 0 and now - self._probed_at < 1.0:
            return self.error
        try:
            async with asyncio.timeout(bound):
                await store.ping(write=True)
        except (StoreError, TimeoutError) as exc:
            self.failed(str(exc) or f"store write did not finish within {bound:g}s")
        else:
            self.succeeded()
        self._probed_at = time.monotonic()
        return self.error


HEALTH = web.AppKey("health", WriteHealth)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (the pricing ledger's counts are the whole store's)."""
    body = request.app[METRICS].render()
    with contextlib.suppress(StoreError, TimeoutError):
        async with asyncio.timeout(request.app[CONFIG].server.store_timeout_seconds):
            body += render_pricing(await request.app[STORE].pricing_counts()).encode()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
