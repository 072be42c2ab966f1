"""The reply sink: a fake Cloud API that tells the load generator when each reply arrives.

    python bench/sink.py PORT FD

``bench/bench_pipeline.py`` runs it in its own process (so that its CPU does not share the
load generator's event loop). It answers ``POST /{version}/{pnid}/messages`` with the Cloud
API's success shape and reports every message it accepted on the stream socket ``FD`` as one
line, ``<text body>\\t<CLOCK_MONOTONIC seconds at arrival>``, the lines of one event-loop
pass written together. It writes ``ready`` once it listens, and exits when the load
generator closes its end of the socket.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import time

from aiohttp import web


class Reporter:
    """Batches arrival lines and writes them once per event-loop pass."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lines: list[str] = []

    def report(self, text: str, at: float) -> None:
        """Queue one arrival; the first of a pass schedules the write."""
        if not self._lines:
            asyncio.get_running_loop().call_soon(self._flush)
        self._lines.append(f"{text}\t{at:.6f}\n")

    def _flush(self) -> None:
        self._writer.write("".join(self._lines).encode())
        self._lines.clear()


def reply_text(message: object) -> str:
    """The text body of a Cloud API message, else ``<type>`` (tabs and newlines escaped)."""
    if not isinstance(message, dict):
        return "<invalid>"
    if message.get("type") == "text":
        text = str(message.get("text", {}).get("body", ""))
    else:
        text = f"<{message.get('type', message.get('status', '?'))}>"
    return text.replace("\t", "\\t").replace("\n", "\\n")


def make_app(reporter: Reporter) -> web.Application:
    """The fake Cloud API: every message succeeds and is reported."""
    ids = itertools.count()

    async def messages(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        reporter.report(reply_text(message), time.monotonic())
        to = str(message.get("to", "")) if isinstance(message, dict) else ""
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": f"wamid.SINK{next(ids):012d}"}],
        }
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/{version}/{pnid}/messages", messages)
    return app


async def serve(port: int, fd: int) -> None:
    """Listen on 127.0.0.1:``port`` until the report socket ``fd`` is closed by its peer."""
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    runner = web.AppRunner(make_app(Reporter(writer)), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        writer.write(b"ready\n")
        await reader.read()  # EOF: the load generator is done
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
