"""The console's pages, JSON API and live stream (see :mod:`bot.console`)."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from bot.app import DISPATCHER, METRICS, STORE, Components
from bot.chat import parse_duration
from bot.config import Config
from bot.console import views
from bot.console.access import OPERATOR, SESSION, Access
from bot.console.sandbox import Sandbox
from bot.engine import Engine
from bot.errors import BotError, VersionConflict
from bot.models import Outgoing, TemplateCall, UserRecord
from bot.store.base import Store
from bot.window import window_open

log = structlog.get_logger("windowbot.console")

STATIC = Path(__file__).parent / "static"
_USER = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CLAIM_TRIES = 100


class Console:
    """What the console's handlers share: the bot's parts, the sandbox, the door."""

    def __init__(
        self, config: Config, components: Components, sandbox: Sandbox | None, *, token: str
    ) -> None:
        self.config = config
        self.registry = components.registry
        self.policy = components.policy
        engine = getattr(components.handler, "__self__", None)
        self.engine = engine if isinstance(engine, Engine) else None
        self.sandbox = sandbox
        self.access = Access(token, sandbox=config.sandbox)
        self.changes = 0  # bumped by every console action, for the live stream
        self.closing = asyncio.Event()
        self.owner = f"console-{uuid.uuid4().hex[:12]}"

    def now(self, user: str) -> float:
        """The time for ``user``: their sandbox clock, else the wall clock."""
        return self.sandbox.clock.at(user) if self.sandbox is not None else time.time()

    def states(self) -> list[str]:
        """Every ``flow.state`` a user may be handed back at."""
        if self.engine is None:
            return []
        return [f"{f}.{s}" for f, flow in sorted(self.engine.flows.items()) for s in flow.states]

    def acted(self, request: web.Request, action: str, user: str, **detail: Any) -> None:
        """Log an operator action: who, what, on whom, when (the log line's timestamp)."""
        self.changes += 1
        log.info(
            "console_action",
            operator=request[OPERATOR],
            remote=request.remote,
            action=action,
            wa_id=user,
            **detail,
        )


CONSOLE = web.AppKey("console", Console)


def build(console: Console) -> web.Application:
    """The ``/console`` sub-application."""
    sub = web.Application(middlewares=[console.access.middleware(_login_page)])
    sub[CONSOLE] = console
    sub.on_shutdown.append(_closing)
    sub.on_response_prepare.append(_harden)
    r = sub.router
    r.add_get("/", index)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_static("/static", STATIC)
    r.add_get("/api/session", session_info)
    r.add_get("/api/users", users)
    r.add_get("/api/users/{user}", user_page)
    r.add_post("/api/users/{user}/pause", pause)
    r.add_post("/api/users/{user}/reply", reply)
    r.add_post("/api/users/{user}/handback", handback)
    r.add_post("/api/sandbox/{user}/message", sandbox_message)
    r.add_post("/api/sandbox/{user}/clock", sandbox_clock)
    r.add_post("/api/sandbox/{user}/reset", sandbox_reset)
    r.add_post("/api/sandbox/{user}/fire", sandbox_fire)
    r.add_get("/api/events", events)
    return sub


async def _harden(request: web.Request, response: web.StreamResponse) -> None:
    """No framing (clickjacking), no foreign scripts, no caching of what the console shows."""
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")


async def _closing(sub: web.Application) -> None:
    sub[CONSOLE].closing.set()  # live streams end, so the server can stop


# --- pages --------------------------------------------------------------------------------


def _login_page(error: str, status: int) -> web.Response:
    page = (STATIC / "login.html").read_text(encoding="utf-8")
    page = page.replace("{{error}}", html.escape(error))
    return web.Response(text=page, status=status, content_type="text/html")


async def index(request: web.Request) -> web.StreamResponse:
    """The console page."""
    sandbox = console_of(request).sandbox
    if sandbox is not None:
        sandbox.bind(_own_url(request))
    return web.FileResponse(STATIC / "index.html")


async def login_form(request: web.Request) -> web.Response:
    """The login page."""
    return _login_page("", 200)


async def login(request: web.Request) -> web.Response:
    """Check the token (constant time), start a session, go to the console."""
    access = console_of(request).access
    form = await request.post()
    token, operator = str(form.get("token", "")), str(form.get("operator", ""))
    if not access.token_ok(token, request.remote or ""):
        log.warning("console_login_refused", remote=request.remote)
        if access.throttled(request.remote or ""):
            return _login_page("Too many wrong tokens: wait a minute and try again.", 429)
        return _login_page("That is not the console token.", 401)
    key, session = access.login(operator)
    log.info("console_login", operator=session.operator, remote=request.remote)
    response = web.Response(status=303, headers={"Location": "/console/"})
    access.set_cookie(request, response, key)
    return response


async def logout(request: web.Request) -> web.Response:
    """End the session."""
    console_of(request).access.logout(request.cookies.get("windowbot_console", ""))
    return web.json_response({"ok": True})


# --- reading ------------------------------------------------------------------------------


async def session_info(request: web.Request) -> web.Response:
    """Who is logged in, the CSRF token for changes, and what the console can do."""
    console = console_of(request)
    if console.sandbox is not None:
        console.sandbox.bind(_own_url(request))
    return web.json_response(
        {
            "operator": request[OPERATOR],
            "csrf": request[SESSION].csrf if SESSION in request else "",
            "sandbox": console.sandbox is not None,
            "states": console.states(),
        }
    )


async def users(request: web.Request) -> web.Response:
    """The conversation list: most recent first."""
    console, store = console_of(request), request.config_dict[STORE]
    records = await store.list_users(50)
    lasts = await asyncio.gather(*(store.inbox_of(r.key, 1) for r in records))
    return web.json_response(
        [
            views.user_view(r, console.now(r.key), console.policy, last[-1] if last else None)
            for r, last in zip(records, lasts, strict=True)
        ]
    )


async def user_page(request: web.Request) -> web.Response:
    """One user: record, window, timeline, jobs, and the templates an operator may send."""
    console, store = console_of(request), request.config_dict[STORE]
    user = _user(request)
    record = await store.get_user(user) or UserRecord(key=user, wa_id=user)
    inbox, outbox = await asyncio.gather(store.inbox_of(user, 200), store.outbox_of(user, 200))
    sandbox = console.sandbox
    user_time: Callable[[float], float] = lambda wall: wall  # noqa: E731
    sent = {}
    if sandbox is not None:
        floor, hidden = sandbox.hidden.get(user, (0, frozenset()))
        inbox = [i for i in inbox if i.message.id not in hidden]
        outbox = [e for e in outbox if e.seq >= floor]
        user_time = lambda wall: sandbox.clock.user_time(user, wall)  # noqa: E731
        sent = dict(sandbox.sent())
    now = console.now(user)
    items = views.timeline(
        inbox, outbox, record, console.registry, console.policy, user_time=user_time, sent=sent
    )
    return web.json_response(
        {
            "user": views.user_view(record, now, console.policy, inbox[-1] if inbox else None),
            "known": record.version > 0,
            "timeline": items,
            "jobs": [i for i in items if i.get("job")],
            "templates": views.templates_offered(record, console.registry, console.policy),
            "clock_offset": sandbox.clock.offset(user) if sandbox is not None else 0.0,
        }
    )


# --- takeover -----------------------------------------------------------------------------


async def pause(request: web.Request) -> web.Response:
    """Stop the bot answering this user; their messages are still stored and shown."""
    console, user = console_of(request), _user(request)
    reason = str((await _body(request)).get("reason") or "").strip()[:200]
    reason = reason or f"taken over by {request[OPERATOR]}"
    now = console.now(user)
    record = await _change(
        request, user, lambda r: replace(r, paused=True, paused_reason=reason, paused_at=now)
    )
    console.acted(request, "pause", user, reason=reason)
    return web.json_response(views.user_view(record, now, console.policy))


async def handback(request: web.Request) -> web.Response:
    """Give the user back to the bot, in the state the operator chose."""
    console, user = console_of(request), _user(request)
    target = str((await _body(request)).get("state") or "")
    states = console.states()
    if target not in states:
        raise _bad(f"state must be one of {', '.join(states)}; got {target!r}")
    flow, _, state = target.partition(".")
    record = await _change(
        request,
        user,
        lambda r: replace(r, paused=False, paused_reason="", paused_at=0.0, flow=flow, state=state),
    )
    console.acted(request, "handback", user, state=target)
    return web.json_response(views.user_view(record, console.now(user), console.policy))


async def reply(request: web.Request) -> web.Response:
    """Send as the business: free text inside the window, else an approved template.

    The reply is queued in the user's outbox like any business-initiated message and goes
    out through the window decision and the Cloud API.
    """
    console, user, store = console_of(request), _user(request), request.config_dict[STORE]
    data = await _body(request)
    record = await store.get_user(user)
    if record is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no user {user}"}))
    now = console.now(user)
    operator = request[OPERATOR]
    offered = views.templates_offered(record, console.registry, console.policy)
    if "template" not in data:
        text = str(data.get("text") or "").strip()
        if not text or len(text) > 4096:
            raise _bad("text must be 1 to 4096 characters")
        if not window_open(record, now, margin_seconds=console.policy.margin_seconds):
            why = "the 24-hour window is closed: only an approved template can reach the user"
            return web.json_response({"error": why, "templates": offered}, status=409)
        outgoing = Outgoing(
            message={"type": "text", "text": {"body": text, "preview_url": False}},
            note=f"operator {operator}",
        )
    else:
        name = str(data["template"])
        chosen = next((t for t in offered if t["name"] == name), None)
        if chosen is None:
            names = ", ".join(t["name"] for t in offered) or "none"
            raise _bad(f"template {name!r} is not offered for this user (offered: {names})")
        params = data.get("parameters") or (
            [] if chosen["parameter_format"] == "positional" else {}
        )
        call = TemplateCall(
            name,
            {str(k): str(v) for k, v in params.items()}
            if isinstance(params, dict)
            else tuple(str(p) for p in params),
            language=chosen["language"],
        )
        assert console.registry is not None
        problems = [
            p
            for p in console.registry.check_call(name, call.language, call.parameters)
            if not p.startswith("warning")
        ]
        if problems:
            raise _bad(f"template {name}: " + "; ".join(problems))
        outgoing = Outgoing(message=None, fallback=call, note=f"operator {operator}")
    [entry] = await store.enqueue(user, [outgoing], now)
    request.config_dict[DISPATCHER].notify(user)
    console.acted(request, "reply", user, entry=entry.id, template=data.get("template"))
    return web.json_response({"queued": entry.id})


# --- sandbox ------------------------------------------------------------------------------


async def sandbox_message(request: web.Request) -> web.Response:
    """The user sends something: text, a button, a list row, a template's quick reply."""
    sandbox, user = _sandbox(request), _user(request)
    data = await _body(request)
    kind = str(data.get("type") or "text")
    name = str(data.get("name") or "Sandbox User")[:60]
    ago = _hours(data.get("ago_hours", 0), "ago_hours")
    if kind == "text":
        text = str(data.get("text") or "")
        if not text.strip():
            raise _bad("text is empty")
        wamid = await _deliver(sandbox, user, name, "text", {"body": text}, ago)
    elif kind in ("button_reply", "list_reply"):
        choice = {"id": str(data.get("id") or ""), "title": str(data.get("title") or "")}
        if not choice["id"]:
            raise _bad("id is required for a button or list reply")
        wamid = await _deliver(
            sandbox, user, name, "interactive", {"type": kind, kind: choice}, ago
        )
    elif kind == "button":
        payload = str(data.get("payload") or "")
        content = {"payload": payload, "text": str(data.get("title") or payload)}
        wamid = await _deliver(sandbox, user, name, "button", content, ago)
    else:
        raise _bad(f"type must be text, button_reply, list_reply or button; got {kind!r}")
    console_of(request).changes += 1
    return web.json_response({"wamid": wamid})


async def sandbox_clock(request: web.Request) -> web.Response:
    """Move this user's clock forward; reminders that fall due go out."""
    console, sandbox, user = console_of(request), _sandbox(request), _user(request)
    seconds = _hours((await _body(request)).get("hours"), "hours")
    if seconds <= 0:
        raise _bad("hours must be more than 0 (the clock only moves forward)")
    offset = sandbox.clock.advance(user, seconds)
    request.config_dict[DISPATCHER].notify(user)
    console.acted(request, "clock", user, hours=seconds / 3600, offset_hours=offset / 3600)
    return web.json_response({"offset_seconds": offset, "now": console.now(user)})


async def sandbox_fire(request: web.Request) -> web.Response:
    """Send the user's reminders that are due on their clock."""
    console, user = console_of(request), _user(request)
    _sandbox(request)
    request.config_dict[DISPATCHER].notify(user)
    console.acted(request, "fire", user)
    return web.json_response({"ok": True})


async def sandbox_reset(request: web.Request) -> web.Response:
    """Start the user over: a blank record, pending replies dropped, the wall clock back."""
    console, sandbox, user = console_of(request), _sandbox(request), _user(request)
    store: Store = request.config_dict[STORE]
    inbox = await store.inbox_of(user, 1000)
    outbox = await store.outbox_of(user, 1)
    await _change(
        request,
        user,
        lambda r: UserRecord(key=r.key, wa_id=r.wa_id, user_id=r.user_id, version=r.version),
        drop_pending=True,
        allow_new=True,
    )
    floor = outbox[-1].seq + 1 if outbox else 0
    sandbox.hidden[user] = (floor, frozenset(i.message.id for i in inbox))
    sandbox.clock.reset(user)
    console.acted(request, "reset", user)
    return web.json_response({"ok": True})


# --- the live stream ----------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``change`` whenever the bot or an operator did something.

    What this process handles shows within half a second; a ``tick`` every 10 seconds keeps
    windows' time left current and picks up what other processes did.
    """
    console, metrics = console_of(request), request.config_dict[METRICS]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    last: tuple[int, ...] = ()
    beats = 0
    with contextlib.suppress(ConnectionError):
        while not console.closing.is_set():
            mark = (
                console.changes,
                metrics.received,
                metrics.statuses,
                metrics.processed,
                metrics.failed,
                metrics.replies_sent,
                metrics.replies_not_sent,
                metrics.send_failures,
            )
            if mark != last or beats % 20 == 0:
                event = "change" if mark != last else "tick"
                await response.write(f"event: {event}\ndata: {json.dumps(mark)}\n\n".encode())
                last = mark
            beats += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(console.closing.wait(), 0.5)
    return response


# --- helpers ------------------------------------------------------------------------------


def console_of(request: web.Request) -> Console:
    """The console the request is for."""
    return request.config_dict[CONSOLE]


def _user(request: web.Request) -> str:
    user = request.match_info["user"]
    if not _USER.match(user):
        raise _bad("a user id is 1 to 64 letters, digits, '.', '_', ':' or '-'")
    return user


def _sandbox(request: web.Request) -> Sandbox:
    sandbox = console_of(request).sandbox
    if sandbox is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "the sandbox exists in sandbox mode only"}),
            content_type="application/json",
        )
    sandbox.bind(_own_url(request))
    return sandbox


def _own_url(request: web.Request) -> str:
    """This server on loopback (the port the request came in on)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if sockname else request.url.port
    return f"http://127.0.0.1:{port}"


def _bad(error: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": error}), content_type="application/json")


def _hours(value: Any, name: str) -> float:
    """Seconds in a number of hours, or in a duration like ``90m`` or ``2d``."""
    if isinstance(value, str) and value and not value.replace(".", "", 1).isdigit():
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise _bad(f"{name}: {exc}") from None
    try:
        hours = float(value or 0)
    except (TypeError, ValueError):
        raise _bad(f"{name} must be a number of hours, got {value!r}") from None
    if not 0 <= hours <= 24 * 365:
        raise _bad(f"{name} must be between 0 and 8760 hours")
    return hours * 3600


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json() if request.can_read_body else {}
    except ValueError:
        raise _bad("the body must be JSON") from None
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object")
    return data


async def _deliver(
    sandbox: Sandbox, user: str, name: str, kind: str, content: Any, ago: float
) -> str:
    try:
        return await sandbox.deliver(user, name, kind, content, ago=ago)
    except BotError as exc:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": str(exc)}), content_type="application/json"
        ) from None


async def _change(
    request: web.Request,
    user: str,
    change: Callable[[UserRecord], UserRecord],
    *,
    drop_pending: bool = False,
    allow_new: bool = False,
) -> UserRecord:
    """Write the user's record under a lease of the console's own, as a worker would.

    A worker of the bot holding the user is waited for (briefly); ``drop_pending`` marks the
    user's pending replies skipped in the same hold.
    """
    console, store = console_of(request), request.config_dict[STORE]
    for _ in range(_CLAIM_TRIES):
        now = console.now(user)
        work = await store.claim(user, console.owner, now + 30, now, limit=64)
        if work is None:
            await asyncio.sleep(0.05)  # the bot is handling the user right now
            continue
        try:
            if not work.record.version and not allow_new:
                raise web.HTTPNotFound(
                    text=json.dumps({"error": f"no user {user}"}), content_type="application/json"
                )
            if drop_pending:
                for entry in work.outbox:
                    skipped = replace(entry, status="skipped", reason="reset in the console")
                    await store.save_outbox(work.lease, skipped)
            committed = await store.commit_turn(work.lease, None, change(work.record), [], now)
            return committed.record
        except VersionConflict:
            continue
        finally:
            await store.release([work.lease])
            # a message that came in while the console held the user is handled now
            request.config_dict[DISPATCHER].notify(user)
    raise web.HTTPConflict(
        text=json.dumps({"error": f"user {user} stayed busy; try again"}),
        content_type="application/json",
    )
