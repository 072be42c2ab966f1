"""The storage protocol every backend implements, and the helpers they share.

A store keeps four things:

* **users** — one :class:`~bot.models.UserRecord` per user key, written with an optimistic
  version check (``VersionConflict`` when someone else wrote first), and the user's **lease**;
* **the inbox** — every inbound message, unique by wamid, written *before* the webhook is
  acknowledged; ``pending`` until a worker has applied it, then ``done`` (or ``failed`` with
  the reason). A user's pending messages come back in **arrival order**: the order they were
  stored, except that a message Meta stamped with an *older* second than one stored before
  it (a late delivery, still pending) goes first. Messages of the same second keep their
  arrival order: Meta's whole-second timestamps and opaque wamids never reorder them;
* **statuses** — every status item, unique by (wamid, status), pending until applied to the
  outbox entry it names;
* **the outbox** — every reply, written in the same atomic step as the user's new state,
  ``pending`` until the sender has sent it (or decided not to);
* **aliases** — every id a user is known by (phone number, business-scoped user ids), each
  naming the user's one canonical key. Written once and never changed, so any process may
  cache them. :meth:`Store.add_inbound`, :meth:`Store.add_statuses` and
  :meth:`Store.add_identity_changes` resolve the ids an item carries to that key in their
  own write (see :func:`resolve_identities`), and file the item under it.

A worker owns a user through a **lease** (:class:`Lease`): :meth:`Store.claim` takes it and
reads all the user's work in one round trip; every write the worker makes is **fenced** by
the lease's token, checked in the same atomic write, so a worker whose lease was taken over
(it was paused, its renewals failed) can neither commit a turn nor start a send
(``LeaseLost``). Times are unix seconds as floats (no BSON/SQL dates: they compare the same
way everywhere).

The contract test-suite in ``tests/store/`` states this behaviour; every backend passes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import structlog

from bot.models import (
    IdentityChange,
    InboundMessage,
    OutboxEntry,
    Outgoing,
    StatusUpdate,
    TemplateCall,
    UserRecord,
    delivery_status,
)

_log = structlog.get_logger("windowbot.store")


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's hold on one user; ``token`` is new at every claim and fences its writes."""

    user: str
    owner: str
    token: str
    until: float


