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


def delivery(wa_id: str, wamid: str, text: str, timestamp: int, name: str = "Bench") -> bytes:
    """One Meta delivery with one text message."""
    return json.dumps(
        text_message(wa_id, text, wamid=wamid, timestamp=timestamp, name=name)
    ).encode()


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
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    result = Result()
    it = iter(enumerate(bodies))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _, body in it:
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                )
                if app_secret:
                    head += f"X-Hub-Signature-256: {sign(body, app_secret)}\r\n"
                t0 = time.perf_counter()
                writer.write(head.encode() + b"\r\n" + body)
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                result.latencies.append(time.perf_counter() - t0)
                status = int(status_line.split()[1])
                if status == 200:
                    result.sent += 1
                else:
                    result.errors[status] = result.errors.get(status, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - t0
    return result
