"""Start MongoDB wire-protocol stand-ins for tests: nx-27017 and secantusdb.

Both are installed with the test extras and speak MongoDB's wire protocol, so the Mongo store
is tested through the real driver over a real socket. See ``/work/shared/MONGODB.md`` for
where each differs from MongoDB.

* ``nx-27017`` (SQLite-backed, fast) runs the Mongo suite on every ``pytest``.
* ``secantusdb`` (WiredTiger-backed, slower, much closer to MongoDB) is what CI points
  ``BOT_TEST_MONGODB_URI`` at::

      python -m tests.mongo_server secantusdb --data DIR -- python -m pytest -m mongo

  starts a server on a free loopback port, runs the command with ``BOT_TEST_MONGODB_URI``
  set to it and stops the server afterwards (also when the command failed or the launcher
  got SIGTERM). secantusdb presents itself as the primary of a one-node replica set named
  ``secantus`` that advertises the address it was started on; a plain
  ``mongodb://127.0.0.1:PORT`` URL works (PyMongo discovers the set), as do
  ``?directConnection=true`` and ``?replicaSet=secantus`` (another set name never finds a
  server).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pymongo import MongoClient
from pymongo.errors import ConnectionFailure

#: The launcher the nx-27017 package installs next to this interpreter.
NX_27017 = Path(sys.executable).parent / "nx-27017"
#: The server script the secantusdb package installs next to this interpreter.
SECANTUSD = Path(sys.executable).parent / "secantusd-py"
#: Names a MongoDB (``mongodb://host:port``, no database) the Mongo tests also run against.
REAL_URI_ENV = "BOT_TEST_MONGODB_URI"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, database: str) -> str:
    """``url`` with its path set to ``database``, keeping its host list and query options."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass(frozen=True)
class MongoServer:
    """A running stand-in server process and the URL it answers on."""

    url: str
    process: subprocess.Popen[bytes]
    #: How long :meth:`stop` waits after the first SIGTERM before it kills the process.
    stop_timeout: float = 10.0
    #: Send SIGTERM again this often while the process runs on (None: once). nx-27017 exits
    #: from its SIGTERM handler with ``sys.exit``, which is lost when the signal lands in a
    #: weakref callback ("Exception ignored in: WeakSet._remove ... SystemExit: 0"); it
    #: then runs on until killed.
    term_every: float | None = None

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop in time); idempotent."""
        deadline = time.monotonic() + self.stop_timeout
        while self.process.poll() is None and (left := deadline - time.monotonic()) > 0:
            self.process.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=min(left, self.term_every or left))
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


#: The name the nx-27017 tests have always used.
NxServer = MongoServer


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
    with _running("nx-27017", command, url, log, start_timeout, term_every=1.0) as server:
        yield server


@contextmanager
def running_secantusdb(
    data_dir: Path, *, port: int = 0, start_timeout: float = 60.0
) -> Iterator[MongoServer]:
    """Run secantusdb on ``port`` (default: a free one) with its WiredTiger files in ``data_dir``.

    The server fsyncs its log on every commit (``--sync-on-commit``), so a journaled write
    (``j: true``, what :meth:`MongoStore.from_url` asks for) is on disk when acknowledged; it
    reads no config file but an empty one in ``data_dir`` (otherwise it would pick up
    ``./secantusd.toml`` or ``~/.secantus/secantusd.toml``). It answers a ping about 1 s after
    the start on this machine. Yields the server once it answers a ping; stops it on exit,
    also when the body raised.

    Raises:
        RuntimeError: the server exited or did not answer within ``start_timeout`` seconds;
            the message carries the end of its output.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = data_dir / "secantusd.toml"
    config.touch()
    log = data_dir / "secantusd.out"
    command = [
        str(SECANTUSD),
        "--config", str(config),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--storage-path", str(data_dir / "wiredtiger"),
        "--sync-on-commit",
    ]  # fmt: skip
    url = f"mongodb://127.0.0.1:{port}"
    # It closes WiredTiger on SIGTERM, which takes a few seconds: give it time to.
    with _running("secantusdb", command, url, log, start_timeout, stop_timeout=30.0) as server:
        yield server


