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
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import structlog

from bot.models import (
    IdentityChange,
    InboundMessage,
    Job,
    OutboxEntry,
    Outgoing,
    StatusUpdate,
    TemplateCall,
    TemplateEvent,
    UserRecord,
    delivery_status,
    parse_callback_data,
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

    async def release(self, leases: Sequence[Lease]) -> set[str]:
        """Drop these leases (a lease whose token was replaced is left alone); the users
        among them with messages or status items pending once released.

        Those arrived while the user was held, by another process (whose claim failed, so
        it left them to the holder): the caller claims them again. Looking after the release
        leaves no gap: work stored later finds the lease free and is claimed where it
        arrived.
        """

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
        items (by arrival), outbox entries no longer pending (by ``created_at``), reminder
        jobs whose story is over (by ``send_at``: cancelled, expired, skipped, failed, or
        handed over to an entry that is settled or gone) and template events (by arrival).
        Pending work is never deleted. A purged wamid or event is no longer a duplicate, so
        ``before`` must lie beyond Meta's 7-day retry horizon.
        """

    async def inbox_counts(self) -> dict[str, int]:
        """Inbox messages by status; always has the keys ``pending``, ``done`` and ``failed``."""

    async def outbox_of(self, user: str, limit: int = 100) -> list[OutboxEntry]:
        """The user's outbox entries in ``seq`` order, whatever their status (newest last)."""

    # --- templates' live view and the pricing ledger (see the dataclasses below) ----------

    async def add_template_events(self, events: Sequence[TemplateEvent], now: float) -> list[bool]:
        """Store template webhooks; for each, ``True`` if new. New ones update the live view.

        The live view keeps, per template variant (name, language), the newest status and
        the newest category Meta reported (by the webhook's ``time``: an older event that
        arrives late changes nothing), and the latest advance notice of a category change.
        Every change raises :meth:`template_version`.
        """

    async def template_view(self) -> TemplateView:
        """The live view of every variant Meta reported on, with its version."""

    async def template_version(self) -> int:
        """The live view's version: a cheap read that tells whether it changed."""

    async def add_pricing(self, statuses: Sequence[StatusUpdate], now: float) -> None:
        """Record the ``pricing`` of status items in the ledger, once per message (wamid).

        The row names the outbox entry the message was sent for (from its callback data).
        """

    async def pricing_counts(self, since: float = 0.0) -> list[PricingCount]:
        """Ledger counts per UTC day, pricing category, type and billable, oldest day first."""

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


# --- templates' live view and the pricing ledger, shared by the backends --------------------


@dataclass(frozen=True, slots=True)
class LiveVariant:
    """What Meta last said about one template variant (``""``/0: nothing said yet).

    Attributes:
        status, status_reason, status_at: the newest status event, its reason, its time.
        category, previous_category, category_at: the newest completed category change
            (or the category a status event carried), and when.
        notice_category, notice_effective_at, notice_at: the latest advance notice that
            the category will change, and to what.
    """

    name: str
    language: str
    template_id: str = ""
    status: str = ""
    status_reason: str = ""
    status_at: int = 0
    category: str = ""
    previous_category: str = ""
    category_at: int = 0
    notice_category: str = ""
    notice_effective_at: int = 0
    notice_at: int = 0


@dataclass(frozen=True, slots=True)
class TemplateView:
    """Every variant's live state, by (name, language), and the view's version."""

    version: int
    variants: Mapping[tuple[str, str], LiveVariant]


@dataclass(frozen=True, slots=True)
class PricingCount:
    """How many messages Meta priced one way on one UTC day (``day`` is ``YYYY-MM-DD``)."""

    day: str
    category: str
    type: str
    billable: bool
    count: int


def apply_template_event(current: LiveVariant | None, event: TemplateEvent) -> LiveVariant | None:
    """The variant's live state after ``event``; ``None`` when the event changes nothing."""
    old = current or LiveVariant(event.name, event.language)
    new = replace(old, template_id=event.template_id or old.template_id)
    if event.kind == "status":
        if event.time >= old.status_at:
            new = replace(new, status=event.status, status_reason=event.reason)
            new = replace(new, status_at=event.time)
        if event.category and event.time >= old.category_at:
            new = replace(new, category=event.category, category_at=event.time)
    elif event.notice:
        if event.time >= old.notice_at:
            new = replace(
                new,
                notice_category=event.correct_category,
                notice_effective_at=event.effective_at,
                notice_at=event.time,
            )
    elif event.time >= old.category_at:
        new = replace(new, category=event.category, category_at=event.time)
        new = replace(new, previous_category=event.previous_category)
        if new.notice_category and new.notice_category == event.category:
            new = replace(new, notice_category="", notice_effective_at=0)  # it happened
    return None if new == current else new


def live_to_json(variant: LiveVariant) -> dict[str, Any]:
    """A :class:`LiveVariant` as plain JSON data."""
    return {f: getattr(variant, f) for f in LiveVariant.__dataclass_fields__}


def live_from_json(data: Mapping[str, Any]) -> LiveVariant:
    """The inverse of :func:`live_to_json` (unknown fields ignored)."""
    return LiveVariant(**{f: data[f] for f in LiveVariant.__dataclass_fields__ if f in data})


def pricing_row(status: StatusUpdate) -> dict[str, Any] | None:
    """The ledger row of a status carrying ``pricing``, ``None`` for one without."""
    if status.pricing is None:
        return None
    named = parse_callback_data(status.callback_data)
    return {
        "wamid": status.id,
        "entry": named[0] if named else "",
        "user": status.recipient,
        "ts": status.timestamp,
        "day": datetime.fromtimestamp(status.timestamp, UTC).strftime("%Y-%m-%d"),
        "category": status.pricing.category,
        "type": status.pricing.type,
        "billable": status.pricing.billable,
        "pricing_model": status.pricing.pricing_model,
    }


def count_pricing(rows: Sequence[Mapping[str, Any]]) -> list[PricingCount]:
    """Group ledger rows into :class:`PricingCount` items, oldest day first."""
    counts: dict[tuple[str, str, str, bool], int] = {}
    for row in rows:
        key = (str(row["day"]), str(row["category"]), str(row["type"]), bool(row["billable"]))
        counts[key] = counts.get(key, 0) + 1
    return [PricingCount(*key, count=n) for key, n in sorted(counts.items())]


__all__ = [
    "Added",
    "AliasCache",
    "Committed",
    "Identity",
    "InboxItem",
    "JobStore",
    "Lease",
    "LiveVariant",
    "PricingCount",
    "Reach",
    "Resolved",
    "Store",
    "TemplateView",
    "Work",
    "apply_template_event",
    "change_identity",
    "count_pricing",
    "dumps",
    "filed",
    "filed_status",
    "inbound_from_json",
    "inbound_to_json",
    "is_job_entry",
    "job_entry_id",
    "job_from_json",
    "job_to_json",
    "live_from_json",
    "live_to_json",
    "merge_saved",
    "message_identity",
    "new_outbox_entries",
    "outbox_from_json",
    "outbox_id",
    "outbox_to_json",
    "outgoing_from_json",
    "outgoing_to_json",
    "pricing_row",
    "report_conflicts",
    "resolve_identities",
    "resolve_job",
    "status_from_json",
    "status_identity",
    "status_to_json",
    "user_from_json",
    "user_to_json",
]


# --- reminder jobs (see bot.jobs) ------------------------------------------------------------

#: Job states that a queued job takes from its outbox entry (see :func:`resolve_job`).
OUTCOMES = frozenset({"queued", "sent", "skipped", "failed"})
#: Rolling period of Meta's messaging limit: unique users reached per 24 hours.
REACH_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class Reach:
    """What :meth:`JobStore.reserve_reach` decided under the messaging limit.

    Attributes:
        allowed: the users that may be reached now (already reached in the last 24 h, or
            reserved now).
        headroom: how many more new users fit in the rolling 24 h after this call.
        room_at: when the oldest reach leaves the 24 h (0 when there is room).
    """

    allowed: frozenset[str]
    headroom: int
    room_at: float = 0.0


@runtime_checkable
class JobStore(Store, Protocol):
    """A store that also keeps reminder jobs (:class:`~bot.models.Job`); both backends are.

    A keyed job's id is ``user|key``: scheduling the key again replaces the job atomically,
    whatever state it was in. Jobs are claimed like users are: a claim sets a token and a
    deadline; handing over and settling are fenced by the token, and a claim whose deadline
    passed may be taken by anyone.
    """

    async def schedule_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        """Store ``jobs`` (state ``scheduled``), replacing jobs with the same id."""

    async def cancel_jobs(
        self, now: float, *, key: str = "", prefix: str = "", user: str = ""
    ) -> int:
        """Cancel the scheduled jobs matching every filter given; how many were cancelled."""

    async def find_jobs(
        self,
        *,
        user: str = "",
        key: str = "",
        prefix: str = "",
        state: str = "",
        limit: int = 100,
    ) -> list[Job]:
        """Jobs matching every filter given, by ``send_at`` (newest last).

        A queued job comes back with what became of its outbox entry (:func:`resolve_job`),
        and ``state`` filters on that.
        """

    async def claim_jobs(
        self, owner: str, now: float, until: float, limit: int, *, user: str = ""
    ) -> list[Job]:
        """Claim up to ``limit`` scheduled jobs whose ``wake_at`` passed (``user``: only
        theirs), oldest ``send_at`` first; each is claimed by one caller only. Jobs come back
        with their claim token."""

    async def hand_over(self, job: Job, outgoing: Outgoing, now: float) -> OutboxEntry | None:
        """Append ``outgoing`` to the user's outbox as entry :func:`job_entry_id` and mark
        the job ``queued``, in one step as far as any reader can tell; ``None`` (nothing
        changed) if the claim was lost. Idempotent: an entry of that id is appended once."""

    async def settle_job(
        self, job: Job, now: float, *, state: str, reason: str, wake_at: float = 0.0
    ) -> bool:
        """Under the job's claim: set a final state with its reason, or (``scheduled``)
        release it to wait until ``wake_at`` saying why; whether the claim still held."""

    async def reserve_reach(self, users: Sequence[str], now: float, limit: int) -> Reach:
        """Count ``users`` as reached by business-initiated messages now, in order, as long
        as at most ``limit`` unique users are reached in any rolling 24 h."""

    async def reserve_sends(self, count: int, interval: float, now: float) -> float:
        """Take ``count`` consecutive send slots ``interval`` apart, shared by every process
        on the store; the time of the first (never before ``now``)."""

    async def due_jobs(self, now: float) -> int:
        """How many scheduled jobs are due by ``now`` (waiting ones included)."""


def job_entry_id(job: Job) -> str:
    """The id of the outbox entry a job becomes (one per scheduling, see ``Job.uid``)."""
    return f"{job.user}:job:{job.uid}"


def is_job_entry(entry_id: str) -> bool:
    """Whether an outbox entry is a job's (see :func:`job_entry_id`)."""
    return ":job:" in entry_id


def job_to_json(job: Job) -> dict[str, Any]:
    """A :class:`~bot.models.Job` as plain JSON data."""
    return {
        "id": job.id,
        "uid": job.uid,
        "user": job.user,
        "outgoing": outgoing_to_json(job.outgoing),
        "send_at": job.send_at,
        "key": job.key,
        "expires_at": job.expires_at,
        "resume": job.resume,
        "quiet_hours": job.quiet_hours,
        "state": job.state,
        "reason": job.reason,
        "error_code": job.error_code,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "wake_at": job.wake_at,
        "claim_token": job.claim_token,
        "claim_until": job.claim_until,
        "entry_id": job.entry_id,
    }


def job_from_json(data: Mapping[str, Any]) -> Job:
    """The inverse of :func:`job_to_json`."""
    return Job(
        id=data["id"],
        uid=data["uid"],
        user=data["user"],
        outgoing=outgoing_from_json(data["outgoing"]),
        send_at=float(data["send_at"]),
        key=data.get("key", ""),
        expires_at=float(data.get("expires_at", 0.0)),
        resume=data.get("resume", ""),
        quiet_hours=data.get("quiet_hours", ""),
        state=data.get("state", "scheduled"),
        reason=data.get("reason", ""),
        error_code=int(data.get("error_code", 0)),
        created_at=float(data.get("created_at", 0.0)),
        updated_at=float(data.get("updated_at", 0.0)),
        wake_at=float(data.get("wake_at", 0.0)),
        claim_token=data.get("claim_token", ""),
        claim_until=float(data.get("claim_until", 0.0)),
        entry_id=data.get("entry_id", ""),
    )


def resolve_job(job: Job, entry: OutboxEntry | None) -> Job:
    """A queued job as what became of its outbox entry: ``sent`` (how), ``skipped`` (why),
    ``failed`` (Meta's code), or still ``queued``."""
    if job.state != "queued" or entry is None:
        return job
    if entry.status in ("sent", "delivered", "read"):
        how = f"sent as {entry.sent_as}" + (f" ({entry.reason})" if entry.reason else "")
        return replace(job, state="sent", reason=how)
    if entry.status in ("skipped", "failed"):
        return replace(job, state=entry.status, reason=entry.reason, error_code=entry.error_code)
    return job
