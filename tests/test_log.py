"""Logger names: every module of ``bot`` logs as ``windowbot.<module>``."""

from __future__ import annotations

import importlib
import pkgutil

import structlog

import bot
from bot.log import logger_name


class TestLoggerNames:
    def test_every_module_logger_follows_the_scheme(self) -> None:
        """Each module-level ``log`` is named windowbot.<its top-level module under bot>."""
        seen = {}
        for info in pkgutil.walk_packages(bot.__path__, "bot."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            log = getattr(module, "log", None)
            if isinstance(log, structlog._config.BoundLoggerLazyProxy):
                seen[info.name] = log._logger_factory_args
        assert {"bot.cli", "bot.dispatcher", "bot.engine.engine", "bot.runtime"} <= set(seen)
        wrong = {m: a for m, a in seen.items() if a != (logger_name(m),)}
        assert wrong == {}

    def test_the_scheme(self) -> None:
        """A subpackage's modules share its name; a private module drops the underscore."""
        assert logger_name("bot.sender") == "windowbot.sender"
        assert logger_name("bot.engine._on_error") == "windowbot.engine"
        assert logger_name("bot._fake_cloud") == "windowbot.fake_cloud"
