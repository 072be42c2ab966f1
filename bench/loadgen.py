"""A lean HTTP/1.1 load generator for signed webhook deliveries.

It speaks just enough HTTP over asyncio streams (keep-alive, Content-Length bodies) to stay
out of the way of the server it measures: with aiohttp's own client as the load generator the
client, not the server, is the bottleneck on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bot.testing import text_message
from bot.webhook import sign


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 80)


def delivery(wa_id: str, wamid: str, text: str, timestamp: int, name: str = "Bench") -> bytes:
    """One Meta delivery with one text message."""
    return json.dumps(
        text_message(wa_id, text, wamid=wamid, timestamp=timestamp, name=name)
    ).encode()


class Connection:
    """One keep-alive connection that POSTs signed bodies to one URL, one at a time.

    :meth:`post` writes the whole request before its first ``await``, so a clock read just
    before the call is the moment the request went out.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        url: str,
        app_secret: str,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._url, self._secret = url, app_secret
        parts = urlsplit(url)
        self._head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\n"
        )

    @classmethod
    async def open(cls, url: str, *, app_secret: str = "") -> Connection:
        """Connect to ``url``'s host; every :meth:`post` goes to its path."""
        reader, writer = await _connect(url)
        return cls(reader, writer, url, app_secret)

    async def try_post(self, body: bytes) -> int:
        """:meth:`post`, but a dropped connection is status 0 and a new connection.

        Raises:
            OSError: the server cannot be reached any more.
        """
        try:
            return await self.post(body)
        except (OSError, asyncio.IncompleteReadError):
            self.close()
            self._reader, self._writer = await _connect(self._url)
            return 0

    async def post(self, body: bytes) -> int:
        """Send ``body`` (signed if there is an app secret); the answer's HTTP status."""
        head = f"{self._head}Content-Length: {len(body)}\r\n"
        if self._secret:
            head += f"X-Hub-Signature-256: {sign(body, self._secret)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        reader = self._reader
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        """Close the connection."""
        self._writer.close()


@dataclass
class Result:
    """What one load run measured."""

    sent: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> str:
        """One line: rate and ack latency percentiles."""
        lat = sorted(self.latencies) or [0.0]
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        rate = self.sent / self.elapsed if self.elapsed else 0.0
        return (
            f"acked {self.sent} in {self.elapsed:.2f}s = {rate:.0f}/s, "
            f"ack p50 {p50:.1f} ms p99 {p99:.1f} ms, errors {self.errors or 'none'}"
        )


async def fire(
    url: str,
    bodies: list[bytes],
    *,
    app_secret: str = "",
    concurrency: int = 64,
) -> Result:
    """POST every body once over ``concurrency`` keep-alive connections."""
    result = Result()
    it = iter(bodies)

    async def worker() -> None:
        conn = await Connection.open(url, app_secret=app_secret)
        try:
            for body in it:
                t0 = time.perf_counter()
                status = await conn.post(body)
                result.latencies.append(time.perf_counter() - t0)
                if status == 200:
                    result.sent += 1
                else:
                    result.errors[status] = result.errors.get(status, 0) + 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - t0
    return result
