"""Stores: where users, the inbox and the outbox live. Pick one by URL with :func:`open_store`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.errors import ConfigError
from bot.store.base import Store

if TYPE_CHECKING:
    from pathlib import Path


def store_from_url(url: str, *, base_dir: Path | None = None, timeout: float = 5.0) -> Store:
    """Build (not open) the store a URL names.

    ``sqlite:///relative/file.db`` (relative to ``base_dir``), ``sqlite:////abs/file.db``,
    or ``mongodb://`` / ``mongodb+srv://`` URLs (the database is the URL's path, default
    ``windowbot``). ``timeout``: seconds a SQLite write waits for another process's lock.
    """
    if url.startswith("sqlite:///"):
        from pathlib import Path

        from bot.store.sqlite import SQLiteStore

        path = Path(url[len("sqlite:///") :])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return SQLiteStore(path, busy_timeout=timeout)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from bot.store.mongo import MongoStore

        return MongoStore.from_url(url)
    raise ConfigError(
        f"store url {url.split('://')[0]}://… is not supported: "
        "use sqlite:///path/to/file.db or mongodb://host/dbname"
    )


__all__ = ["Store", "store_from_url"]
