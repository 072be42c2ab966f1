"""The bot's own work per message, without HTTP: for telling small changes apart.

    python bench/bench_logic.py [--messages 6000] [--rounds 5] [--profile FILE]
    python bench/bench_logic.py --against DIR     # this tree and DIR's bot/, rounds alternating

``bench/bench_pipeline.py`` measures what a user sees, but this machine's speed drifts by
more than the effect of most single changes, and two HTTP servers and a load generator add
their own noise. This runs, in one process, what ``bot run`` does for a webhook apart from
aiohttp's server and client: the signature check and parse, the inbox insert with its
claim, the flow turn of ``bench/flows`` (the echo), the lease-fenced commit, the window
decision and the send's bookkeeping, the wamid recorded, the lease released, on the SQLite
store with ``synchronous=FULL``. The Cloud API is a stand-in that answers at once.

Webhooks go in waves of 64 distinct users (each waits for its 200), and the next wave starts
when every reply of this one has been sent: like the sustained phase, one message per user
at a time. It prints the CPU time per message of each round and their minimum (the least
disturbed round), with a fixed pure-Python loop timed before each round (``probe``) to show
the drift. It exits with an error if a message got no reply.

To compare two builds, ``--against DIR`` (a checkout, e.g. ``git archive HEAD | tar -x -C
DIR``) runs each round twice, once on this tree's ``bot/`` and once on DIR's, in fresh
processes and in alternating order, and prints the median of the rounds' own ratios: the
drift then hits both sides of each pair alike.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
if "--bot-src" in sys.argv:  # the bot package of another checkout (see --against)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--bot-src") + 1]).resolve()))

from loadgen import delivery  # noqa: E402
from pipeline_procs import speed_probe  # noqa: E402

from bot._pipeline import build_pipeline  # noqa: E402
from bot.cli import _settle_heap  # noqa: E402
from bot.config import Config, load_config  # noqa: E402
from bot.engine import Engine  # noqa: E402
from bot.log import configure_logging  # noqa: E402
from bot.runtime import load_engine, window_policy  # noqa: E402
from bot.store import store_from_url  # noqa: E402
from bot.templates import TemplateRegistry  # noqa: E402
from bot.webhook import parse_body, sign, verify_signature  # noqa: E402

SECRET = "bench-secret"
WAVE = 64
WARMUP = 500
USERS = 1000


class InstantCloud:
    """A Cloud API that accepts every message at once (the transport ``bot run`` uses)."""

    def __init__(self) -> None:
        self.sent = 0
        self._ids = itertools.count()

    async def send(self, to: str, message: Any, *, callback: str = "") -> str:
        self.sent += 1
        return f"wamid.LOGIC{next(self._ids):012d}"


def setup() -> tuple[Config, Engine, TemplateRegistry | None]:
    """The config ``bot run`` would read in the bench's environment, and its flows."""
    env = {
        "WHATSAPP_APP_SECRET": SECRET,
        "BOT_FLOWS_DIR": str(ROOT / "bench" / "flows"),
        "BOT_SEND_RATE": "0",
        "BOT_LOG_LEVEL": "warning",
    }
    config = load_config(environ=env)
    configure_logging(config.log.level, config.log.format, cache=True)
    engine, registry = load_engine(config)
    return config, engine, registry


async def one_round(
    built: tuple[Config, Engine, TemplateRegistry | None],
    messages: int,
    number: int,
    profile: str = "",
) -> tuple[float, float]:
    """One round on a fresh store: CPU milliseconds per message, and the probe before it."""
    config, engine, registry = built
    with tempfile.TemporaryDirectory(prefix="bench-logic-") as tmp:
        store = store_from_url(f"sqlite:///{tmp}/logic.db")
        await store.open()
        cloud = InstantCloud()
        # handle_pure is absent from older checkouts (--against)
        pure = {"pure_handler": engine.handle_pure} if hasattr(engine, "handle_pure") else {}
        pipeline = build_pipeline(
            config,
            store,
            cloud,
            handler=engine.handle,
            error_replies=engine.error_replies,
            registry=registry,
            policy=window_policy(config),
            **pure,
        )
        dispatcher = pipeline.dispatcher
        await dispatcher.start()

        async def webhook(body: bytes, signature: str) -> None:
            started = time.perf_counter()
            verify_signature(body, signature, SECRET)
            delivered = parse_body(body)
            await dispatcher.receive(delivered.messages, time.time(), started)

        bodies = []
        now = int(time.time())
        for i in range(messages + WARMUP):
            body = delivery(f"1555{i % USERS:07d}", f"wamid.L{number}x{i}", f"m{i}", now)
            bodies.append((body, sign(body, SECRET)))

        async def waves(part: list[tuple[bytes, str]]) -> None:
            for start in range(0, len(part), WAVE):
                await asyncio.gather(*(webhook(b, s) for b, s in part[start : start + WAVE]))
                await dispatcher.idle()

        await waves(bodies[:WARMUP])  # caches, the first users' records
        _settle_heap()  # as `bot run` does once it listens
        probe = speed_probe()
        prof = cProfile.Profile() if profile else None
        cpu = time.process_time()
        if prof:
            prof.enable()
        await waves(bodies[WARMUP:])
        if prof:
            prof.disable()
            prof.dump_stats(profile)
        cpu = time.process_time() - cpu
        await dispatcher.stop()
        await store.close()
    if cloud.sent != messages + WARMUP:
        raise RuntimeError(f"{cloud.sent} replies sent for {messages + WARMUP} messages")
    return cpu / messages * 1e3, probe


async def run(messages: int, rounds: int, profile: str) -> None:
    built = setup()
    results = []
    for number in range(rounds):
        last = number == rounds - 1
        per, probe = await one_round(built, messages, number, profile if last else "")
        results.append((per, probe))
        print(f"round {number + 1}: {per:.3f} ms CPU/msg, probe {probe:.1f} ms", flush=True)
    best = min(results)
    print(f"least: {best[0]:.3f} ms CPU/msg (probe {best[1]:.1f} ms)")


def against(other: Path, messages: int, rounds: int) -> None:
    """Alternate rounds of this tree and ``other`` in fresh processes; the paired ratios."""
    ratios = []
    for number in range(rounds):
        sides = ["this", "other"] if number % 2 == 0 else ["other", "this"]
        got: dict[str, float] = {}
        for side in sides:
            command = [sys.executable, __file__, "--messages", str(messages), "--rounds", "1"]
            if side == "other":
                command += ["--bot-src", str(other)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            found = re.search(r"^round 1: (\d+\.\d+) ms", out, re.M)
            if found is None:
                raise RuntimeError(f"no round in the output of {command}: {out[-500:]}")
            got[side] = float(found.group(1))
        ratios.append(got["this"] / got["other"])
        print(
            f"round {number + 1}: this {got['this']:.3f} ms, {other} {got['other']:.3f} ms,"
            f" ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(
        f"this tree / {other}: median {statistics.median(ratios):.3f}"
        f" (rounds {min(ratios):.3f}-{max(ratios):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", default="", help="cProfile the last round into FILE")
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    parser.add_argument("--bot-src", type=Path, help="import bot/ from this checkout")
    args = parser.parse_args()
    if args.against is not None:
        against(args.against, args.messages, args.rounds)
    else:
        asyncio.run(run(args.messages, args.rounds, args.profile))


if __name__ == "__main__":
    main()
