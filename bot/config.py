"""Configuration: frozen dataclasses built once from TOML, then the environment, then defaults.

Secrets (the access token, the app secret, the verify token) come only from the
environment. A missing or invalid value raises :class:`~bot.errors.ConfigError` naming the
key, the file and what is expected, so ``bot run`` can stop with one clear line.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.errors import ConfigError

DEFAULT_COUNTRY_LANGUAGES: Mapping[str, str] = {
    "1": "en_US",
    "44": "en_GB",
    "52": "es_MX",
    "54": "es_AR",
    "55": "pt_BR",
    "34": "es_ES",
    "351": "pt_PT",
    "49": "de",
    "33": "fr",
    "39": "it",
    "91": "en",
}

#: Environment variable → (section, key) it overrides.
ENVIRONMENT: Mapping[str, tuple[str, str]] = {
    "WHATSAPP_TOKEN": ("whatsapp", "token"),
    "WHATSAPP_APP_SECRET": ("whatsapp", "app_secret"),
    "WHATSAPP_VERIFY_TOKEN": ("whatsapp", "verify_token"),
    "WHATSAPP_PHONE_NUMBER_ID": ("whatsapp", "phone_number_id"),
    "WHATSAPP_API_URL": ("whatsapp", "api_url"),
    "WHATSAPP_API_VERSION": ("whatsapp", "api_version"),
    "WHATSAPP_WABA_ID": ("whatsapp", "waba_id"),
    "BOT_STORE_URL": ("store", "url"),
    "BOT_FLOWS_DIR": ("flows", "dir"),
    "BOT_RECORD_ONLY": ("flows", "record_only"),
    "BOT_LOG_LEVEL": ("log", "level"),
    "BOT_LOG_FORMAT": ("log", "format"),
    "BOT_SANDBOX": ("server", "sandbox"),
    "BOT_EVENT_LOOP": ("server", "event_loop"),
    "BOT_SEND_RATE": ("whatsapp", "send_rate"),
}
SECRETS = frozenset({"token", "app_secret", "verify_token"})


@dataclass(frozen=True, slots=True)
class WhatsAppConfig:
    """How to reach the Cloud API and check Meta's webhooks."""

    token: str = field(default="", repr=False)
    app_secret: str = field(default="", repr=False)
    verify_token: str = field(default="", repr=False)
    phone_number_id: str = ""
    waba_id: str = ""  # the WhatsApp Business Account: `bot templates pull/push`
    api_url: str = "https://graph.facebook.com"
    api_version: str = "v23.0"
    send_rate: float = 80.0
    timeout: float = 10.0
    max_retries: int = 5


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The webhook server."""

    host: str = "0.0.0.0"
    port: int = 8080
    path: str = "/webhook"
    sandbox: bool = False
    max_body_bytes: int = 3 * 1024 * 1024
    store_timeout_seconds: float = 5.0
    event_loop: str = "auto"  # auto (uvloop where installed), uvloop, asyncio: bot/_loop.py


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where state lives."""

    url: str = "sqlite:///windowbot.db"
    retention_days: float = 30.0


