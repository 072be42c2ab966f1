"""Human takeover: pause the bot for a user, reply as the business, hand the user back.

The pause is data in the user's record (``UserRecord.paused``), written under a lease of the
console's own like any worker's write; the engine then records the user's messages and
answers nothing. Replies are business-initiated sends: queued in the outbox with
``Store.enqueue``, they take the window decision and the Cloud API like any other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from bot.app import DISPATCHER, STORE
from bot.console import views
from bot.console.access import OPERATOR
from bot.console.core import bad_request, console_of, json_body, user_of
from bot.errors import VersionConflict
from bot.models import Outgoing, TemplateCall, UserRecord
from bot.window import window_open

_CLAIM_TRIES = 100


async def pause(request: web.Request) -> web.Response:
    """Stop the bot answering this user; their messages are still stored and shown."""
    console, user = console_of(request), user_of(request)
    reason = str((await json_body(request)).get("reason") or "").strip()[:200]
    reason = reason or f"taken over by {request[OPERATOR]}"
    now = console.now(user)
    record = await change_user(
        request, user, lambda r: replace(r, paused=True, paused_reason=reason, paused_at=now)
    )
    console.acted(request, "pause", user, reason=reason)
    return web.json_response(views.user_view(record, now, console.policy))


async def handback(request: web.Request) -> web.Response:
    """Give the user back to the bot, in the state the operator chose."""
    console, user = console_of(request), user_of(request)
    target = str((await json_body(request)).get("state") or "")
    states = console.states()
    if target not in states:
        raise bad_request(f"state must be one of {', '.join(states)}; got {target!r}")
    flow, _, state = target.partition(".")
    record = await change_user(
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
    console, user, store = console_of(request), user_of(request), request.config_dict[STORE]
    data = await json_body(request)
    record = await store.get_user(user)
    if record is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no user {user}"}))
    now = console.now(user)
    operator = request[OPERATOR]
    offered = views.templates_offered(record, console.registry, console.policy)
    if "template" not in data:
        text = str(data.get("text") or "").strip()
        if not text or len(text) > 4096:
            raise bad_request("text must be 1 to 4096 characters")
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
            raise bad_request(f"template {name!r} is not offered for this user (offered: {names})")
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
            raise bad_request(f"template {name}: " + "; ".join(problems))
        outgoing = Outgoing(message=None, fallback=call, note=f"operator {operator}")
    [entry] = await store.enqueue(user, [outgoing], now)
    request.config_dict[DISPATCHER].notify(user)
    console.acted(request, "reply", user, entry=entry.id, template=data.get("template"))
    return web.json_response({"queued": entry.id})


async def change_user(
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
