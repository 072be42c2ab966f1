"""Configuration loading (bot.config): TOML, environment, defaults, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import _loop
from bot.config import load_config
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "windowbot.toml"
    path.write_text(text, encoding="utf-8")
    return path


class TestLoad:
    def test_example_file_loads_with_documented_defaults(self) -> None:
        """config.example.toml is valid and matches the built-in defaults."""
        config = load_config(ROOT / "config.example.toml", environ={})
        defaults = load_config(None, environ={})
        assert config.whatsapp == defaults.whatsapp
        assert config.server == defaults.server
        assert config.workers == defaults.workers
        assert config.window.margin_seconds == defaults.window.margin_seconds

    def test_every_key_of_the_example_is_commented(self) -> None:
        """Each key = value line of the example file has a comment above it or its block."""
        lines = (ROOT / "config.example.toml").read_text().splitlines()
        for i, line in enumerate(lines):
            if "=" in line and not line.startswith("#") and not lines[i - 1].startswith("["):
                above = [x for x in lines[:i] if x.strip()]
                assert above[-1].startswith("#") or "=" in above[-1], line

    def test_example_names_every_environment_variable(self) -> None:
        """config.example.toml names each variable load_config reads (it once omitted
        BOT_LOG_FORMAT and BOT_CONFIG) and the record_only key."""
        from bot.config import ENVIRONMENT

        text = (ROOT / "config.example.toml").read_text()
        for var in (*ENVIRONMENT, "BOT_CONFIG"):
            assert var in text, var
        assert "record_only = false" in text

    def test_environment_overrides_file(self, tmp_path: Path) -> None:
        """Environment variables win over the file, and secrets come only from them."""
        path = write(
            tmp_path, '[store]\nurl = "sqlite:///a.db"\n[whatsapp]\napi_version = "v20.0"\n'
        )
        config = load_config(
            path,
            environ={
                "BOT_STORE_URL": "sqlite:///b.db",
                "WHATSAPP_TOKEN": "tok",
                "WHATSAPP_PHONE_NUMBER_ID": "123",
                "WHATSAPP_API_URL": "http://127.0.0.1:9",
            },
        )
        assert config.store.url == "sqlite:///b.db"
        assert config.whatsapp.api_version == "v20.0"
        assert (config.whatsapp.token, config.whatsapp.api_url) == ("tok", "http://127.0.0.1:9")
        assert not config.sandbox

    def test_no_token_means_sandbox(self) -> None:
        """Without WHATSAPP_TOKEN the bot is in sandbox mode."""
        assert load_config(None, environ={}).sandbox

    def test_relative_paths_are_relative_to_the_file(self, tmp_path: Path) -> None:
        """The config file's folder is the base for relative paths."""
        config = load_config(write(tmp_path, '[flows]\ndir = "myflows"\n'), environ={})
        assert config.base_dir == tmp_path

    def test_secrets_are_not_in_repr(self) -> None:
        """The token and secrets never show in a printed config."""
        config = load_config(
            None,
            environ={
                "WHATSAPP_TOKEN": "EAAG-secret",
                "WHATSAPP_APP_SECRET": "appsecret",
                "WHATSAPP_PHONE_NUMBER_ID": "1",
            },
        )
        assert "EAAG-secret" not in repr(config) and "appsecret" not in repr(config)


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("[server\nport = 1", "not valid TOML"),
            ("[serverr]\n", "unknown section [serverr]"),
            ("[server]\nprot = 80\n", "unknown key server.prot"),
            ('[server]\nport = "eighty"\n', "server.port must be a whole number, got 'eighty'"),
            ("[server]\nport = 70000\n", "server.port must be between 1 and 65535"),
            (
                '[store]\nurl = "postgres://x"\n',
                "store.url must start with sqlite:/// or mongodb://",
            ),
            ('[whatsapp]\ntoken = "x"\n', "set it in the environment as WHATSAPP_TOKEN"),
            ('[log]\nlevel = "loud"\n', "log.level must be one of"),
            ('[window.country_languages]\n"55" = 1\n', "window.country_languages must be a table"),
            ("[workers]\nconcurrency = 0\n", "workers.concurrency must be at least 1"),
            ("[store]\nretention_days = 3\n", "store.retention_days must be 0 (keep everything)"),
            (
                '[server]\nevent_loop = "tokio"\n',
                "server.event_loop must be auto, uvloop or asyncio, got 'tokio'",
            ),
        ],
    )
    def test_bad_file_names_file_and_key(self, tmp_path: Path, text: str, message: str) -> None:
        """Each bad value fails with one line naming the file, the key and what is expected."""
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        assert message in str(info.value) and str(path) in str(info.value)
        assert "\n" not in str(info.value)

    def test_bad_environment_value_names_the_variable(self) -> None:
        """A bad environment override names the variable it came from."""
        with pytest.raises(ConfigError, match=r"environment WHATSAPP_API_URL: whatsapp\.api_url"):
            load_config(None, environ={"WHATSAPP_API_URL": "graph.facebook.com"})

    def test_token_without_phone_number_id(self) -> None:
        """A token without a phone number id says which variable to set."""
        with pytest.raises(ConfigError, match="WHATSAPP_PHONE_NUMBER_ID"):
            load_config(None, environ={"WHATSAPP_TOKEN": "t"})

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config path that does not exist is named."""
        with pytest.raises(ConfigError, match="no such config file"):
            load_config(tmp_path / "nope.toml", environ={})

    @pytest.mark.parametrize(
        "url", ["mongodb://db.internal", "mongodb://u:p@h1,h2:27018/?replicaSet=rs0"]
    )
    def test_mongo_url_without_database_is_an_error(self, url: str) -> None:
        """A Mongo URL naming no database used to use 'windowbot' silently; now it says so."""
        with pytest.raises(ConfigError, match="names no database") as info:
            load_config(None, environ={"BOT_STORE_URL": url})
        assert "environment BOT_STORE_URL" in str(info.value) and ":p@" not in str(info.value)

    def test_mongo_url_with_database_is_accepted(self) -> None:
        """The database is the URL's path, before any options."""
        url = "mongodb://u:p@h1,h2:27018/bot?replicaSet=rs0"
        assert load_config(None, environ={"BOT_STORE_URL": url}).store.url == url

    def test_event_loop_without_uvloop(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a machine without uvloop (Windows), "uvloop" stops start-up saying how to get
        it, and "auto" runs on asyncio's loop."""
        monkeypatch.setattr(_loop, "uvloop_installed", lambda: False)
        with pytest.raises(ConfigError, match=r"server\.event_loop is uvloop but uvloop is not"):
            load_config(write(tmp_path, '[server]\nevent_loop = "uvloop"\n'), environ={})
        config = load_config(None, environ={"BOT_EVENT_LOOP": "auto"})
        assert _loop.loop_factory(config.server.event_loop) is None
        monkeypatch.undo()
        assert _loop.loop_factory("auto") is not None  # installed here: uvloop's
