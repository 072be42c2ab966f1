"""How the MongoDB store reports driver errors: password-free URLs and one-line messages.

:func:`translate` turns PyMongo's exceptions into the store's own (:class:`StoreUnavailable`
when the server cannot be reached or refuses the credentials, :class:`StoreError` otherwise);
:func:`mask_url` hides the password and secret-looking options of a connection URL. Both keep
secrets and PyMongo's multi-line topology dumps out of logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError, WriteConcernError

from bot.errors import StoreError, StoreUnavailable

_AUTH_FAILED = frozenset({13, 18})  # Unauthorized, AuthenticationFailed
_CHECK = "check that the server is running and that the URL, credentials and network are right"
_SECRET_OPTION = re.compile(r"(?i)([?&][^=&]*(?:password|secret|token)[^=&]*=)[^&]*")


def mask_url(url: str) -> str:
    """``url`` with the password (and secret-looking options) replaced by ``***``."""
    masked = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/]*):[^@/]*@", r"\1:***@", url)
    return _SECRET_OPTION.sub(r"\1***", masked)


@contextmanager
def translate(description: str, what: str) -> Iterator[None]:
    """Turn driver errors into the store's own, with a one-line, password-free message.

    Args:
        description: where the data lives (the store's password-free description).
        what: the operation, named in the message.
    """
    try:
        yield
    except (ConnectionFailure, WriteConcernError) as exc:
        raise StoreUnavailable(
            f"MongoDB at {description} is unavailable ({what}: {_reason(exc)}); {_CHECK}"
        ) from None
    except PyMongoError as exc:
        if isinstance(exc, OperationFailure) and exc.code in _AUTH_FAILED:
            raise StoreUnavailable(
                f"MongoDB at {description} refused access ({what}: {_reason(exc)}); "
                "check the user, password and authSource in the URL"
            ) from None
        raise StoreError(f"MongoDB at {description}: {what}: {_reason(exc)}") from exc


def _reason(exc: PyMongoError) -> str:
    """The first line of a driver error, without the topology dump or any password."""
    text = str(exc).split(", Timeout:")[0]
    text = re.sub(r" \(configured timeouts:[^)]*\)", "", text)
    return mask_url(text.splitlines()[0] if text else type(exc).__name__)[:300]
