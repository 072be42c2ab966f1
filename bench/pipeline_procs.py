"""Processes and CPU accounting for ``bench/bench_pipeline.py``.

Children are started with :func:`spawned` (always stopped at the end of the block), CPU is
read from ``/proc``: a process's utime + stime (all its threads) and the machine's busy time,
and :class:`Sink` listens to the reply sink's report stream.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline_load import Ledger

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    """CPU seconds every CPU of the machine spent busy (not idle, not waiting for I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK  # guest time is in user already


def speed_probe(rounds: int = 3) -> float:
    """Milliseconds of CPU a fixed pure-Python loop takes here now (the best of ``rounds``).

    A virtual machine's speed drifts with its neighbours' load, unseen from inside (the
    same loop has taken 290 to 505 ms in consecutive runs on one machine): a phase measured
    while the machine was slow looks slow, whatever ran in it. The probe before each phase
    shows the drift, so a comparison between phases run at different speeds can be told.
    """
    best = math.inf
    for _ in range(rounds):
        start, total = time.process_time(), 0
        for i in range(200_000):
            total += i
        best = min(best, time.process_time() - start)
    return best * 1000


async def machine_quiet(limit: float, threshold: float = 0.15) -> bool:
    """Wait up to ``limit`` seconds for a second in which the machine used < ``threshold`` cores.

    Other work on the machine (a test suite, say) takes CPU from whichever server is being
    measured; starting each phase on a quiet machine keeps floor and bot comparable.
    """
    end = time.monotonic() + limit
    while True:
        before = machine_busy()
        await asyncio.sleep(1.0)
        if machine_busy() - before < threshold:
            return True
        if time.monotonic() > end:
            return False


async def wait_idle(pid: int, window: float = 0.2, limit: float = 3.0) -> None:
    """Wait until process ``pid`` used no CPU for ``window`` seconds (at most ``limit``)."""
    end, last = time.monotonic() + limit, cpu_seconds(pid)
    while time.monotonic() < end:
        await asyncio.sleep(window)
        now = cpu_seconds(pid)
        if now == last:
            return
        last = now


@contextmanager
def spawned(cmd: list[str], cwd: Path = ROOT, **popen: object) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that is terminated (killed if it lingers) however the block ends."""
    proc = subprocess.Popen(cmd, cwd=cwd, **popen)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Sink:
    """The reply sink's process and the stream it reports arrivals on."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, sock: socket.socket) -> None:
        self.proc, self.url, self._sock = proc, f"http://127.0.0.1:{port}", sock
        self.ledger = Ledger()
        self.ready = asyncio.Event()

    async def listen(self) -> None:
        """Wait for ``ready``, then feed every reported arrival to the current ledger."""
        reader, writer = await asyncio.open_connection(sock=self._sock)
        try:
            line = await asyncio.wait_for(reader.readline(), 20)
            if line != b"ready\n":
                raise RuntimeError(f"the sink did not start: {line!r}")
            self.ready.set()
            rest = b""
            while chunk := await reader.read(1 << 16):
                *lines, rest = (rest + chunk).split(b"\n")
                ledger = self.ledger
                for report in lines:
                    text, _, at = report.rpartition(b"\t")
                    ledger.arrived(text.decode(), float(at))
        finally:
            writer.close()


@contextmanager
def profiler(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy records process ``pid`` during the block into ``out`` (speedscope, by thread)."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--format",
        "speedscope",
        "--threads",
        "--rate",
        "400",
    ]
    with spawned([*cmd, "--output", str(out)], stdout=subprocess.DEVNULL) as spy:
        time.sleep(0.5)  # let py-spy attach before the load starts
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    print(f"      py-spy profile: {out}")
