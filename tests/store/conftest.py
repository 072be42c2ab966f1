"""The backends the store contract runs against, and the servers they need.

* ``sqlite``: a file in the test's tmp dir;
* ``mongo-nx``: one nx-27017 server per session, a fresh database per test, through
  :meth:`MongoStore.from_url` (PyMongo's async client);
* ``mongo-motor``: the same server, the store built on a motor database;
* ``mongo-real``: the MongoDB that ``BOT_TEST_MONGODB_URI`` names (a fresh database per
  test, dropped afterwards); only when that variable is set. CI sets it to a secantusdb
  server (``python -m tests.mongo_server secantusdb ...``, see ``.ci/run``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from bot.store.base import Store
from bot.store.mongo import MongoStore, mask_url
from tests.mongo_server import REAL_URI_ENV, running_nx_27017


@dataclass
class Backend:
    """How to build stores on one test's data: each :meth:`make` is a new, unopened store."""

    name: str
    make: Callable[[], Store]
    #: For Mongo backends: the server URL and the test's database name.
    url: str = ""
    database: str = ""
    cleanups: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def is_nx(self) -> bool:
        """Whether the server is the nx-27017 stand-in (see MONGODB.md for its deviations)."""
        return self.name in {"mongo-nx", "mongo-motor"}


def _mongo(name: str) -> Any:
    return pytest.param(name, marks=pytest.mark.mongo, id=name)


# Without the variable "mongo-real" is left out rather than skipped: one skip line per test
# would bury every other line of ``-ra``.
REAL = ["mongo-real"] if os.environ.get(REAL_URI_ENV) else []
ALL_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    *map(_mongo, ["mongo-nx", "mongo-motor", *REAL]),
]
MONGO_BACKENDS = [_mongo(name) for name in ["mongo-nx", *REAL]]


@pytest.fixture(scope="session")
def nx_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One nx-27017 server for the whole session (started only if a Mongo test runs)."""
    with running_nx_27017(tmp_path_factory.mktemp("nx-27017")) as server:
        yield server.url


async def _build(request: pytest.FixtureRequest, name: str, tmp_path: Path) -> Backend:
    if name == "sqlite":
        try:
            from bot.store.sqlite import SQLiteStore
        except ImportError:
            pytest.skip("bot.store.sqlite is not written yet")
        path = tmp_path / "store.db"
        return Backend(name, lambda: SQLiteStore(path))
    url = os.environ[REAL_URI_ENV] if name == "mongo-real" else request.getfixturevalue("nx_url")
    database = f"windowbot_test_{uuid.uuid4().hex[:12]}"
    if name == "mongo-motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        def make() -> Store:
            client: Any = AsyncIOMotorClient(url, serverSelectionTimeoutMS=5000)
            return MongoStore(client[database], client=client, description=f"motor {mask_url(url)}")

    else:

        def make() -> Store:
            return MongoStore.from_url(url, database=database)

    backend = Backend(name, make, url=url, database=database)

    async def drop() -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
        try:
            await client.drop_database(database)
        finally:
            await client.close()

    backend.cleanups.append(drop)
    return backend


@pytest.fixture(params=ALL_BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Every backend of the contract, on data of this test only."""
    built = await _build(request, request.param, tmp_path)
    yield built
    for cleanup in built.cleanups:
        await cleanup()


@pytest.fixture(params=MONGO_BACKENDS)
async def mongo_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The Mongo backends built through :meth:`MongoStore.from_url`."""
    built = await _build(request, request.param, tmp_path)
    yield built
    for cleanup in built.cleanups:
        await cleanup()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An open store on a fresh, empty database of the parametrized backend."""
    opened = backend.make()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def mongo_store(mongo_backend: Backend) -> AsyncIterator[MongoStore]:
    """An open Mongo store on a fresh database."""
    opened = mongo_backend.make()
    assert isinstance(opened, MongoStore)
    await opened.open()
    yield opened
    await opened.close()
