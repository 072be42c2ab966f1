"""Flow engine benchmarks: compiled machines vs a machine built per message, and memory.

Run: ``python bench/bench_engine.py [--messages N] [--users N]``.

1. Throughput over the example ``welcome`` flow, a user bouncing menu → hours → menu…
   (every message fires one transition):
   - naive: what a straightforward integration does, a ``transitions.Machine`` built per
     message around a model object, then the event fired (state change only, no replies);
   - compiled, transition only: the engine's precompiled dispatch tuple and matchers;
   - compiled, full turn: ``Engine.handle`` (matching, hooks, rendering the replies).
2. Memory: handling one message each for 10 and for 1,000,000 distinct users, records made
   on the fly and dropped, with the memory the engine still holds afterwards
   (tracemalloc) and the process RSS. The engine keeps nothing per user, so the retained
   figure does not grow with the number of users. (tracemalloc slows Python several times:
   the 1,000,000-user run takes about four minutes; ``--users`` makes it shorter.)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from transitions import Machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.engine import Engine  # noqa: E402
from bot.engine.machine import View  # noqa: E402
from bot.models import InboundMessage, Interactive, UserRecord  # noqa: E402

NOW = 1_764_000_000.0


def press(ident: str, user: str = "5511999990000") -> InboundMessage:
    return InboundMessage(
        id="wamid.x",
        user=user,
        timestamp=int(NOW),
        type="interactive",
        wa_id=user,
        interactive=Interactive(kind="button_reply", id=ident, title=ident),
        text=ident,
    )


MESSAGES = {"menu": press("hours"), "hours": press("menu")}


class _Model:
    state: str


def naive_rate(engine: Engine, n: int) -> float:
    """Messages/s when every message builds its own ``transitions.Machine``."""
    flow = engine.flows["welcome"]
    states = list(flow.states)
    transitions: list[dict[str, Any]] = []
    for name, compiled in flow.states.items():
        for rule in compiled.dispatch:
            dest = rule.target[1] if rule.target and rule.target[0] == "welcome" else name

            def matches(event: Any, rule: Any = rule) -> bool:
                return rule.match(event.kwargs["view"]) is not None

            transitions.append(
                {"trigger": "message", "source": name, "dest": dest, "conditions": [matches]}
            )
    state = "menu"
    start = time.perf_counter()
    for _ in range(n):
        model = _Model()
        Machine(
            model=model,
            states=states,
            transitions=transitions,
            initial=state,
            send_event=True,
            auto_transitions=False,
        )
        model.message(view=View.of(MESSAGES[state]))  # type: ignore[attr-defined]
        state = model.state
    return n / (time.perf_counter() - start)


def compiled_lookup_rate(engine: Engine, n: int) -> float:
    """Messages/s through the compiled dispatch alone (no hooks, no rendering)."""
    flow = engine.flows["welcome"]
    state = "menu"
    start = time.perf_counter()
    for _ in range(n):
        view = View.of(MESSAGES[state])
        for rule in flow.states[state].dispatch:
            if rule.match(view) is not None:
                assert rule.target is not None
                state = rule.target[1]
                break
    return n / (time.perf_counter() - start)


async def handle_rate(engine: Engine, n: int) -> float:
    """Messages/s through ``Engine.handle`` (replies rendered)."""
    record = UserRecord(key="5511999990000", profile_name="Ana", flow="welcome", state="menu")
    start = time.perf_counter()
    for _ in range(n):
        record = (await engine.handle(record, MESSAGES[record.state], NOW)).record
    return n / (time.perf_counter() - start)


async def distinct_users(engine: Engine, users: int) -> None:
    """One message for each of ``users`` users; records are made here and dropped."""
    for i in range(users):
        key = f"55{i:011d}"
        record = UserRecord(key=key, wa_id=key, profile_name="Ana", flow="welcome", state="menu")
        turn = await engine.handle(record, press("hours", key), NOW)
        assert turn.record.state == "hours"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def memory(engine: Engine, users: int) -> tuple[float, float, float, float]:
    """(retained KiB, peak KiB above start, RSS MiB after, seconds) for ``users`` users."""
    await distinct_users(engine, 10)  # warm caches (Jinja, structlog) before measuring
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    await distinct_users(engine, users)
    seconds = time.perf_counter() - start
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (current - before) / 1024, (peak - before) / 1024, rss_mib(), seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args()
    engine = Engine.load(ROOT / "flows")
    n = args.messages
    naive = naive_rate(engine, n)
    lookup = compiled_lookup_rate(engine, n)
    full = await handle_rate(engine, n)
    print(f"throughput over {n:,} messages (welcome: menu <-> hours)")
    print(f"  naive, Machine built per message : {naive:12,.0f} transitions/s")
    print(
        f"  compiled, transition only        : {lookup:12,.0f} transitions/s"
        f"  ({lookup / naive:,.0f}x naive)"
    )
    print(
        f"  compiled, full Engine.handle     : {full:12,.0f} messages/s"
        f"  ({full / naive:,.1f}x naive, with replies rendered)"
    )
    print("memory (one message per distinct user; records not kept)")
    print(f"  {'users':>9}  {'retained KiB':>12}  {'peak KiB':>9}  {'RSS MiB':>8}  {'seconds':>8}")
    for users in (10, args.users):
        retained, peak, rss, seconds = await memory(engine, users)
        print(f"  {users:>9,}  {retained:>12.1f}  {peak:>9.1f}  {rss:>8.1f}  {seconds:>8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
