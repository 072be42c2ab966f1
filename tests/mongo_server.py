"""Start an nx-27017 server (a MongoDB wire-protocol stand-in on SQLite) for tests.

nx-27017 is installed with the test extras; it speaks MongoDB's wire protocol, so the Mongo
store is tested through the real driver over a real socket. See ``/work/shared/MONGODB.md``
for where it differs from MongoDB.
"""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import ConnectionFailure

#: The launcher the nx-27017 package installs next to this interpreter.
NX_27017 = Path(sys.executable).parent / "nx-27017"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class NxServer:
    """A running nx-27017 process and the URL it answers on."""

    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop within 10 s); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


@contextmanager
def running_nx_27017(data_dir: Path, *, start_timeout: float = 30.0) -> Iterator[NxServer]:
    """Run nx-27017 on a free port with one file per database in ``data_dir``.

    Yields the server once it answers a ping; stops it on exit, also when the body raised.

    Raises:
        RuntimeError: the server exited or did not answer within ``start_timeout`` seconds;
            the message carries the end of its log.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = data_dir / "nx-27017.out"
    command = [
        str(NX_27017),
        "--data-dir", str(data_dir),
        "--host", "127.0.0.1",
        "-p", str(port),
        # Keep its files here: the defaults (/tmp/nx_27017.*) are shared by every run.
        "--log-file", str(data_dir / "nx-27017.log"),
        "--pid-file", str(data_dir / "nx-27017.pid"),
    ]  # fmt: skip
    url = f"mongodb://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = NxServer(url, proc)
    try:
        _wait_until_ready(proc, url, log, start_timeout)
        yield server
    finally:
        server.stop()


def _wait_until_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    """Block until the server answers a ping; each try waits for the driver's own retry."""
    deadline = time.monotonic() + timeout
    client: MongoClient[dict[str, object]] = MongoClient(
        url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nx-27017 exited with {proc.returncode}: {_tail(log)}")
            try:
                client.admin.command("ping")
                return
            except ConnectionFailure:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"nx-27017 did not answer at {url} within {timeout} s: {_tail(log)}"
                    ) from None
    finally:
        client.close()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no output)"


@contextmanager
def collecting_leaked_sockets() -> Iterator[None]:
    """Collect the sockets PyMongo's async driver leaks when a connection attempt fails.

    PyMongo 4.20 can leave such a socket unclosed (PYTHON-5867, mongodb/mongo-python-driver
    PR 2858); its ``ResourceWarning`` would otherwise fail whichever later test happens to run
    the garbage collector.
    """
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