@dataclass(frozen=True, slots=True)
class Work:
    """A claimed user and everything pending for them, read in one round trip.

    Attributes:
        lease: the hold that fences this worker's writes.
        record: the user's record (a blank one, ``version`` 0, for a user never seen).
        inbound: pending inbox messages in arrival order (see the module docstring).
        statuses: unapplied status items for the user, oldest first.
        outbox: pending outbox entries in ``seq`` order (reminders not yet due included).
    """

    lease: Lease
    record: UserRecord
    inbound: tuple[InboundMessage, ...] = ()
    statuses: tuple[StatusUpdate, ...] = ()
    outbox: tuple[OutboxEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class Committed:
    """What :meth:`Store.commit_turn` stored.

    Attributes:
        record: the user's record as stored (``version`` one higher than read).
        entries: the outbox entries the turn appended, in ``seq`` order.
        backlog: whether the user had pending outbox entries before this turn (then the
            sender reads the outbox; otherwise it can send ``entries`` as they are).
    """

    record: UserRecord
    entries: tuple[OutboxEntry, ...] = ()
    backlog: bool = False


class Added(list[bool]):
    """For each item stored, whether it was new; ``users[i]`` is the user item ``i`` is filed
    under (its canonical key, which may differ from the id the item carried)."""

    __slots__ = ("users",)

    def __init__(self, new: Iterable[bool] = (), users: Iterable[str] = ()) -> None:
        super().__init__(new)
        self.users = list(users)


@runtime_checkable
class Store(Protocol):
    """What the framework needs from a database. All methods are coroutines."""

    #: Where the data lives, for logs (never a password).
    description: str

    async def open(self) -> None:
        """Connect, create tables/indexes; raise ``StoreUnavailable`` naming the URL if down."""

    async def close(self) -> None:
        """Release connections and threads; safe to call twice."""

    async def ping(self, *, write: bool = False) -> None:
        """Raise ``StoreUnavailable`` unless the store answers (``write``: and can write)."""

    # --- inbox and statuses: durable when the coroutine returns -------------------------

    async def add_inbound(self, messages: Sequence[InboundMessage], now: float) -> Added:
        """Insert messages into the inbox; for each, ``True`` if new, ``False`` if a duplicate.

        Each is filed under its user's canonical key (``Added.users``), resolved from the ids
        it carries in the same write, and the ids not known yet are recorded as aliases.
        """

    async def add_and_claim(
        self,
        messages: Sequence[InboundMessage],
        now: float,
        *,
        owner: str,
        until: float,
        users: Sequence[str],
        limit: int = 64,
    ) -> tuple[Added, list[Work]]:
        """:meth:`add_inbound`, and :meth:`claim` of ``users`` in the same step where cheap.

        The webhook's path: a store that can claim in the insert's own transaction saves the
        worker a round trip. Returns the insert's flags and the work of each user claimed;
        a store may claim none (the caller then claims as usual) but never claims a user
        another owner holds, nor one no message was filed under (``Added.users``).
        """

    async def add_statuses(self, statuses: Sequence[StatusUpdate], now: float) -> Added:
        """Insert status items; for each, ``True`` if new, ``False`` if seen before.

        Filed under the recipient's canonical key like :meth:`add_inbound`'s messages (a
        status carrying only ``recipient_user_id`` finds the user first seen by phone).

        Applied on the way in: a status whose callback data names an outbox entry with an
        attempt in flight and no wamid records that wamid (Meta accepted the message: it is
        never sent again); a new ``sent``/``delivered``/``read`` whose wamid names an outbox
        entry moves it forward (:func:`~bot.models.delivery_status`). Such items are stored
        as applied; ``failed`` statuses, and statuses whose wamid is not known (yet), stay
        pending for the user's worker.
        """

    async def add_identity_changes(
        self, changes: Sequence[IdentityChange], now: float
    ) -> list[str]:
        """Apply ``user_id_update`` items: the new id becomes an alias of the same user.

        The user's record takes the new ``user_id`` (and ``wa_id`` when given) with its
        version raised, so a worker's turn read before conflicts and re-reads; state, window,
        opt-out and outbox stay where they are. Returns each change's canonical key.
        """

    # --- leases -------------------------------------------------------------------------

    async def claim(
        self, user: str, owner: str, until: float, now: float, *, limit: int = 64
    ) -> Work | None:
        """Take the lease on ``user`` for ``owner`` until ``until`` and read their work.

        Succeeds (with a new token) if the user has no lease, ``owner`` holds it, or it
        expired before ``now``; ``None`` if another owner holds it. ``limit`` bounds each of
        the lists read.
        """

    async def read_work(self, lease: Lease, *, limit: int = 64) -> Work:
        """The user's record and pending work again, under a lease already held."""

    async def renew(self, leases: Sequence[Lease], until: float) -> set[str]:
        """Extend each lease still held (same token) to ``until``; the users still held."""

    async def release(self, leases: Sequence[Lease]) -> None:
        """Drop these leases (a lease whose token was replaced is left alone)."""

    async def users_with_work(self, now: float, limit: int) -> list[str]:
        """Users with pending inbox or status items, or outbox entries due by ``now``.

        Users whose lease is held (and not expired) are left out. Used at start-up and by
        the periodic sweep that picks up what a crashed or busy process left behind.
        """

    async def get_user(self, user: str) -> UserRecord | None:
        """The user's record, or ``None`` for a user never seen."""

    # --- per-user work (fenced by the caller's lease) -------------------------------------

    async def commit_turn(
        self,
        lease: Lease,
        message_id: str | None,
        record: UserRecord,
        outgoing: Sequence[Outgoing],
        now: float,
        *,
        failed: str = "",
        start_sending: bool = False,
    ) -> Committed:
        """Apply one turn atomically and say what was stored.

        ``record.version`` is the version that was read (0 for a new user). Atomically as far
        as any reader can tell: the record is stored with ``version + 1``, ``outgoing`` is
        appended to the user's outbox (``seq`` continuing the user's sequence; an entry's
        ``next_attempt_at`` is its outgoing's ``send_at``), and the inbox message
        ``message_id`` (if any) is marked done — or ``failed`` with the reason ``failed``.
        With ``start_sending`` and no older entry pending, the new entries due now are
        stored with their first attempt in flight (``inflight_at`` = ``now``, the lease's
        token, ``attempts`` 1), so the sender needs no extra write before sending them.

        Raises ``LeaseLost`` if ``lease`` no longer holds the user and ``VersionConflict`` if
        the stored version differs; either way nothing changes. A user's ``seq`` starts at 0.

        Backends without multi-document transactions (MongoDB) may complete the outbox append
        and the done mark after the record write, provided every read of that user first
        finishes such a turn; ``inbox_counts`` may briefly lag.
        """

    async def enqueue(
        self, user: str, outgoing: Sequence[Outgoing], now: float
    ) -> list[OutboxEntry]:
        """Append business-initiated messages to a user's outbox without holding the lease.

        The user's ``version`` goes up (a worker's concurrent turn conflicts and retries);
        the record is created if the user was never seen.
        """

    async def begin_send(self, lease: Lease, entry: OutboxEntry, now: float) -> OutboxEntry | None:
        """Record that an attempt of ``entry`` starts now, before the request is made.

        Returns the entry with ``attempts`` + 1 and the attempt in flight; ``None`` if the
        entry is no longer pending or a wamid was recorded for it meanwhile (a status carrying
        its callback data arrived: it was sent). Raises ``LeaseLost``.
        """

    async def save_outbox(self, lease: Lease, entry: OutboxEntry) -> None:
        """Store the entry's delivery fields (status, wamid, attempts, reason, ...).

        If the stored entry has the same wamid and its status is further along (a status
        webhook got there first), that status is kept. A no-op if no entry has that ``id``.
        Raises ``LeaseLost``.
        """

    async def outbox_for_status(self, status: StatusUpdate) -> OutboxEntry | None:
        """The outbox entry a status item is about: by its wamid, else by its callback data.

        ``None`` if neither names an entry of the status's recipient.
        """

    async def finish_statuses(self, user: str, keys: Sequence[tuple[str, str]]) -> None:
        """Mark the user's status items (wamid, status) as applied."""

    async def purge(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` finished rows older than ``before``; return how many.

        Finished means: inbox messages done or failed (by ``finished_at``), applied status
        items (by arrival), and outbox entries no longer pending (by ``created_at``). Pending
        work is never deleted. A purged wamid is no longer a duplicate, so ``before`` must lie
        beyond Meta's 7-day retry horizon.
        """

    async def inbox_counts(self) -> dict[str, int]:
        """Inbox messages by status; always has the keys ``pending``, ``done`` and ``failed``."""

    async def outbox_of(self, user: str, limit: int = 100) -> list[OutboxEntry]:
        """The user's outbox entries in ``seq`` order, whatever their status (newest last)."""

    # --- read-only views for the console --------------------------------------------------

    async def list_users(self, limit: int = 100) -> list[UserRecord]:
        """Users with a record, the one who wrote last first (ties by key); at most ``limit``."""

    async def inbox_of(self, user: str, limit: int = 100) -> list[InboxItem]:
        """The user's newest ``limit`` inbox messages in arrival order, whatever their status."""


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One inbox message as the console shows it.

    Attributes:
        message: the message as parsed from Meta's item.
        status: ``pending``, ``done`` or ``failed``.
        reason: why it failed ('' otherwise).
        received_at: when the webhook stored it (unix seconds).
    """

    message: InboundMessage
    status: str
    reason: str
    received_at: float


def merge_saved(stored_status: str, stored_wamid: str, entry: OutboxEntry) -> str:
    """The status to store when the owner saves ``entry`` over a stored one.

    A status webhook may have moved the same sent message further along meanwhile; the
    owner's write then keeps that status.
    """
    if entry.wamid and entry.wamid == stored_wamid:
        return delivery_status(stored_status, entry.status)
    return entry.status


# --- identity shared by the backends ---------------------------------------------------------


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


# --- serialisation shared by the backends ----------------------------------------------------


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Compact JSON for storage (one encoder for all: ``json.dumps`` builds one per call)."""
    return _ENCODER.encode(value)


def outgoing_to_json(outgoing: Outgoing) -> dict[str, Any]:
    """An :class:`Outgoing` as plain JSON data."""
    fb = outgoing.fallback
    return {
        "message": outgoing.message,
        "note": outgoing.note,
        "send_at": outgoing.send_at,
        "fallback": None
        if fb is None
        else {
            "name": fb.name,
            "language": fb.language,
            "parameters": dict(fb.parameters)
            if isinstance(fb.parameters, Mapping)
            else list(fb.parameters),
            "header": list(fb.header),
            "buttons": list(fb.buttons),
        },
    }


def outgoing_from_json(data: Mapping[str, Any]) -> Outgoing:
    """The inverse of :func:`outgoing_to_json`."""
    fb = data.get("fallback")
    call = None
    if fb:
        params = fb.get("parameters", [])
        call = TemplateCall(
            name=fb["name"],
            language=fb.get("language", ""),
            parameters=dict(params) if isinstance(params, Mapping) else tuple(params),
            header=tuple(fb.get("header", ())),
            buttons=tuple(fb.get("buttons", ())),
        )
    return Outgoing(
        message=data.get("message"),
        fallback=call,
        note=data.get("note", ""),
        send_at=float(data.get("send_at", 0.0)),
    )


def user_to_json(record: UserRecord) -> dict[str, Any]:
    """A :class:`UserRecord` as plain JSON data (``key`` included)."""
    return {
        "key": record.key,
        "wa_id": record.wa_id,
        "user_id": record.user_id,
        "profile_name": record.profile_name,
        "last_inbound_at": record.last_inbound_at,
        "message_count": record.message_count,
        "flow": record.flow,
        "state": record.state,
        "variables": dict(record.variables),
        "language": record.language,
        "opted_out": record.opted_out,
        "undeliverable": record.undeliverable,
        "version": record.version,
        "paused": record.paused,
        "paused_reason": record.paused_reason,
        "paused_at": record.paused_at,
    }


def user_from_json(data: Mapping[str, Any]) -> UserRecord:
    """The inverse of :func:`user_to_json`; unknown fields are ignored."""
    return UserRecord(
        key=data["key"],
        wa_id=data.get("wa_id", ""),
        user_id=data.get("user_id", ""),
        profile_name=data.get("profile_name", ""),
        last_inbound_at=int(data.get("last_inbound_at", 0)),
        message_count=int(data.get("message_count", 0)),
        flow=data.get("flow", ""),
        state=data.get("state", ""),
        variables=dict(data.get("variables") or {}),
        language=data.get("language", ""),
        opted_out=bool(data.get("opted_out", False)),
        undeliverable=bool(data.get("undeliverable", False)),
        version=int(data.get("version", 0)),
        paused=bool(data.get("paused", False)),
        paused_reason=str(data.get("paused_reason") or ""),
        paused_at=float(data.get("paused_at") or 0.0),
    )


def inbound_to_json(message: InboundMessage) -> dict[str, Any]:
    """What the inbox keeps of a message: Meta's item plus the envelope facts around it."""
    return {
        "raw": dict(message.raw),
        "user": message.user,
        "wa_id": message.wa_id,
        "user_id": message.user_id,
        "profile_name": message.profile_name,
        "phone_number_id": message.phone_number_id,
    }


def inbound_from_json(data: Mapping[str, Any]) -> InboundMessage:
    """Rebuild a message from :func:`inbound_to_json` by parsing Meta's item again."""
    from bot.webhook import parse_message  # the parser is the one source of truth

    message = parse_message(
        data["raw"],
        wa_id=data.get("wa_id", ""),
        user_id=data.get("user_id", ""),
        profile_name=data.get("profile_name", ""),
        phone_number_id=data.get("phone_number_id", ""),
    )
    return filed(message, data.get("user") or message.user)


def status_to_json(status: StatusUpdate) -> dict[str, Any]:
    """What the store keeps of a status item (and the user it is filed under)."""
    return {
        "raw": dict(status.raw),
        "phone_number_id": status.phone_number_id,
        "user": status.recipient,
    }


def status_from_json(data: Mapping[str, Any]) -> StatusUpdate:
    """Rebuild a status item by parsing Meta's item again."""
    from bot.webhook import parse_status

    status = parse_status(data["raw"], phone_number_id=data.get("phone_number_id", ""))
    return filed_status(status, data.get("user") or status.recipient)


def outbox_to_json(entry: OutboxEntry) -> dict[str, Any]:
    """An outbox entry as plain JSON data."""
    return {
        "id": entry.id,
        "user": entry.user,
        "seq": entry.seq,
        "outgoing": outgoing_to_json(entry.outgoing),
        "created_at": entry.created_at,
        "status": entry.status,
        **delivery_fields(entry),
    }


def delivery_fields(entry: OutboxEntry) -> dict[str, Any]:
    """What the sender changes on an entry besides its status (its reply never changes)."""
    return {
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at,
        "wamid": entry.wamid,
        "sent_as": entry.sent_as,
        "reason": entry.reason,
        "error_code": entry.error_code,
        "fallback_sent": entry.fallback_sent,
        "inflight_at": entry.inflight_at,
        "inflight_token": entry.inflight_token,
    }


def outbox_from_json(data: Mapping[str, Any]) -> OutboxEntry:
    """The inverse of :func:`outbox_to_json`."""
    return OutboxEntry(
        id=data["id"],
        user=data["user"],
        seq=int(data["seq"]),
        outgoing=outgoing_from_json(data["outgoing"]),
        created_at=float(data["created_at"]),
        status=data.get("status", "pending"),
        attempts=int(data.get("attempts", 0)),
        next_attempt_at=float(data.get("next_attempt_at", 0.0)),
        wamid=data.get("wamid", ""),
        sent_as=data.get("sent_as", ""),
        reason=data.get("reason", ""),
        error_code=int(data.get("error_code", 0)),
        fallback_sent=bool(data.get("fallback_sent", False)),
        inflight_at=float(data.get("inflight_at", 0.0)),
        inflight_token=str(data.get("inflight_token", "")),
    )


def outbox_id(user: str, seq: int) -> str:
    """The deterministic id of a user's ``seq``-th reply (idempotent re-inserts)."""
    return f"{user}:{seq}"


def new_outbox_entries(
    user: str,
    first_seq: int,
    outgoing: Sequence[Outgoing],
    now: float,
    *,
    in_flight: str = "",
) -> list[OutboxEntry]:
    """The outbox entries a turn appends, numbered from ``first_seq``.

    A reminder (``send_at``) is not due before its time; everything else is due at once.
    ``in_flight``: a lease token; the entries due now are stored with their first attempt
    started by it (see :meth:`Store.commit_turn`'s ``start_sending``).
    """
    entries = []
    for seq, out in enumerate(outgoing, start=first_seq):
        due = in_flight and out.send_at <= now
        entries.append(
            OutboxEntry(
                id=outbox_id(user, seq),
                user=user,
                seq=seq,
                outgoing=out,
                created_at=now,
                next_attempt_at=out.send_at,
                attempts=1 if due else 0,
                inflight_at=now if due else 0.0,
                inflight_token=in_flight if due else "",
            )
        )
    return entries


__all__ = [
    "Added",
    "AliasCache",
    "Committed",
    "Identity",
    "InboxItem",
    "Lease",
    "Resolved",
    "Store",
    "Work",
    "change_identity",
    "dumps",
    "filed",
    "filed_status",
    "inbound_from_json",
    "inbound_to_json",
    "merge_saved",
    "message_identity",
    "new_outbox_entries",
    "outbox_from_json",
    "outbox_id",
    "outbox_to_json",
    "outgoing_from_json",
    "outgoing_to_json",
    "report_conflicts",
    "resolve_identities",
    "status_from_json",
    "status_identity",
    "status_to_json",
    "user_from_json",
    "user_to_json",
]
