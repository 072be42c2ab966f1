"""Who a webhook item is about: the ids it carries, and the canonical key they resolve to.

Shared by the backends: :func:`resolve_identities` is the pure decision every store makes in
its own write (see :mod:`bot.store.base`), :class:`AliasCache` the per-process memory of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import structlog

from bot.models import IdentityChange, InboundMessage, StatusUpdate

_log = structlog.get_logger("windowbot.store")


@dataclass(frozen=True, slots=True)
class Identity:
    """The ids one webhook item carries, in the order its user is looked up by.

    Business-scoped ids come first (Meta's key from 2026 on), then the phone number.
    ``new_key`` is the key of a user none of them names yet: the phone number when the item
    has one (so users known before business-scoped ids keep their key), else the id.
    ``user_id``/``wa_id`` are what the user's record takes on a re-key (empty otherwise).
    """

    ids: tuple[str, ...]
    new_key: str
    user_id: str = ""
    wa_id: str = ""


def message_identity(message: InboundMessage) -> Identity:
    """The ids of an inbound message's sender."""
    ids = tuple(i for i in (message.user_id, message.wa_id) if i)
    return Identity(ids or (message.user,), message.user)


def status_identity(status: StatusUpdate) -> Identity:
    """The ids of a status item's recipient."""
    user_id = status.recipient_user_id
    phone = status.recipient if status.recipient != user_id else ""
    ids = tuple(i for i in (user_id, phone) if i)
    return Identity(ids, status.recipient)


def change_identity(change: IdentityChange) -> Identity:
    """The ids of a re-keyed user: the previous id first, the new ones become aliases."""
    ids = tuple(i for i in (change.previous, change.wa_id, change.user_id) if i)
    return Identity(ids, change.wa_id or change.user_id, change.user_id, change.wa_id)


@dataclass(slots=True)
class Resolved:
    """What :func:`resolve_identities` decided.

    Attributes:
        users: the canonical key of each item, in order.
        new: aliases to record (id → canonical key), none of them known before.
        conflicts: ``(kept, other)`` pairs: an item's ids named two different users (two
            records made before anything linked their ids); the item went to ``kept``.
    """

    users: list[str] = field(default_factory=list)
    new: dict[str, str] = field(default_factory=dict)
    conflicts: list[tuple[str, str]] = field(default_factory=list)


def resolve_identities(items: Sequence[Identity], known: Mapping[str, str]) -> Resolved:
    """Each item's canonical key from the aliases ``known`` (pure; items in order).

    The first id with an alias decides (business-scoped ids first); an item naming nobody
    starts a user under its ``new_key``. Every id of an item that had no alias becomes one,
    so a user seen by phone (with their id), then by id only, then by both is one user; a
    later item of the same batch sees the aliases an earlier one made.
    """
    seen = dict(known)
    out = Resolved()
    for item in items:
        user = ""
        for alias in item.ids:
            found = seen.get(alias)
            if found is None:
                continue
            if not user:
                user = found
            elif found != user and (user, found) not in out.conflicts:
                out.conflicts.append((user, found))
        user = user or item.new_key
        for alias in item.ids:
            if alias not in seen:
                seen[alias] = out.new[alias] = user
        out.users.append(user)
    return out


def report_conflicts(resolved: Resolved) -> None:
    """Log each conflict :func:`resolve_identities` found (nothing is merged or lost)."""
    for kept, other in resolved.conflicts:
        _log.warning(
            "identity_conflict",
            user=kept,
            other_user=other,
            action="filed under the first; the two records are not merged",
        )


class AliasCache:
    """The aliases one process has seen: they never change, so a hit needs no store work.

    Bounded: past ``size`` entries it starts again (a miss only costs a lookup).
    """

    def __init__(self, size: int = 200_000) -> None:
        self._map: dict[str, str] = {}
        self._size = size

    def missing(self, items: Sequence[Identity]) -> list[str]:
        """The ids of ``items`` not in the cache (empty: :meth:`resolve` needs no store)."""
        cached = self._map
        return [alias for item in items for alias in item.ids if alias not in cached]

    def resolve(self, items: Sequence[Identity]) -> Resolved:
        """:func:`resolve_identities` over the cache alone."""
        return resolve_identities(items, self._map)

    def learn(self, aliases: Mapping[str, str]) -> None:
        """Remember aliases read from or written to the store."""
        if len(self._map) + len(aliases) > self._size:
            self._map = {}
        self._map.update(aliases)


def filed(message: InboundMessage, user: str) -> InboundMessage:
    """``message`` filed under the canonical key ``user``."""
    return message if message.user == user else replace(message, user=user)


def filed_status(status: StatusUpdate, user: str) -> StatusUpdate:
    """``status`` filed under the canonical key ``user``."""
    return status if status.recipient == user else replace(status, recipient=user)