@contextmanager
def _running(
    name: str,
    command: list[str],
    url: str,
    log: Path,
    start_timeout: float,
    *,
    stop_timeout: float = 10.0,
    term_every: float | None = None,
) -> Iterator[MongoServer]:
    """Start ``command`` (output to ``log``), wait for a ping at ``url``, stop it on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = MongoServer(url, proc, stop_timeout, term_every)
    try:
        _wait_until_ready(name, proc, url, log, start_timeout)
        yield server
    finally:
        server.stop()


def _wait_until_ready(
    name: str, proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float
) -> None:
    """Block until the server answers a ping; each try waits for the driver's own retry."""
    deadline = time.monotonic() + timeout
    client: MongoClient[dict[str, object]] = MongoClient(
        url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {_tail(log)}")
            try:
                client.admin.command("ping")
                return
            except ConnectionFailure:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} did not answer at {url} within {timeout} s: {_tail(log)}"
                    ) from None
    finally:
        client.close()


#: The Mongo servers the process-level tests run on, as test ids: a fresh nx-27017 per test,
#: and the server ``BOT_TEST_MONGODB_URI`` names when it is set.
MONGO_SERVER_NAMES = ["mongo-nx", *(["mongo-real"] if os.environ.get(REAL_URI_ENV) else [])]


@contextmanager
def mongo_database(name: str, data_dir: Path, prefix: str = "bot") -> Iterator[str]:
    """The URL of a fresh database on the server ``name`` (one of :data:`MONGO_SERVER_NAMES`).

    ``mongo-nx`` starts an nx-27017 in ``data_dir`` for the body and stops it afterwards;
    ``mongo-real`` uses a new database on ``BOT_TEST_MONGODB_URI``'s server and drops it
    afterwards.
    """
    database = f"{prefix}_{uuid.uuid4().hex[:12]}"
    if name == "mongo-nx":
        with running_nx_27017(data_dir) as server:
            yield with_database(server.url, database)
        return
    if name != "mongo-real":
        raise ValueError(f"unknown Mongo server {name!r}")
    url = os.environ[REAL_URI_ENV]
    try:
        yield with_database(url, database)
    finally:
        client: MongoClient[dict[str, object]] = MongoClient(url, serverSelectionTimeoutMS=10_000)
        try:
            client.drop_database(database)
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


SERVERS: dict[str, Callable[..., AbstractContextManager[MongoServer]]] = {
    "secantusdb": running_secantusdb,
    "nx-27017": running_nx_27017,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command with ``BOT_TEST_MONGODB_URI`` naming a stand-in server started for it.

    Returns the command's exit status (128 + N when signal N ended it); the server is stopped
    afterwards in every case. SIGTERM and SIGHUP are passed on to the command; Ctrl-C reaches
    it from the terminal directly.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tests.mongo_server",
        description="Start a MongoDB stand-in, run COMMAND against it, stop the server.",
    )
    parser.add_argument("server", choices=sorted(SERVERS))
    parser.add_argument("--data", type=Path, required=True, help="the server's data folder")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--start-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("command", nargs="+", help="run with BOT_TEST_MONGODB_URI set")
    args = parser.parse_args(argv)
    start = time.monotonic()
    options: dict[str, Any] = {"start_timeout": args.start_timeout}
    if args.server == "secantusdb":
        options["port"] = args.port
    elif args.port:
        parser.error("--port is only for secantusdb")
    with SERVERS[args.server](args.data, **options) as server:
        print(
            f"{args.server} answers at {server.url} after {time.monotonic() - start:.1f} s;"
            f" running {' '.join(args.command)}",
            file=sys.stderr,
            flush=True,
        )
        child = subprocess.Popen(args.command, env={**os.environ, REAL_URI_ENV: server.url})

        def forward(signum: int, _frame: object) -> None:
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGHUP, forward)
        signal.signal(signal.SIGINT, lambda _signum, _frame: None)
        try:
            status = child.wait()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main())
