"""Process memory of `bot run` with 10 vs 1,000,000 users in the store.

    python bench/bench_memory.py [--users 10 1000000] [--messages 3000]

For each size it writes that many user records (in the welcome flow's menu state) into a
fresh SQLite store, starts `bot run` on it with the example flows, sends signed messages
from randomly chosen stored users, and reports the process's RSS after start-up and after
the messages. The engine keeps one compiled machine per flow and no per-user objects, so the
two columns should match.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_webhook import ROOT, counter, free_port, wait_http
from loadgen import delivery, fire

from bot.models import UserRecord
from bot.store.base import user_to_json
from bot.store.sqlite import SQLiteStore

SECRET = "bench-secret"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def populate(path: Path, users: int) -> None:
    store = SQLiteStore(path)  # creates the schema
    await store.open()
    await store.close()
    now = int(time.time())
    conn = sqlite3.connect(path)
    rows = (
        (
            key,
            1,
            0,
            json.dumps(
                user_to_json(
                    UserRecord(
                        key=key,
                        wa_id=key,
                        profile_name=f"User {i}",
                        last_inbound_at=now - 60,
                        message_count=1,
                        flow="welcome",
                        state="menu",
                        version=1,
                    )
                )
            ),
        )
        for i, key in ((i, f"1{i:010d}") for i in range(users))
    )
    with conn:
        conn.executemany("INSERT INTO users (key, version, next_seq, data) VALUES (?,?,?,?)", rows)
    conn.close()


async def measure(users: int, messages: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bot.db"
        await populate(db, users)
        port = free_port()
        env = {
            **os.environ,
            "WHATSAPP_APP_SECRET": SECRET,
            "BOT_LOG_LEVEL": "warning",
            "BOT_STORE_URL": f"sqlite:///{db}",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "run", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_http(f"{base}/healthz")
            start_rss = rss_mib(proc.pid)
            rng, now = random.Random(1), int(time.time())
            bodies = [
                delivery(f"1{rng.randrange(users):010d}", f"wamid.mem.{i}", "hours", now)
                for i in range(messages)
            ]
            await fire(f"{base}/webhook", bodies, app_secret=SECRET)
            while await counter(base, "windowbot_messages_processed_total") < messages:
                await asyncio.sleep(0.05)
            return start_rss, rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10, 1_000_000])
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    print(
        f"{'users in store':>15} {'RSS at start':>13} {'RSS after':>10}  ({args.messages} messages)"
    )
    for users in args.users:
        start, after = await measure(users, args.messages)
        print(f"{users:>15,} {start:>10.1f} MiB {after:>6.1f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
