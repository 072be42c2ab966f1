"""The floor: the least a server can do for the bot's observable work, with no store or flow.

    python bench/floor.py PORT

It receives the webhook POST, verifies its signature, parses it, answers 200 and then, in a
background task (as a bot answers after acknowledging), POSTs an echo of each text message
to the Cloud API over one shared ``aiohttp.ClientSession``. Configured like ``bot run``, from
the environment: ``WHATSAPP_APP_SECRET``, ``WHATSAPP_TOKEN``, ``WHATSAPP_PHONE_NUMBER_ID``,
``WHATSAPP_API_URL`` and ``WHATSAPP_API_VERSION`` (default ``v23.0``).
``bench/bench_pipeline.py`` measures the bot against it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from bot._loop import loop_factory
from bot.errors import PayloadError, SignatureError
from bot.models import InboundMessage
from bot.webhook import SIGNATURE_HEADER, parse_body, verify_signature


class Floor:
    """The webhook handler and the echo sender, over one client session."""

    def __init__(self, app_secret: str, messages_url: str, token: str) -> None:
        self.app_secret = app_secret
        self.messages_url = messages_url
        self.token = token
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Floor:
        """Read the same variables ``bot run`` reads."""
        base = env.get("WHATSAPP_API_URL", "https://graph.facebook.com").rstrip("/")
        version = env.get("WHATSAPP_API_VERSION", "v23.0")
        url = f"{base}/{version}/{env.get('WHATSAPP_PHONE_NUMBER_ID', '')}/messages"
        return cls(env.get("WHATSAPP_APP_SECRET", ""), url, env.get("WHATSAPP_TOKEN", ""))

    async def session_ctx(self, _: web.Application) -> AsyncIterator[None]:
        """The shared session; pending echoes finish before it closes."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            self.session = session
            yield
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def receive(self, request: web.Request) -> web.Response:
        """Verify, parse, acknowledge; the echoes go out after the 200."""
        body = await request.read()
        try:
            verify_signature(body, request.headers.get(SIGNATURE_HEADER), self.app_secret)
            delivery = parse_body(body)
        except SignatureError as exc:
            return web.Response(status=401, text=str(exc))
        except PayloadError as exc:
            return web.Response(status=400, text=str(exc))
        await self.accept(delivery.messages)
        return web.Response(text="OK")

    async def accept(self, messages: Sequence[InboundMessage]) -> None:
        """What happens to a verified delivery's messages before the 200: echoes scheduled."""
        for message in messages:
            if message.type == "text":
                self.spawn(self.send_echo(message.wa_id, message.text))

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` after the 200, in a task kept until it ends."""
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def send_echo(self, to: str, text: str) -> str:
        """POST one text message; the wamid the Cloud API answers with ('' if refused)."""
        assert self.session is not None
        payload = {
            "messaging_product": "whatsapp",
            "to": to,
            "type": "text",
            "text": {"body": text},
        }
        async with self.session.post(self.messages_url, json=payload) as response:
            answer = json.loads(await response.read())
        if response.status != 200 or not answer.get("messages"):
            print(f"floor: reply to {to} refused: {response.status} {answer}", file=sys.stderr)
            return ""
        return str(answer["messages"][0].get("id", ""))

    def app(self) -> web.Application:
        """The aiohttp application: ``POST /webhook`` and ``GET /healthz``."""
        app = web.Application()
        app.cleanup_ctx.append(self.session_ctx)
        app.router.add_post("/webhook", self.receive)
        app.router.add_get("/healthz", healthz)
        return app


async def healthz(_: web.Request) -> web.Response:
    """Always 200: there is no store to ask."""
    return web.Response(text="ok")


def serve(app: web.Application, port: int) -> None:
    """``web.run_app`` on 127.0.0.1: on asyncio's loop, or uvloop's if ``BOT_EVENT_LOOP``
    says ``uvloop`` (``bench_pipeline.py --floor-loop``)."""
    factory = loop_factory(os.environ.get("BOT_EVENT_LOOP", "asyncio"))
    loop = factory() if factory is not None else None
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    serve(Floor.from_env(os.environ).app(), int(sys.argv[1]))
