"""``build_pipeline`` (bot._pipeline): the one place app, outbound and chat get their sender."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bot._pipeline import build_pipeline
from bot.sender import LogTransport
from bot.store.sqlite import SQLiteStore
from tests.conftest import make_config


def test_the_config_reaches_sender_and_dispatcher(tmp_path: Path) -> None:
    """Retries, send grace and the shared metrics come from the config, for every caller."""
    base = make_config(tmp_path)
    config = replace(
        base,
        whatsapp=replace(base.whatsapp, max_retries=2),
        workers=replace(base.workers, send_grace_seconds=7.0),
    )
    store = SQLiteStore(tmp_path / "bot.db")
    pipeline = build_pipeline(config, store, LogTransport())
    assert pipeline.sender is not None
    assert pipeline.sender.retry.max_attempts == 3 and pipeline.sender.grace == 7.0
    assert pipeline.dispatcher.drainer is pipeline.sender
    assert pipeline.dispatcher.metrics is pipeline.sender.metrics


def test_no_transport_leaves_replies_queued(tmp_path: Path) -> None:
    """Without a transport there is no sender: the dispatcher only records turns."""
    pipeline = build_pipeline(make_config(tmp_path), SQLiteStore(tmp_path / "bot.db"), None)
    assert pipeline.sender is None and pipeline.dispatcher.drainer is None
