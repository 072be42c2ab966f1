"""The sandbox phone's API: the user's messages, their clock, reset, due reminders."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bot.app import DISPATCHER, STORE
from bot.console.core import bad_request, console_of, hours, json_body, sandbox_of, user_of
from bot.console.sandbox import Sandbox
from bot.console.takeover import change_user
from bot.errors import BotError
from bot.models import UserRecord
from bot.store.base import Store


async def sandbox_message(request: web.Request) -> web.Response:
    """The user sends something: text, a button, a list row, a template's quick reply."""
    sandbox, user = sandbox_of(request), user_of(request)
    data = await json_body(request)
    kind = str(data.get("type") or "text")
    name = str(data.get("name") or "Sandbox User")[:60]
    ago = hours(data.get("ago_hours", 0), "ago_hours")
    if kind == "text":
        text = str(data.get("text") or "")
        if not text.strip():
            raise bad_request("text is empty")
        wamid = await _deliver(sandbox, user, name, "text", {"body": text}, ago)
    elif kind in ("button_reply", "list_reply"):
        choice = {"id": str(data.get("id") or ""), "title": str(data.get("title") or "")}
        if not choice["id"]:
            raise bad_request("id is required for a button or list reply")
        wamid = await _deliver(
            sandbox, user, name, "interactive", {"type": kind, kind: choice}, ago
        )
    elif kind == "button":
        payload = str(data.get("payload") or "")
        content = {"payload": payload, "text": str(data.get("title") or payload)}
        wamid = await _deliver(sandbox, user, name, "button", content, ago)
    else:
        raise bad_request(f"type must be text, button_reply, list_reply or button; got {kind!r}")
    console_of(request).changes += 1
    return web.json_response({"wamid": wamid})


async def sandbox_clock(request: web.Request) -> web.Response:
    """Move this user's clock forward; reminders that fall due go out."""
    console, sandbox, user = console_of(request), sandbox_of(request), user_of(request)
    seconds = hours((await json_body(request)).get("hours"), "hours")
    if seconds <= 0:
        raise bad_request("hours must be more than 0 (the clock only moves forward)")
    offset = sandbox.clock.advance(user, seconds)
    request.config_dict[DISPATCHER].notify(user)
    console.acted(request, "clock", user, hours=seconds / 3600, offset_hours=offset / 3600)
    return web.json_response({"offset_seconds": offset, "now": console.now(user)})


async def sandbox_fire(request: web.Request) -> web.Response:
    """Send the user's reminders that are due on their clock."""
    console, user = console_of(request), user_of(request)
    sandbox_of(request)
    request.config_dict[DISPATCHER].notify(user)
    console.acted(request, "fire", user)
    return web.json_response({"ok": True})


async def sandbox_reset(request: web.Request) -> web.Response:
    """Start the user over: a blank record, pending replies dropped, the wall clock back."""
    console, sandbox, user = console_of(request), sandbox_of(request), user_of(request)
    store: Store = request.config_dict[STORE]
    inbox = await store.inbox_of(user, 1000)
    outbox = await store.outbox_of(user, 1)
    await change_user(
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


async def _deliver(
    sandbox: Sandbox, user: str, name: str, kind: str, content: Any, ago: float
) -> str:
    try:
        return await sandbox.deliver(user, name, kind, content, ago=ago)
    except BotError as exc:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": str(exc)}), content_type="application/json"
        ) from None
