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

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from bot.models import (
    IdentityChange,
    InboundMessage,
    Job,
    OutboxEntry,
    Outgoing,
    StatusUpdate,
    TemplateEvent,
    UserRecord,
    delivery_status,
    value_object,
)
from bot.store._codec import (
    delivery_fields,
    dumps,
    inbound_from_json,
    inbound_to_json,
    new_outbox_entries,
    outbox_from_json,
    outbox_id,
    outbox_to_json,
    outgoing_from_json,
    outgoing_to_json,
    status_from_json,
    status_to_json,
    user_from_json,
    user_to_json,
)
from bot.store._identity import (
    AliasCache,
    Identity,
    Resolved,
    change_identity,
    filed,
    filed_status,
    message_identity,
    report_conflicts,
    resolve_identities,
    status_identity,
)
from bot.store._jobs import (
    OUTCOMES,
    REACH_SECONDS,
    Reach,
    is_job_entry,
    job_entry_id,
    job_from_json,
    job_to_json,
    resolve_job,
)
from bot.store._ledgers import (
    PRICING_GRACE_SECONDS,
    LiveVariant,
    PricingCount,
    TemplateView,
    apply_template_event,
    count_pricing,
    live_from_json,
    live_to_json,
    pricing_closed_before,
    pricing_day,
    pricing_row,
)


@value_object
class Lease:
    """A worker's hold on one user; ``token`` is new at every claim and fences its writes."""

    user: str
    owner: str
    token: str
    until: float


@value_object
class Work:
    """A claimed user and everything pending for them, read in one round trip.

    Attributes:
        lease: the hold that fences this worker's writes.
        record: the user's record (a blank one, ``version`` 0, for a user never seen).
        inbound: pending inbox messages in arrival order (see the module docstring).
        statuses: unapplied status items for the user, oldest first.
        outbox: pending outbox entries in ``seq`` order (reminders not yet due included).
        handled: the turn the claim's own write stored (:meth:`Store.add_and_claim`'s
            ``turns``): ``record`` is then the record it stored, and the other lists are
            empty, for the user had no other work.
    """

    lease: Lease
    record: UserRecord
    inbound: tuple[InboundMessage, ...] = ()
    statuses: tuple[StatusUpdate, ...] = ()
    outbox: tuple[OutboxEntry, ...] = ()
    handled: Committed | None = None


@value_object
class PreTurn:
    """A message's turn, run before the message was stored (see :meth:`Store.add_and_claim`).

    Attributes:
        message_id: the message's wamid.
        record: the user's record after the turn; its ``version`` is the one the turn read.
        outgoing: the turn's replies, in order.
        now: when the turn ran (its ``now``, as :meth:`Store.commit_turn`'s).
    """

    message_id: str
    record: UserRecord
    outgoing: tuple[Outgoing, ...]
    now: float


@value_object
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
        turns: Mapping[str, PreTurn] | None = None,
    ) -> tuple[Added, list[Work]]:
        """:meth:`add_inbound`, and :meth:`claim` of ``users`` in the same step where cheap.

        The webhook's path: a store that can claim in the insert's own transaction saves the
        worker a round trip. Returns the insert's flags and the work of each user claimed;
        a store may claim none (the caller then claims as usual) but never claims a user
        another owner holds, nor one no message was filed under (``Added.users``).

        ``turns`` (by user) are turns run before the insert, on the records
        :meth:`known_record` gave. A store may commit such a turn in the same write, as
        :meth:`commit_turn` would, with its replies in flight for the lease: only if its
        message is new, filed under that user, and the user's only pending work, and the
        stored record still has the version the turn read. The user's work then says so
        (``Work.handled``). Any other turn is ignored: the message is pending as usual.
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

    def known_record(self, user: str) -> UserRecord | None:
        """The record of ``user`` as this process last stored or read it, if it remembers
        it (no I/O; it may be stale: writes that rely on it check its ``version``)."""

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
        Pricing ledger rows of closed days (:func:`pricing_closed_before`) are rolled up into
        per-day counts, in the same write as their deletion, so counts never change.
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
        ``read`` statuses are not counted (see :func:`pricing_row`).
        """

    async def pricing_counts(self, since: float = 0.0) -> list[PricingCount]:
        """Ledger counts per UTC day, pricing category, type and billable, oldest day first.

        ``since``: rows from that time on, and the counts of rolled-up days from its day on
        (a rolled-up day counts whole).
        """

    # --- read-only views for the console --------------------------------------------------

    async def list_users(self, limit: int = 100) -> list[UserRecord]:
        """Users with a record, the one who wrote last first (ties by key); at most ``limit``."""

    async def inbox_of(self, user: str, limit: int = 100) -> list[InboxItem]:
        """The user's newest ``limit`` inbox messages in arrival order, whatever their status."""


@value_object
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


def merge_saved(stored_status: str, stored_wamid: str, entry: OutboxEntry) -> str | None:
    """The status to store when the owner saves ``entry`` over a stored one; ``None``: the
    stored entry stands and the save is dropped.

    A status webhook may have moved the same sent message further along meanwhile; the
    owner's write then keeps that status. A status carrying the entry's callback data may
    also have settled the attempt in flight while the owner still waited for Meta's answer,
    which then never came: the owner's "outcome unknown" (an attempt in flight, no wamid)
    must not undo that, or the reply would be sent again once the grace ran out.
    """
    if entry.wamid and entry.wamid == stored_wamid:
        return delivery_status(stored_status, entry.status)
    if stored_wamid and not entry.wamid and entry.inflight_at:
        return None
    return entry.status


# --- reminder jobs (see bot.jobs) ------------------------------------------------------------


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


__all__ = [
    "OUTCOMES",
    "PRICING_GRACE_SECONDS",
    "REACH_SECONDS",
    "Added",
    "AliasCache",
    "Committed",
    "Identity",
    "InboxItem",
    "JobStore",
    "Lease",
    "LiveVariant",
    "PreTurn",
    "PricingCount",
    "Reach",
    "Resolved",
    "Store",
    "TemplateView",
    "Work",
    "apply_template_event",
    "change_identity",
    "count_pricing",
    "delivery_fields",
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
    "pricing_closed_before",
    "pricing_day",
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
