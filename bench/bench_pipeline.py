"""windowbot against its floor, under the same load generator in the same run.

    python bench/bench_pipeline.py [--messages 10000] [--users 1000] [--concurrency 64]
                                   [--runs K] [--only floor|bot] [--modes burst sustained]

Two servers do the same observable work: take a signed webhook POST, answer 200, then POST
an echo of the message's text to the Cloud API.

- floor: ``bench/floor.py``, verify + parse + 200 + echo, no store, no flow;
- durable: ``bench/floor_durable.py``, the floor plus the three SQLite writes a bot that loses
  and repeats nothing needs (insert before the 200, handled + reply queued, wamid recorded):
  a reference that tells the cost of durability from the cost of the rest of the bot;
- bot: ``python -m bot run`` on a fresh SQLite file with ``bench/flows`` (the echo flow).

Replies go to a reply sink (``bench/sink.py``, a fake Cloud API in its own process) that
reports each arrival to this load generator. Per server and run, each mode runs on a fresh
server process (and store), after a closed-loop warm-up of ``--warmup`` messages:

- burst: ``--messages`` messages POSTed over ``--concurrency`` connections as fast as the
  server acknowledges them (the backlog is unbounded); rate = answered / (last reply - start);
- sustained: a closed loop, at most ``--concurrency`` messages awaiting their reply at once,
  a user never has two in flight; rate as above, e2e latency = POST written → reply at sink.

CPU is the server process's utime + stime from ``/proc/<pid>/stat`` from the start of the
phase until it is idle again, divided by messages answered. Each phase line also shows the
cores the server, the sink, this load generator and everything else on the machine used:
other work (a test suite) slows the single-threaded floor most, so each phase first waits
(``--quiet-wait``) for the machine to be idle. A virtual machine's speed also drifts, unseen
from inside, with its neighbours' load: a fixed loop is timed before each phase (the probe),
the servers take turns at going first, and each ratio in the table is the median over
``--runs`` of the runs' own bot/floor ratios (the columns: medians; missing / duplicate /
out-of-order replies: sums), set against the product's bar.

The bot runs from this working tree; ``--bot-src DIR`` runs another checkout instead (a
``git archive`` of a commit), for numbers that do not move while the tree is being edited.
A server that logs anything has its log kept in the temporary folder (the path is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_webhook import ROOT, free_port, wait_http
from pipeline_load import Ledger, Messages, burst, closed_loop
from pipeline_procs import (
    Sink,
    cpu_seconds,
    machine_busy,
    machine_quiet,
    profiler,
    spawned,
    speed_probe,
    wait_idle,
)

BENCH = ROOT / "bench"
SECRET, TOKEN, PNID = "bench-secret", "bench-token", "PNID"
USERS_BASE, WARM_BASE = 15_550_000_000, 16_660_000_000
TARGETS, MODES = ("floor", "durable", "bot"), ("burst", "sustained")


@dataclass(frozen=True)
class Measurement:
    """One phase of one server."""

    target: str
    mode: str
    run: int
    probe_ms: float  # the speed probe just before the phase (lower: the machine was faster)
    rate: float  # messages answered per second
    ack_rate: float  # burst: messages acknowledged per second
    p50: float  # e2e latency, seconds
    p99: float
    cpu_ms: float  # server CPU per message answered
    answered: int
    missing: int
    duplicates: int
    out_of_order: int
    unexpected: int
    refused: dict[int, int]
    # CPU used during the phase, in cores: the server, the sink, this load generator and
    # every other process on the machine (which only adds noise to the comparison)
    server_share: float
    sink_share: float
    gen_share: float
    others_share: float

    def line(self) -> str:
        """The phase in one line."""
        ack = f", acked {self.ack_rate:,.0f}/s" if self.ack_rate else ""
        return (
            f"{self.target:>7} {self.mode:<9} {self.answered:>6,} answered = {self.rate:7,.0f}"
            f" msg/s{ack}; e2e p50 {self.p50 * 1e3:7.1f} ms p99 {self.p99 * 1e3:7.1f} ms;"
            f" CPU {self.cpu_ms:.3f} ms/msg; missing {self.missing} dup {self.duplicates}"
            f" ooo {self.out_of_order} unexpected {self.unexpected}"
            f" refused {self.refused or 0}; cores: server {self.server_share:.2f} sink"
            f" {self.sink_share:.2f} loadgen {self.gen_share:.2f} others {self.others_share:.2f};"
            f" probe {self.probe_ms:.1f} ms"
        )


def server_command(target: str, port: int) -> list[str]:
    """How to start ``target`` on ``port``."""
    if target == "floor":
        return [sys.executable, str(BENCH / "floor.py"), str(port)]
    if target == "durable":
        return [sys.executable, str(BENCH / "floor_durable.py"), str(port)]
    return [sys.executable, "-m", "bot", "run", "--host", "127.0.0.1", "--port", str(port)]


def server_env(sink_url: str, store: Path, loop: str) -> dict[str, str]:
    """The environment of both servers: this one's, minus any windowbot settings, plus ours
    (``loop``: the event loop, ``BOT_EVENT_LOOP``, which the floors read too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "WHATSAPP_"))}
    env.update(
        BOT_EVENT_LOOP=loop,
        WHATSAPP_TOKEN=TOKEN,
        WHATSAPP_PHONE_NUMBER_ID=PNID,
        WHATSAPP_API_URL=sink_url,
        WHATSAPP_APP_SECRET=SECRET,
        WHATSAPP_VERIFY_TOKEN="bench",
        BOT_SEND_RATE="0",
        BOT_LOG_LEVEL="warning",
        BOT_FLOWS_DIR=str(BENCH / "flows"),
        BOT_STORE_URL=f"sqlite:///{store}",
    )
    return env


