"""The console's routes: pages, login, the read side of the API and the live stream.

The takeover's changes are in :mod:`bot.console.takeover`, the sandbox phone's in
:mod:`bot.console.phone`; the access rules in :mod:`bot.console.access`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from bot.app import METRICS, STORE
from bot.console import views
from bot.console.access import OPERATOR, SESSION
from bot.console.core import CONSOLE, Console, console_of, log, own_url, user_of
from bot.console.phone import sandbox_clock, sandbox_fire, sandbox_message, sandbox_reset
from bot.console.takeover import handback, pause, reply
from bot.models import UserRecord

STATIC = Path(__file__).parent / "static"


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
        sandbox.bind(own_url(request))
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
        console.sandbox.bind(own_url(request))
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
    user = user_of(request)
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
