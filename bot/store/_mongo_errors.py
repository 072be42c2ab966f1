"""How the MongoDB store reports driver errors: password-free URLs and one-line messages.

:func:`translate` turns PyMongo's exceptions into the store's own (:class:`StoreUnavailable`
when the server cannot be reached or refuses the credentials, :class:`StoreError` otherwise);
:func:`mask_url` hides the password and secret-looking options of a connection URL. Both keep
secrets and PyMongo's multi-line topology dumps out of logs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError, WriteConcernError

from bot.errors import StoreError, StoreUnavailable

_AUTH_FAILED = frozenset({13, 18})  # Unauthorized, AuthenticationFailed
_CHECK = "check that the server is running and that the URL, credentials and network are right"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_SECRET_WORD = re.compile(r"(?i)pass|pwd|secret|token|key|credential|signature")


def mask_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``.

    Works on a bare URL and on an error message that quotes one. For each URL (up to the next
    whitespace) everything between ``://`` and the **last** ``@`` is credentials: an
    unescaped ``@``, ``/`` or ``?`` in a password never shows part of it (the cost: an ``@``
    in an option value hides the host too). The user name before the first ``:`` is kept;
    userinfo without ``:`` may be a password alone, so it is masked whole. Options whose name
    or value looks secret (password, secret, token, key, ...: ``tlsCertificateKeyFilePassword``,
    ``authMechanismProperties=AWS_SESSION_TOKEN:...``) have their value masked.
    """
    return _URL.sub(_mask_one, text) if "://" in text else text


def _mask_one(match: re.Match[str]) -> str:
    scheme, _, rest = match.group().partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:***@" if colon else "***@") + hosts
    where, question, query = rest.partition("?")
    if question:
        query = re.sub(r"[^&;]+", _mask_option, query)
    return f"{scheme}://{where}{question}{query}"


def _mask_option(match: re.Match[str]) -> str:
    name, equals, value = match.group().partition("=")
    if equals and _SECRET_WORD.search(f"{unquote(name)} {unquote(value)}"):
        return f"{name}=***"
    return match.group()


@contextmanager
def translate(description: str, what: str) -> Iterator[None]:
    """Turn driver errors into the store's own, with a one-line, password-free message.

    Args:
        description: where the data lives (the store's password-free description).
        what: the operation, named in the message.
    """
    try:
        yield
    except PyMongoError as exc:
        _raise_if_cancelled()
        if isinstance(exc, (ConnectionFailure, WriteConcernError)):
            raise StoreUnavailable(
                f"MongoDB at {description} is unavailable ({what}: {_reason(exc)}); {_CHECK}"
            ) from None
        if isinstance(exc, OperationFailure) and exc.code in _AUTH_FAILED:
            raise StoreUnavailable(
                f"MongoDB at {description} refused access ({what}: {_reason(exc)}); "
                "check the user, password and authSource in the URL"
            ) from None
        raise StoreError(f"MongoDB at {description}: {what}: {_reason(exc)}") from exc
    _raise_if_cancelled()


def _raise_if_cancelled() -> None:
    """Raise the cancellation of the current task, if it was cancelled.

    PyMongo's async API (4.20) may swallow a task's cancellation: the operation then
    returns normally (seen about once in 40 cancels of a running ``find``), or fails as a
    connection error since it closed the connection. A loop that carries on after an
    operation would then never stop; this puts the cancellation back.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _reason(exc: PyMongoError) -> str:
    """The first line of a driver error, without the topology dump or any password."""
    text = str(exc).split(", Timeout:")[0]
    text = re.sub(r" \(configured timeouts:[^)]*\)", "", text)
    return mask_url(text.splitlines()[0] if text else type(exc).__name__)[:300]