async def measure(target: str, mode: str, run: int, args: argparse.Namespace) -> Measurement:
    """Start a sink and a fresh ``target``, warm it up, run ``mode``, stop both."""
    if args.quiet_wait and not await machine_quiet(args.quiet_wait):
        print(f"      the machine stayed busy for {args.quiet_wait:.0f} s; measuring anyway")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        parent, child = socket.socketpair()
        sink_port, port = free_port(), free_port()
        sink_cmd = [sys.executable, str(BENCH / "sink.py"), str(sink_port), str(child.fileno())]
        log_path = Path(tmp) / "server.log"
        with (
            spawned(sink_cmd, pass_fds=(child.fileno(),)) as sink_proc,
            log_path.open("wb") as log,
            spawned(
                server_command(target, port),
                cwd=args.bot_src if target == "bot" else ROOT,
                env=server_env(
                    f"http://127.0.0.1:{sink_port}",
                    Path(tmp) / "bench.db",
                    args.bot_loop if target == "bot" else args.floor_loop,
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            ) as server,
        ):
            child.close()
            sink = Sink(sink_proc, sink_port, parent)
            listener = asyncio.create_task(sink.listen())
            try:
                await asyncio.wait_for(sink.ready.wait(), 20)
                await wait_http(f"http://127.0.0.1:{port}/healthz")
                return await phases(target, mode, run, sink, server.pid, port, args)
            finally:
                listener.cancel()
                keep_log(log_path, f"{target}-{mode}-{run}")


def keep_log(path: Path, name: str) -> None:
    """If the server wrote anything, copy it out of the temporary folder and say so."""
    logged = path.read_text(errors="replace").splitlines()
    if logged:
        kept = Path(tempfile.gettempdir()) / f"bench_pipeline-{name}.log"
        kept.write_text("\n".join(logged) + "\n")
        print(f"      the server logged {len(logged)} line(s), kept in {kept}; the last:")
        print(f"      {logged[-1][:200]}")


async def phases(
    target: str,
    mode: str,
    run: int,
    sink: Sink,
    pid: int,
    port: int,
    args: argparse.Namespace,
) -> Measurement:
    """The warm-up, then the measured phase, on running processes."""
    url = f"http://127.0.0.1:{port}/webhook"
    loop_args = {"concurrency": args.concurrency, "reply_timeout": args.reply_timeout}
    if args.warmup:
        sink.ledger = warm = Ledger()
        deadline = time.monotonic() + args.max_seconds
        users = max(args.concurrency, 128)
        await closed_loop(
            url, SECRET, warm, Messages("w", WARM_BASE), count=args.warmup, users=users,
            deadline=deadline, **loop_args,
        )  # fmt: skip
        await warm.settle(args.idle_timeout, deadline)
    await wait_idle(pid)
    sink.ledger = ledger = Ledger()
    messages = Messages("m", USERS_BASE, ordered_wamids=args.ordered_wamids)
    profile = None
    if args.profile:
        profile = Path(args.profile) / f"{target}-{mode}-{run}.speedscope.json"
    probe = speed_probe()
    with profiler(pid, profile):
        cpu0, sink0, gen0 = cpu_seconds(pid), cpu_seconds(sink.proc.pid), time.process_time()
        busy0 = machine_busy()
        start = time.monotonic()
        deadline = start + args.max_seconds
        ack_rate = 0.0
        if mode == "burst":
            acked_at = await burst(
                url, SECRET, ledger, messages, count=args.messages, users=args.users,
                concurrency=args.concurrency, deadline=deadline,
            )  # fmt: skip
            ack_rate = ledger.acked / (acked_at - start)
        else:
            await closed_loop(
                url, SECRET, ledger, messages, count=args.messages, users=args.users,
                deadline=deadline, **loop_args,
            )  # fmt: skip
        await ledger.settle(args.idle_timeout, deadline)
        wall = time.monotonic() - start
        sink_cpu, gen_cpu = cpu_seconds(sink.proc.pid) - sink0, time.process_time() - gen0
        server_cpu, busy = cpu_seconds(pid) - cpu0, machine_busy() - busy0
        await asyncio.sleep(args.linger)  # a late duplicate still counts
        await wait_idle(pid)
        cpu = cpu_seconds(pid) - cpu0
    answered = ledger.answered
    return Measurement(
        target=target,
        mode=mode,
        run=run,
        probe_ms=probe,
        rate=answered / (ledger.last_answer_at - start) if answered else 0.0,
        ack_rate=ack_rate,
        p50=ledger.percentile(50),
        p99=ledger.percentile(99),
        cpu_ms=cpu * 1000 / answered if answered else math.nan,
        answered=answered,
        missing=ledger.missing,
        duplicates=ledger.duplicates,
        out_of_order=ledger.out_of_order,
        unexpected=ledger.unexpected,
        refused=dict(ledger.refused),
        server_share=server_cpu / wall,
        sink_share=sink_cpu / wall,
        gen_share=gen_cpu / wall,
        others_share=max(0.0, busy - server_cpu - sink_cpu - gen_cpu) / wall,
    )


def ratio(bot: float, floor: float) -> float:
    """bot / floor, NaN when either is missing."""
    return bot / floor if floor and not math.isnan(floor) else math.nan


class Results:
    """The phases measured, and the comparisons the table makes of them."""

    def __init__(self, results: list[Measurement]) -> None:
        self.results = results

    def med(self, target: str, mode: str, attr: str) -> float:
        """The median of ``attr`` over the runs of ``target`` in ``mode``."""
        values = [getattr(m, attr) for m in self.of(target, mode)]
        return statistics.median(values) if values else math.nan

    def of(self, target: str, mode: str) -> list[Measurement]:
        return [m for m in self.results if (m.target, m.mode) == (target, mode)]

    def paired(self, num: str, den: str, mode: str, attr: str) -> list[float]:
        """``num``'s ``attr`` over ``den``'s, run by run (each pair measured minutes apart)."""
        dens = {m.run: getattr(m, attr) for m in self.of(den, mode)}
        pairs = [ratio(getattr(m, attr), dens[m.run]) for m in self.of(num, mode) if m.run in dens]
        return [r for r in pairs if not math.isnan(r)]

    def ratio(self, num: str, den: str, mode: str, attr: str) -> float:
        """The median of the runs' paired ratios (the machine's speed drifts between runs
        more than between the phases of one run); the ratio of medians if none pair."""
        pairs = self.paired(num, den, mode, attr)
        if pairs:
            return statistics.median(pairs)
        return ratio(self.med(num, mode, attr), self.med(den, mode, attr))

    def spread(self, num: str, den: str, mode: str, attr: str) -> str:
        pairs = self.paired(num, den, mode, attr)
        return f"{min(pairs):.2f}-{max(pairs):.2f}" if len(pairs) > 1 else "-"


def table(measured: list[Measurement], runs: int) -> str:
    """The floor/bot comparison, one row per mode, against the product's bar."""
    results = Results(measured)

    def counts(target: str, mode: str) -> str:
        rows = results.of(target, mode)
        if not rows:
            return "-"
        return "/".join(
            str(sum(getattr(m, a) for m in rows)) for a in ("missing", "duplicates", "out_of_order")
        )

    def verdict(ok: bool, value: float) -> str:
        return "  n/a" if math.isnan(value) else (" pass" if ok else " FAIL")

    head = (
        f"{'mode':<10}|{'floor msg/s':>12}{'bot msg/s':>10}{'ratio':>7}{'':>5} |"
        f"{'e2e p50 ms: floor':>18}{'bot':>8}{'ratio':>7}{'':>5} |"
        f"{'CPU ms/msg: floor':>18}{'bot':>7}{'ratio':>7}{'':>5} |"
        f"{'miss/dup/ooo: floor':>20}{'bot':>10}"
    )
    lines = [head, "-" * len(head)]
    spreads = []
    for mode in MODES:
        if not any(m.mode == mode for m in measured):
            continue
        rf, rb = results.med("floor", mode, "rate"), results.med("bot", mode, "rate")
        lf, lb = results.med("floor", mode, "p50") * 1e3, results.med("bot", mode, "p50") * 1e3
        cf, cb = results.med("floor", mode, "cpu_ms"), results.med("bot", mode, "cpu_ms")
        rate, lat, cpu = (results.ratio("bot", "floor", mode, a) for a in ("rate", "p50", "cpu_ms"))
        bot = results.of("bot", mode)
        complete = all(m.missing == m.duplicates == 0 for m in bot)
        in_order = all(m.out_of_order == 0 for m in bot)
        rate_ok = rate >= 0.6 and (mode != "burst" or (complete and in_order))
        lat_verdict = verdict(lat <= 2, lat) if mode == "sustained" else "     "
        lines.append(
            f"{mode:<10}|{rf:>12,.0f}{rb:>10,.0f}{rate:>7.2f}{verdict(rate_ok, rate)} |"
            f"{lf:>18.1f}{lb:>8.1f}{lat:>7.2f}{lat_verdict} |"
            f"{cf:>18.3f}{cb:>7.3f}{cpu:>7.2f}{verdict(cpu <= 2, cpu)} |"
            f"{counts('floor', mode):>20}{counts('bot', mode):>10}"
        )
        spreads.append(
            f"{mode}: rate {results.spread('bot', 'floor', mode, 'rate')}, p50"
            f" {results.spread('bot', 'floor', mode, 'p50')}, CPU"
            f" {results.spread('bot', 'floor', mode, 'cpu_ms')}"
        )
    lines.extend(durable_lines(results))
    lines.append(
        f"ratios: medians over {runs} run(s) of each run's bot/floor (columns: medians);"
        " miss/dup/ooo summed. Bar: burst rate >= 0.6x with every reply exactly once and in"
        " order; sustained rate >= 0.6x and p50 <= 2x; CPU per message <= 2x."
    )
    if runs > 1:
        lines.append("range of the runs' ratios: " + "; ".join(spreads))
    probes = [m.probe_ms for m in measured]
    if probes:
        drift = max(probes) / min(probes) - 1
        lines.append(
            f"speed probe {min(probes):.1f}-{max(probes):.1f} ms over the phases: the machine's"
            f" speed drifted by {drift:.0%}"
            + (" (phases ran at different speeds; run again)" if drift > 0.15 else "")
        )
    noisiest = max((m.others_share for m in measured), default=0.0)
    lines.append(
        f"Other processes on the machine used up to {noisiest:.2f} of its {os.cpu_count()}"
        " cores during a phase"
        + (" (the comparison is noisy; run again)" if noisiest > 0.2 else "")
    )
    return "\n".join(lines)


def durable_lines(results: Results) -> list[str]:
    """Where the durable floor stands between the floor and the bot, per mode."""
    lines = []
    for mode in MODES:
        if not results.of("durable", mode):
            continue
        rate, cpu = results.med("durable", mode, "rate"), results.med("durable", mode, "cpu_ms")
        lines.append(
            f"{mode:<10}| durable floor {rate:,.0f} msg/s ="
            f" {results.ratio('durable', 'floor', mode, 'rate'):.2f}x the floor, CPU"
            f" {cpu:.3f} ms = {results.ratio('durable', 'floor', mode, 'cpu_ms'):.2f}x; the bot"
            f" does {results.ratio('bot', 'durable', mode, 'rate'):.2f}x its rate at"
            f" {results.ratio('bot', 'durable', mode, 'cpu_ms'):.2f}x its CPU"
        )
    return lines


def source(folder: Path) -> str:
    """Which code ``python -m bot`` runs in ``folder``: its commit and uncommitted bot/ files."""
    git = ["git", "-C", str(folder)]
    head = subprocess.run([*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    if head.returncode:
        return f"{folder} (not a git checkout)"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "bot"], capture_output=True, text=True
    ).stdout.splitlines()
    changes = f", {len(dirty)} uncommitted change(s) in bot/" if dirty else ", bot/ clean"
    return f"{folder}: {head.stdout.strip()[:70]}{changes}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="per measured phase")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64, help="connections / in flight")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", choices=TARGETS, help="measure one server only")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--warmup", type=int, default=500, help="closed-loop messages first")
    parser.add_argument("--reply-timeout", type=float, default=15.0, help="sustained, seconds")
    parser.add_argument("--idle-timeout", type=float, default=15.0, help="no reply for so long")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="cap of one phase")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each phase, wait up to so many seconds for other processes to go idle",
    )
    parser.add_argument("--linger", type=float, default=0.5, help="wait for late duplicates")
    parser.add_argument(
        "--ordered-wamids",
        action="store_true",
        help="wamids that sort in sending order (Meta's are opaque): tells a tie-break on "
        "equal timestamps from other reordering",
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="DIR",
        help="py-spy records each server's measured phases here (see bench/profile_top.py)",
    )
    parser.add_argument(
        "--bot-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the bot's event loop (server.event_loop; auto: uvloop, as `bot run` does)",
    )
    parser.add_argument(
        "--floor-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the floors' event loop (asyncio: a bare aiohttp bot's, the bar's reference)",
    )
    parser.add_argument(
        "--bot-src",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="run `python -m bot` from this checkout (e.g. `git archive HEAD | tar -x -C DIR`)"
        " instead of this working tree",
    )
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    targets = [args.only] if args.only else list(TARGETS)
    print(
        f"{args.messages:,} messages per phase, {args.users:,} users, {args.concurrency}"
        f" connections, warm-up {args.warmup}, {os.cpu_count()} CPUs, wamids"
        f" {'ordered' if args.ordered_wamids else 'opaque'}"
    )
    print(f"bot from {source(args.bot_src)}")
    print(f"event loops: bot {args.bot_loop}, floors {args.floor_loop}")
    results: list[Measurement] = []
    failed: list[str] = []
    for run in range(1, args.runs + 1):
        for mode in args.modes:
            turn = (run - 1) % len(targets)  # who goes first rotates: no target always runs last
            for target in targets[turn:] + targets[:turn]:
                try:
                    result = await measure(target, mode, run, args)
                except (OSError, RuntimeError, TimeoutError) as exc:
                    failed.append(f"run {run}: {target} {mode}: {type(exc).__name__}: {exc}")
                    print(f"run {run}: {target:>7} {mode:<9} FAILED: {type(exc).__name__}: {exc}")
                    continue
                print(f"run {run}: {result.line()}", flush=True)
                results.append(result)
    print()
    print(table(results, args.runs))
    if failed:
        print(f"{len(failed)} phase(s) failed and are not in the table:", *failed, sep="\n  ")


if __name__ == "__main__":
    asyncio.run(main())
