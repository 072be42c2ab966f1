"""Secrets never printed: MongoDB URLs in descriptions, errors and log fields.

``bot.store._mongo_errors.mask_url`` names the store in every log line and error;
``bot.log._redact`` runs over every structlog event.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from bot.errors import ConfigError
from bot.log import _redact
from bot.store._mongo_errors import mask_url
from bot.store.mongo import MongoStore

# (URL, the secrets in it, what must still be shown)
URLS = [
    ("mongodb://user:s3c@retpw@host/db", ["s3c", "retpw"], "user:***@host/db"),
    ("mongodb://s3cretpw@host/db", ["s3cretpw"], "mongodb://***@host/db"),
    ("mongodb://:0nlyPa55@host/db", ["0nlyPa55"], "@host/db"),
    ("mongodb://bob:p%40ss%2Fw0rd@host/db", ["p%40ss", "w0rd", "p@ss"], "bob:***@host/db"),
    ("mongodb://bob:pa/ss?x@host/db", ["pa/ss", "ss?x"], "@host/db"),
    ("mongodb://bob:un#escaped@host/db", ["un#", "escaped"], "@host/db"),
    ("mongodb+srv://bob:srvPa55@cluster0.example.net/bot", ["srvPa55"], "cluster0.example.net"),
    (
        "mongodb://bob:multiPa55@db1:27017,db2:27017,db3/bot?replicaSet=rs0",
        ["multiPa55"],
        "@db1:27017,db2:27017,db3/bot?replicaSet=rs0",
    ),
    ("mongodb://bob:v6Pa55@[::1]:27017/bot", ["v6Pa55"], "@[::1]:27017/bot"),
    (
        "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:FwoGZ",
        ["FwoGZ"],
        "authMechanism=MONGODB-AWS&authMechanismProperties=***",
    ),
    (
        "mongodb://h/bot?tls=true&tlsCertificateKeyFilePassword=k3yPa55&w=1",
        ["k3yPa55"],
        "tls=true&tlsCertificateKeyFilePassword=***&w=1",
    ),
    ("mongodb://h/bot?password=optPa55", ["optPa55"], "h/bot?password=***"),
    ("mongodb://h/bot?apiToken=t0k;apiSecret=s3k;w=1", ["t0k", "s3k"], ";w=1"),
    ("mongodb://h/bot?x=1&private%5Fkey=pk1", ["pk1"], "x=1&"),
    ("mongodb://h/bot?authMechanismProperties=AWS%5FSESSION%5FTOKEN%3Aenc0", ["enc0"], "h/bot"),
]
IDS = [url.split("://")[1][:40] for url, _, _ in URLS]


class TestMaskUrl:
    @pytest.mark.parametrize(("url", "secrets", "kept"), URLS, ids=IDS)
    def test_no_part_of_a_secret_is_shown(self, url: str, secrets: list[str], kept: str) -> None:
        """Every credential and secret-looking option is masked; host and the rest are kept."""
        masked = mask_url(url)
        for secret in secrets:
            assert secret not in masked
        assert kept in masked

    @pytest.mark.parametrize(("url", "secrets", "kept"), URLS, ids=IDS)
    def test_urls_quoted_in_a_message_are_masked(
        self, url: str, secrets: list[str], kept: str
    ) -> None:
        """A driver error or a log message that quotes the URL shows it masked, the rest kept."""
        message = f"MongoDB at {url} is unavailable ({url}: timed out); check the URL"
        masked = mask_url(message)
        for secret in secrets:
            assert secret not in masked
        assert masked.startswith("MongoDB at ") and masked.endswith("; check the URL")
        assert masked.count(kept) == 2

    @pytest.mark.parametrize(
        "text",
        [
            "mongodb://db1:27017,db2:27017/bot?replicaSet=rs0&w=majority",
            "sqlite:////var/lib/windowbot/bot.db",
            "no URL at all: user@example.com",
        ],
    )
    def test_text_without_secrets_is_unchanged(self, text: str) -> None:
        """URLs without credentials or secret options, and plain text, are left alone."""
        assert mask_url(text) == text


class TestStoreDescription:
    @pytest.mark.parametrize(
        ("url", "secrets"),
        [(url, secrets) for url, secrets, _ in URLS],
        ids=IDS,
    )
    async def test_never_in_description_or_error(self, url: str, secrets: list[str]) -> None:
        """The store's description, or the error for a URL PyMongo refuses, hides every secret."""
        with warnings.catch_warnings(record=True) as warned:  # PyMongo: "Unknown option."
            warnings.simplefilter("always")
            try:
                store = MongoStore.from_url(url)
            except ConfigError as exc:
                shown = str(exc)
            else:
                try:
                    shown = store.description
                finally:
                    await store.close()
        shown += " ".join(str(w.message) for w in warned)
        for secret in secrets:
            assert secret not in shown


class TestRedact:
    @pytest.mark.parametrize(("url", "secrets", "kept"), URLS, ids=IDS)
    def test_url_credentials_in_any_field_are_masked(
        self, url: str, secrets: list[str], kept: str
    ) -> None:
        """Whatever field a URL with credentials lands in, the logged event has them masked."""
        event: dict[str, Any] = {
            "event": f"connecting to {url}",
            "store": url,
            "error": f"cannot reach {url}: refused",
            "attempt": 3,
        }
        line = repr(_redact(None, "info", event))
        for secret in secrets:
            assert secret not in line
        assert event["attempt"] == 3 and kept in event["store"]

    def test_secret_named_fields_and_plain_fields(self) -> None:
        """Secret-named fields are replaced whole; ordinary fields are left as they were."""
        event: dict[str, Any] = {"event": "x", "token": "EAAG123", "note": "a@b, c://d"}
        assert _redact(None, "info", event) == {"event": "x", "token": "***", "note": "a@b, c://d"}
