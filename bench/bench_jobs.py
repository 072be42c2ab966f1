"""Reminder jobs: jobs/s dispatched against the configured send rate, and the dispatch lag.

Run: ``python bench/bench_jobs.py [--jobs 1000] [--processes 3] [--rate 80]``.

Starts the shipped fake Cloud API (enforcing the rate plus 5 % with 130429, as Meta does),
``--processes`` ``bot run`` processes on one fresh SQLite file, then makes ``--jobs``
template reminders due at once, one per user. Reported from the fake's own log: jobs/s
(first to last accepted) against the rate, the busiest second, 130429s, users reached twice,
and the lag from each job's due time to the fake accepting it (p50, p99, max).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.models import TemplateCall  # noqa: E402
from bot.scheduling import build_job  # noqa: E402
from bot.store.sqlite import SQLiteStore  # noqa: E402
from bot.testing import FakeCloudAPI  # noqa: E402
from tests.server import BotProcess  # noqa: E402


def busiest_second(times: list[float]) -> int:
    ordered, most, start = sorted(times), 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


async def run(jobs: int, processes: int, rate: float) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    store = SQLiteStore(folder / "bot.db")
    await store.open()
    async with FakeCloudAPI(throughput=rate * 1.05, enforce_window=False) as fake:
        config = folder / "windowbot.toml"
        config.write_text(
            f"[whatsapp]\ntimeout = 30.0\nsend_rate = {rate}\n"
            "[workers]\nsweep_seconds = 0.2\n[jobs]\npoll_seconds = 0.2\nbatch = 50\n"
        )
        env = {
            "BOT_CONFIG": str(config),
            "BOT_STORE_URL": f"sqlite:///{folder / 'bot.db'}",
            "BOT_FLOWS_DIR": str(ROOT / "flows"),
            "BOT_LOG_LEVEL": "warning",
            "WHATSAPP_APP_SECRET": "bench",
            "WHATSAPP_TOKEN": fake.token,
            "WHATSAPP_VERIFY_TOKEN": "verify-me",
            "WHATSAPP_PHONE_NUMBER_ID": fake.phone_number_id,
            "WHATSAPP_API_URL": fake.url,
        }
        servers = [BotProcess(env, folder / f"bot{i}.log") for i in range(processes)]
        try:
            await asyncio.gather(*(s.start() for s in servers))
            due = time.time()
            call = TemplateCall("appointment_update", ("Ana", "tomorrow at 10:00"))
            await store.schedule_jobs(
                [
                    build_job(f"1555900{n:06d}", call, at=due, now=due, key="bench")
                    for n in range(jobs)
                ]
            )
            await fake.wait_for_total(jobs, within=jobs / rate * 3 + 30)
        finally:
            for server in servers:
                server.stop()
            await store.close()
    times = sorted(m.time for m in fake.messages)
    lags = sorted(t - due for t in times)
    twice = sum(1 for n in Counter(m.to for m in fake.messages).values() if n > 1)
    achieved = (len(times) - 1) / (times[-1] - times[0])
    p99 = lags[int(len(lags) * 0.99) - 1]
    print(f"{jobs} jobs over {processes} process(es), send_rate {rate:g}/s (SQLite)")
    print(f"  jobs/s        {achieved:.1f}  ({achieved / rate:.1%} of the rate)")
    print(f"  busiest 1 s   {busiest_second(times)}  (limit {rate * 1.05:g} with 5 %)")
    print(f"  130429s       {fake.throttled}    users reached twice: {twice}")
    print(
        f"  lag due→sent  p50 {statistics.median(lags):.2f} s, p99 {p99:.2f} s,"
        f" max {lags[-1]:.2f} s  (the last of {jobs} at {rate:g}/s needs {jobs / rate:.1f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--rate", type=float, default=80.0)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.processes, args.rate))


if __name__ == "__main__":
    main()