@dataclass(frozen=True, slots=True)
class FlowsConfig:
    """Where the flow files are."""

    dir: Path = Path("flows")
    default_flow: str = ""  # "": _project.yaml's default_flow, else "welcome"
    record_only: bool = False  # store every message, answer none (no flows are loaded)


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """The customer-service window and template language choice."""

    margin_seconds: float = 300.0
    default_language: str = "en_US"
    country_languages: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_COUNTRY_LANGUAGES)
    )


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    """The workers that drain the inbox and the outbox."""

    concurrency: int = 512
    lease_seconds: float = 15.0
    sweep_seconds: float = 2.0
    send_grace_seconds: float = 60.0
    clock_skew_seconds: float = 2.0
    max_handling_attempts: int = 3


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """Reminder jobs: their dispatcher, quiet hours, time zones and Meta's messaging limit."""

    enabled: bool = True
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    batch: int = 100
    quiet_hours: str = ""
    default_timezone: str = "UTC"
    messaging_limit: int = 0
    country_timezones: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging."""

    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``bot`` needs, built once by :func:`load_config`."""

    whatsapp: WhatsAppConfig = field(default_factory=WhatsAppConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    log: LogConfig = field(default_factory=LogConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    source: str = "defaults"
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def sandbox(self) -> bool:
        """No access token: nothing is sent to Meta (replies are logged instead)."""
        return self.server.sandbox or not self.whatsapp.token


_SECTIONS: Mapping[str, type[Any]] = {
    "whatsapp": WhatsAppConfig,
    "server": ServerConfig,
    "store": StoreConfig,
    "flows": FlowsConfig,
    "window": WindowConfig,
    "workers": WorkersConfig,
    "log": LogConfig,
    "jobs": JobsConfig,
}
_LEVELS = ("debug", "info", "warning", "error")
#: Keys earlier versions had, and what to do about them.
_REMOVED: Mapping[str, Mapping[str, str]] = {
    "workers": {
        "order_window_seconds": "was removed: messages are handled in arrival order without "
        "waiting (see README, How a message travels); delete the line",
    },
}


def load_config(
    path: str | Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Load ``path`` (TOML; optional), apply environment overrides, validate.

    Without ``path``, ``./windowbot.toml`` is read if it exists, else the defaults are used.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "defaults"
    file: Path | None = Path(path) if path is not None else None
    if file is None and Path("windowbot.toml").is_file():
        file = Path("windowbot.toml")
    if file is not None:
        source = str(file)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such config file (copy config.example.toml)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    base_dir = file.resolve().parent if file is not None else Path.cwd()
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        for key in value:
            if key in SECRETS and name == "whatsapp":
                raise ConfigError(
                    f"{source}: whatsapp.{key} must not be in a file; "
                    f"set it in the environment as WHATSAPP_{key.upper()}"
                )
        sections[name] = dict(value)
    for var, (section, key) in ENVIRONMENT.items():
        if var in env and env[var] != "":
            sections.setdefault(section, {})[key] = env[var]
    built = {
        name: _build(cls, sections.get(name, {}), name, source, env)
        for name, cls in _SECTIONS.items()
    }
    config = Config(**built, source=source, base_dir=base_dir)
    _validate(config, source, env)
    return config


def _build(cls: type[Any], values: dict[str, Any], section: str, source: str, env: Any) -> Any:
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{section}.{key}"
        origin = _origin(section, key, source, env)
        if key in _REMOVED.get(section, {}):
            raise ConfigError(f"{origin}: {where} {_REMOVED[section][key]}")
        if not hasattr(defaults, key):
            known = ", ".join(f.name for f in cls.__dataclass_fields__.values())
            raise ConfigError(f"{origin}: unknown key {where} (known in [{section}]: {known})")
        kwargs[key] = _coerce(getattr(defaults, key), value, where, origin)
    return cls(**kwargs)


def _origin(section: str, key: str, source: str, env: Any) -> str:
    for var, target in ENVIRONMENT.items():
        if target == (section, key) and var in env and env[var] != "":
            return f"environment {var}"
    return source


def _coerce(default: Any, value: Any, where: str, origin: str) -> Any:
    def bad(expected: str) -> ConfigError:
        shown = "<secret>" if where.split(".")[-1] in SECRETS else repr(value)
        return ConfigError(f"{origin}: {where} must be {expected}, got {shown}")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise bad("true or false")
    if isinstance(default, int):
        try:
            if isinstance(value, (float, bool)):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise bad("a whole number") from None
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise bad("a path")
        return Path(value)
    if isinstance(default, Mapping):
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise bad('a table of strings, e.g. { "55" = "pt_BR" }')
        return dict(value)
    if not isinstance(value, str):
        raise bad("a string")
    return value


def _validate(config: Config, source: str, env: Mapping[str, str]) -> None:
    def fail(key: str, message: str) -> None:
        section, name = key.split(".")
        origin = _origin(section, name, source, env)
        raise ConfigError(f"{origin}: {key} {message}")

    if not 0 < config.server.port < 65536:
        fail("server.port", f"must be between 1 and 65535, got {config.server.port}")
    if not config.server.path.startswith("/"):
        fail("server.path", f"must start with '/', got {config.server.path!r}")
    if config.server.max_body_bytes <= 0:
        fail("server.max_body_bytes", "must be positive")
    if not config.whatsapp.api_url.startswith(("http://", "https://")):
        fail("whatsapp.api_url", f"must be an http(s) URL, got {config.whatsapp.api_url!r}")
    if not config.whatsapp.api_version.startswith("v"):
        fail("whatsapp.api_version", f"must look like 'v23.0', got {config.whatsapp.api_version!r}")
    if config.whatsapp.send_rate < 0:
        fail("whatsapp.send_rate", "must be >= 0 (0 means unlimited)")
    if config.whatsapp.token and not config.whatsapp.phone_number_id:
        fail(
            "whatsapp.phone_number_id",
            "is required when WHATSAPP_TOKEN is set "
            "(set WHATSAPP_PHONE_NUMBER_ID or [whatsapp] phone_number_id)",
        )
    if not config.store.url.startswith(("sqlite:///", "mongodb://", "mongodb+srv://")):
        fail(
            "store.url",
            "must start with sqlite:/// or mongodb:// "
            f"(got {config.store.url.split('://')[0]}://…)",
        )
    if config.store.url.startswith("mongodb") and not _mongo_database(config.store.url):
        fail(
            "store.url",
            "names no database: add it as the URL's path, as in "
            "mongodb://host:27017/windowbot (before any ?options)",
        )
    if config.store.retention_days and config.store.retention_days < 8:
        fail(
            "store.retention_days",
            "must be 0 (keep everything) or at least 8: Meta retries a delivery for up to "
            "7 days and a purged message would no longer be recognised, "
            f"got {config.store.retention_days}",
        )
    if config.log.level.lower() not in _LEVELS:
        fail("log.level", f"must be one of {', '.join(_LEVELS)}, got {config.log.level!r}")
    if config.log.format not in ("auto", "json", "console"):
        fail("log.format", f"must be auto, json or console, got {config.log.format!r}")
    if config.workers.concurrency < 1:
        fail("workers.concurrency", "must be at least 1")
    if config.workers.send_grace_seconds < 0 or config.workers.clock_skew_seconds < 0:
        fail("workers.send_grace_seconds", "and workers.clock_skew_seconds must be >= 0")
    if config.workers.max_handling_attempts < 1:
        fail("workers.max_handling_attempts", "must be at least 1")
    if config.server.store_timeout_seconds <= 0:
        fail("server.store_timeout_seconds", "must be positive")
    _validate_event_loop(config.server.event_loop, fail)
    if config.workers.lease_seconds <= 0 or config.workers.sweep_seconds <= 0:
        fail("workers.lease_seconds", "and workers.sweep_seconds must be positive")
    if config.window.margin_seconds < 0:
        fail("window.margin_seconds", "must be >= 0")
    _validate_jobs(config.jobs, fail)


def _validate_event_loop(choice: str, fail: Any) -> None:
    from bot._loop import CHOICES, uvloop_installed

    if choice not in CHOICES:
        fail("server.event_loop", f"must be auto, uvloop or asyncio, got {choice!r}")
    if choice == "uvloop" and not uvloop_installed():
        fail(
            "server.event_loop",
            "is uvloop but uvloop is not installed: pip install uvloop (Linux and macOS), "
            'or set it to "auto"',
        )


def _validate_jobs(jobs: JobsConfig, fail: Any) -> None:
    from bot._when import parse_quiet, zone
    from bot.errors import ScheduleError

    if jobs.messaging_limit not in (0, 250, 2000, 10_000, 100_000):
        fail(
            "jobs.messaging_limit",
            "must be your number's messaging limit tier: 250, 2000, 10000, 100000, or 0 for "
            f"unlimited, got {jobs.messaging_limit}",
        )
    if jobs.lease_seconds <= 0 or jobs.poll_seconds <= 0 or jobs.batch < 1:
        fail("jobs.lease_seconds", "and jobs.poll_seconds must be positive, jobs.batch >= 1")
    try:
        parse_quiet(jobs.quiet_hours)
    except ScheduleError as exc:
        fail("jobs.quiet_hours", f"is invalid: {exc}")
    for code, name in {"": jobs.default_timezone, **jobs.country_timezones}.items():
        try:
            zone(name)
        except ScheduleError as exc:
            if code:
                fail("jobs.country_timezones", f"has an invalid zone for {code}: {exc}")
            fail("jobs.default_timezone", f"is invalid: {exc}")


def _mongo_database(url: str) -> str:
    """The database a MongoDB URL names in its path ('' for none)."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    return rest.rpartition("@")[2].partition("/")[2]


def resolve(config: Config, path: Path) -> Path:
    """A path from the config, relative to the config file's folder."""
    return path if path.is_absolute() else config.base_dir / path
