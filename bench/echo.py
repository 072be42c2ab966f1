"""The baseline: a bare aiohttp handler that verifies, parses and echoes, storing nothing.

python bench/echo.py PORT SECRET
"""

from __future__ import annotations

import sys

from aiohttp import web

from bot.webhook import SIGNATURE_HEADER, parse_body, verify_signature


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    verify_signature(body, request.headers.get(SIGNATURE_HEADER), SECRET)
    delivery = parse_body(body)
    return web.Response(text=",".join(m.id for m in delivery.messages))


if __name__ == "__main__":
    PORT, SECRET = int(sys.argv[1]), sys.argv[2]
    app = web.Application()
    app.router.add_post("/webhook", receive)
    app.router.add_get("/healthz", lambda _: web.Response(text="ok"))  # type: ignore[arg-type,return-value]
    web.run_app(app, host="127.0.0.1", port=PORT, print=None, access_log=None)
