"""Fixtures shared by the whole suite: configs, a real SQLite store, a running app, Mongo."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.app import Components, create_app
from bot.config import Config, load_config
from bot.store.sqlite import SQLiteStore
from bot.testing import signed_request
from tests.mongo_server import MONGO_SERVER_NAMES, mongo_database

SECRET = "test-app-secret"
DATA = Path(__file__).parent / "data" / "webhooks"

AppClient = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[AppClient]]


def make_config(tmp_path: Path, **env: str) -> Config:
    """A config on a temp SQLite file with the test app secret, plus ``env`` overrides."""
    base = {
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": "verify-me",
        "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
        "BOT_FLOWS_DIR": str(tmp_path / "no-flows"),
    }
    return load_config(None, environ={**base, **env})


def signed(body: bytes | dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """Body bytes and the headers Meta would send with them, with the test app secret."""
    return signed_request(body, secret)


def recorded(name: str) -> bytes:
    """A recorded webhook payload from tests/data/webhooks."""
    return (DATA / name).read_bytes()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The default test config."""
    return make_config(tmp_path)


@pytest.fixture
async def store(config: Config) -> AsyncIterator[SQLiteStore]:
    """A second handle on the app's SQLite file, for looking at what was stored."""
    s = SQLiteStore(config.store.url[len("sqlite:///") :])
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def make_client(aiohttp_client: Callable[..., Awaitable[AppClient]], config: Config) -> MakeClient:
    """Start the app on a real loopback port with the given components (default: SQLite)."""

    async def make(cfg: Config | None = None, components: Components | None = None) -> AppClient:
        cfg = cfg or config
        comps = components or Components(store=SQLiteStore(cfg.store.url[len("sqlite:///") :]))
        return await aiohttp_client(create_app(cfg, comps))

    return make


@pytest.fixture(
    params=[pytest.param(name, marks=pytest.mark.mongo, id=name) for name in MONGO_SERVER_NAMES]
)
def mongo_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database's URL on each Mongo server: nx-27017, and BOT_TEST_MONGODB_URI's."""
    with mongo_database(request.param, tmp_path / "nx") as url:
        yield url


@pytest.fixture(autouse=True)
def _loggers_stay_reconfigurable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bot run`` caches its loggers for the life of the process; a test that runs it
    in-process must not, or every later test's ``capture_logs`` would see nothing."""
    import bot.cli
    from bot.log import configure_logging

    def uncached(*args: Any, cache: bool = False, **kwargs: Any) -> None:
        configure_logging(*args, **kwargs)

    monkeypatch.setattr(bot.cli, "configure_logging", uncached)
