"""What the console's handlers share: the bot's parts, the door, and reading requests."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import structlog
from aiohttp import web

from bot.app import Components
from bot.chat import parse_duration
from bot.config import Config
from bot.console.access import OPERATOR, Access
from bot.console.sandbox import Sandbox
from bot.engine import Engine

log = structlog.get_logger("windowbot.console")

_USER = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


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


def console_of(request: web.Request) -> Console:
    """The console the request is for."""
    return request.config_dict[CONSOLE]


def user_of(request: web.Request) -> str:
    """The user id in the path, checked (400 otherwise)."""
    user = request.match_info["user"]
    if not _USER.match(user):
        raise bad_request("a user id is 1 to 64 letters, digits, '.', '_', ':' or '-'")
    return user


def sandbox_of(request: web.Request) -> Sandbox:
    """The sandbox, told where the bot listens (404 outside sandbox mode)."""
    sandbox = console_of(request).sandbox
    if sandbox is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "the sandbox exists in sandbox mode only"}),
            content_type="application/json",
        )
    sandbox.bind(own_url(request))
    return sandbox


def own_url(request: web.Request) -> str:
    """This server on loopback (the port the request came in on)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if sockname else request.url.port
    return f"http://127.0.0.1:{port}"


def bad_request(error: str) -> web.HTTPBadRequest:
    """A 400 whose JSON body says what is wrong."""
    return web.HTTPBadRequest(text=json.dumps({"error": error}), content_type="application/json")


def hours(value: Any, name: str) -> float:
    """Seconds in a number of hours, or in a duration like ``90m`` or ``2d``."""
    if isinstance(value, str) and value and not value.replace(".", "", 1).isdigit():
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise bad_request(f"{name}: {exc}") from None
    try:
        hours = float(value or 0)
    except (TypeError, ValueError):
        raise bad_request(f"{name} must be a number of hours, got {value!r}") from None
    if not 0 <= hours <= 24 * 365:
        raise bad_request(f"{name} must be between 0 and 8760 hours")
    return hours * 3600


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (400 for anything else)."""
    try:
        data = await request.json() if request.can_read_body else {}
    except ValueError:
        raise bad_request("the body must be JSON") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data
