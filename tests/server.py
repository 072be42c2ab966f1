"""Run ``python -m bot run`` as a real subprocess for end-to-end and crash tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a process log (``BOT_LOG_FORMAT=json``), parsed; a line still
    being written (the log is read while the process runs) is left out."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


class BotProcess:
    """``bot run`` on a free loopback port with the given environment."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        port: int | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.args = args
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "BOT_LOG_LEVEL": "info", "BOT_LOG_FORMAT": "json", **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, within: float = 30.0) -> BotProcess:
        """Start the process and wait until /healthz answers."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - a short, non-blocking spawn
                [
                    sys.executable,
                    "-m",
                    "bot",
                    "run",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"bot run exited: {self.log_path.read_text()[-2000:]}")
                try:
                    async with session.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(self.log_path.read_text()[-2000:])
                await asyncio.sleep(0.05)

    def errors(self, limit: int = 5) -> list[str]:
        """The first ``limit`` error lines of the process's log, for a failing assertion."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if any(e["level"] == "error" for e in log_events(line))]
        return [line[:500] for line in errors][:limit]

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no flush, like a power cut for the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def __aenter__(self) -> BotProcess:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
