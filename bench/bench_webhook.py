"""Fire signed deliveries at a `bot run` server and measure acks and end-to-end throughput.

    python bench/bench_webhook.py                      # spawns `bot run` on a temp SQLite store
    python bench/bench_webhook.py --url http://127.0.0.1:8080/webhook --secret S   # a running one
    python bench/bench_webhook.py --echo               # the bare aiohttp baseline (bench/echo.py)

It prints messages/s acknowledged, ack latency p50/p99, and (for a bot) the messages/s at
which the bot finished processing them (read from /metrics), plus replies received by the
fake Cloud API when --e2e is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import delivery, fire

SECRET = "bench-secret"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not come up")
            await asyncio.sleep(0.1)


async def counter(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def fake_count(fake_url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{fake_url}/_fake/count") as r:
        return int((await r.json())["count"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="webhook URL of a running server (default: spawn one)")
    parser.add_argument("--secret", default=SECRET)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--echo", action="store_true", help="measure bench/echo.py instead")
    parser.add_argument("--e2e", action="store_true", help="flows on, replies to a fake Cloud API")
    parser.add_argument("--store", default="", help="store URL for the spawned bot")
    parser.add_argument(
        "--statuses",
        action="store_true",
        help="with --e2e: the fake posts signed sent/delivered statuses back, as Meta does",
    )
    args = parser.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.TemporaryDirectory()
    fake_url = ""
    try:
        if args.url:
            url = args.url
        else:
            port = free_port()
            env = {**os.environ, "WHATSAPP_APP_SECRET": args.secret, "BOT_LOG_LEVEL": "warning"}
            if args.echo:
                cmd = [sys.executable, str(ROOT / "bench" / "echo.py"), str(port), args.secret]
            else:
                env["BOT_STORE_URL"] = args.store or f"sqlite:///{tmp.name}/bench.db"
                if args.e2e:
                    fport = free_port()
                    fake_url = f"http://127.0.0.1:{fport}"
                    fake_cmd = [
                        sys.executable,
                        "-m",
                        "bot.testing",
                        "--port",
                        str(fport),
                        "--token",
                        "bench-token",
                    ]
                    if args.statuses:
                        fake_cmd += [
                            "--webhook-url",
                            f"http://127.0.0.1:{port}/webhook",
                            "--app-secret",
                            args.secret,
                        ]
                    procs.append(subprocess.Popen(fake_cmd, env=env))
                    await wait_http(f"{fake_url}/_fake/count")
                    env.update(
                        WHATSAPP_TOKEN="bench-token",
                        WHATSAPP_VERIFY_TOKEN="bench",
                        WHATSAPP_PHONE_NUMBER_ID="PNID",
                        WHATSAPP_API_URL=fake_url,
                        BOT_SEND_RATE="0",
                    )
                else:
                    env["BOT_FLOWS_DIR"] = str(Path(tmp.name) / "no-flows")
                    env["BOT_RECORD_ONLY"] = "1"
                cmd = [
                    sys.executable,
                    "-m",
                    "bot",
                    "run",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ]
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT))
            url = f"http://127.0.0.1:{port}/webhook"
            await wait_http(url.replace("/webhook", "/healthz"))
        base = url.rsplit("/", 1)[0]
        now = int(time.time())
        bodies = [
            delivery(f"1555{i % args.users:07d}", f"wamid.bench.{now}.{i}", f"hello {i}", now)
            for i in range(args.messages)
        ]
        print(f"{len(bodies)} deliveries, {args.users} users, {args.concurrency} connections")
        before = 0.0 if args.echo else await counter(base, "windowbot_messages_processed_total")
        t0 = time.perf_counter()
        result = await fire(url, bodies, app_secret=args.secret, concurrency=args.concurrency)
        print(result.summary())
        if args.echo:
            return
        name = "windowbot_messages_processed_total"
        while await counter(base, name) - before < result.sent:
            await asyncio.sleep(0.02)
        processed_at = time.perf_counter() - t0
        print(
            f"processed {result.sent} in {processed_at:.2f}s = "
            f"{result.sent / processed_at:.0f} messages/s end to end (stored and handled)"
        )
        if fake_url:
            # every message gets at least one reply; wait for the count to settle
            count, last_change = 0, time.perf_counter()
            while True:
                now_count = await fake_count(fake_url)
                now = time.perf_counter()
                if now_count != count:
                    count, last_change = now_count, now
                elif count >= result.sent and now - last_change > 1.0:
                    break
                await asyncio.sleep(0.02)
            replied = last_change - t0
            print(
                f"{count} replies received by the fake Cloud API in {replied:.2f}s: "
                f"{result.sent / replied:.0f} messages/s answered end to end "
                "(signed webhook → inbox → flow → outbox → Cloud API)"
            )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
