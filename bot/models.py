"""Frozen value objects: what comes in, what goes out, and what is kept per user.

Nothing here does I/O; everything is a slotted ``@value_object`` dataclass (frozen to the
type checker) that can be built from and turned back into plain JSON-able data, so stores can
keep it and tests can compare it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, dataclass_transform

JSON = dict[str, Any]
_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value_object(cls: type[_T]) -> type[_T]:
    """A slotted dataclass that is frozen to the type checker: mypy refuses every assignment.

    At run time it is not frozen. A frozen dataclass sets each field through
    ``object.__setattr__`` in its ``__init__`` (five times the cost of a plain one), and the
    records every message builds and ``replace``-s (a user record has 16 fields; about 17
    objects per message) then took ~9% of the bot's own CPU (``bench/bench_logic.py
    --against``). Equality is by value; they are not hashable (nothing keys by them). What
    user code touches (a hook's context) stays frozen at run time too.
    """
    return dataclass(slots=True)(cls)


#: Message ``type`` values the parser knows; anything else is kept with ``type="unsupported"``.
MESSAGE_TYPES = frozenset(
    {
        "text",
        "interactive",
        "button",
        "image",
        "video",
        "audio",
        "document",
        "sticker",
        "location",
        "contacts",
        "reaction",
        "order",
        "system",
        "unsupported",
    }
)
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})

StatusName = Literal["sent", "delivered", "read", "failed", "deleted", "warning"]


def is_user_id(address: str) -> bool:
    """Whether ``address`` is a business-scoped user id (``US.1349…``), not a phone number.

    A ``wa_id`` is digits only; a BSUID is a country code, a dot, then letters and digits
    (``US.ENT.…`` for a parent id). Sends to one go out as ``recipient`` instead of ``to``.
    """
    return "." in address


@value_object
class ErrorInfo:
    """One item of an ``errors[]`` array (in statuses, unsupported messages or API errors)."""

    code: int
    title: str = ""
    message: str = ""
    details: str = ""


@value_object
class Interactive:
    """A reply to one of our interactive messages: a button, a list row or a WhatsApp Flow."""

    kind: str  # button_reply | list_reply | nfm_reply
    id: str = ""
    title: str = ""
    description: str = ""
    response_json: str = ""  # nfm_reply only


@value_object
class ButtonPress:
    """A quick-reply button pressed on a template message (type ``button``)."""

    payload: str
    text: str


@value_object
class Media:
    """An image, video, audio, document or sticker the user sent (fetch it by ``id``)."""

    kind: str
    id: str
    mime_type: str = ""
    sha256: str = ""
    caption: str = ""
    filename: str = ""
    voice: bool = False


@value_object
class Location:
    """A shared location."""

    latitude: float
    longitude: float
    name: str = ""
    address: str = ""


@value_object
class Reaction:
    """An emoji reaction to a message (empty ``emoji`` removes it)."""

    message_id: str
    emoji: str


@value_object
class Context:
    """What the message replies to, or that it was forwarded."""

    from_: str = ""
    id: str = ""
    forwarded: bool = False
    frequently_forwarded: bool = False


@value_object
class InboundMessage:
    """One item of ``messages[]``, with the sender's profile and the receiving number.

    ``user`` is the key the framework files the sender under: as parsed, the ``wa_id`` when
    the payload carries one, else the business-scoped ``user_id``; the store then resolves it
    to the user's one canonical key (the same person is one user whichever ids a payload
    carries, see ``README.md``, "User identity"). ``raw`` is the item exactly as Meta sent
    it, so nothing a later version adds is lost.
    """

    id: str
    user: str
    timestamp: int
    type: str
    wa_id: str = ""
    user_id: str = ""
    profile_name: str = ""
    phone_number_id: str = ""
    text: str = ""
    interactive: Interactive | None = None
    button: ButtonPress | None = None
    media: Media | None = None
    location: Location | None = None
    reaction: Reaction | None = None
    contacts: tuple[JSON, ...] = ()
    context: Context | None = None
    errors: tuple[ErrorInfo, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@value_object
class StatusUpdate:
    """One item of ``statuses[]``: what became of a message *we* sent (``id`` is its wamid)."""

    id: str
    status: str
    timestamp: int
    #: The user the status is filed under: as parsed, ``recipient_id`` (the phone number)
    #: or else ``recipient_user_id``; the store resolves it to the user's canonical key.
    recipient: str
    phone_number_id: str = ""
    errors: tuple[ErrorInfo, ...] = ()
    #: ``biz_opaque_callback_data`` of the message we sent: Meta echoes it in every status.
    callback_data: str = ""
    #: The recipient's business-scoped user id (``recipient_user_id``), when Meta sent one.
    recipient_user_id: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: What Meta says the message costs (``pricing`` of the status), when it says so.
    pricing: Pricing | None = None


@value_object
class Pricing:
    """A status's ``pricing``: whether and how Meta bills the message (never a price)."""

    billable: bool
    category: str  # marketing | utility | authentication | service | ...
    type: str  # regular | free_customer_service | free_entry_point
    pricing_model: str = "PMP"


TemplateEventKind = Literal["status", "category"]


@value_object
class TemplateEvent:
    """A ``message_template_status_update`` or ``template_category_update`` webhook change.

    ``time`` is the entry's ``time`` (unix seconds): webhooks come in any order, and the
    newest event about a variant wins. For a status update, ``status`` is Meta's ``event``
    (APPROVED, PAUSED, REINSTATED...), ``reason`` its reason and ``category`` the template's
    category. For a category update, ``category`` is the new category and
    ``previous_category`` the old one; an advance notice instead has ``correct_category``
    (what it will become) and ``effective_at`` (``category_update_timestamp``).
    """

    kind: TemplateEventKind
    name: str
    language: str
    time: int
    template_id: str = ""
    status: str = ""
    reason: str = ""
    category: str = ""
    previous_category: str = ""
    correct_category: str = ""
    effective_at: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def notice(self) -> bool:
        """Whether this announces a category change to come (nothing changes yet)."""
        return self.kind == "category" and bool(self.correct_category)

    @property
    def key(self) -> str:
        """What makes a redelivered webhook a duplicate."""
        what = self.status or f"{self.previous_category}>{self.correct_category or self.category}"
        return f"{self.kind}:{self.name}:{self.language}:{what}:{self.time}:{self.effective_at}"


@value_object
class IdentityChange:
    """A user's business-scoped id changed (a ``user_id_update`` webhook item).

    ``previous`` is the id the framework may know them by, ``user_id`` the one to use from
    now on; ``wa_id`` is their phone number when Meta shares it.
    """

    previous: str
    user_id: str
    wa_id: str = ""
    timestamp: int = 0


@value_object
class Delivery:
    """Everything one webhook POST carried, in payload order."""

    messages: tuple[InboundMessage, ...] = ()
    statuses: tuple[StatusUpdate, ...] = ()
    template_events: tuple[TemplateEvent, ...] = ()
    identity_changes: tuple[IdentityChange, ...] = ()


@value_object
class UserRecord:
    """What the framework keeps about one user.

    ``version`` increases by one with every write; writers pass the version they read and the
    store refuses the write if someone else got there first (no lost update).
    ``last_inbound_at`` is the ``timestamp`` of the newest inbound message (unix seconds):
    the customer-service window closes 24 h after it. Records stored before a field existed
    load with its default.
    """

    key: str
    wa_id: str = ""
    user_id: str = ""
    profile_name: str = ""
    last_inbound_at: int = 0
    message_count: int = 0
    flow: str = ""
    state: str = ""
    variables: Mapping[str, Any] = field(default_factory=dict)
    language: str = ""
    opted_out: bool = False
    undeliverable: bool = False  # WhatsApp answered 131026; cleared when the user writes
    version: int = 0
    #: A human has taken the conversation over (the console, or a hook's ``ctx.handoff``):
    #: the flow records the user's messages and sends nothing until they are handed back.
    paused: bool = False
    paused_reason: str = ""  # why, as the operator or the hook said it
    paused_at: float = 0.0  # when (unix seconds)


@value_object
class TemplateCall:
    """A template fallback, its parameters already rendered to text.

    ``parameters`` is a tuple of strings for positional templates or a mapping name → text
    for named ones; ``components`` carries header/button parameters when the template has them.
    ``language`` is empty when the sender picks the variant by the user's language chain.
    """

    name: str
    parameters: tuple[str, ...] | Mapping[str, str] = ()
    language: str = ""
    header: tuple[str, ...] = ()
    buttons: tuple[str, ...] = ()  # quick-reply payloads, by button index


@value_object
class Outgoing:
    """A reply the engine decided on: a session message and, optionally, its template fallback.

    ``message`` is the Cloud API body *without* ``messaging_product``/``to`` (for example
    ``{"type": "text", "text": {"body": "hi", "preview_url": False}}``); ``None`` for a
    business-initiated template-only send. A reply with ``send_at`` is a scheduled reminder:
    it waits in the outbox without holding up the user's other replies, and the window
    decision is made when it goes out.
    """

    message: JSON | None
    fallback: TemplateCall | None = None
    note: str = ""  # why this reply exists (state, trigger); shown in logs and ``bot chat``
    send_at: float = 0.0  # a reminder: not before this unix time (0: as soon as possible)


OutboxState = Literal["pending", "sent", "delivered", "read", "failed", "skipped"]


@value_object
class OutboxEntry:
    """A reply queued for a user, in the order it must go out (``seq`` per user)."""

    id: str
    user: str
    seq: int
    outgoing: Outgoing
    created_at: float
    status: str = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    wamid: str = ""
    sent_as: str = ""  # session | template | ""
    reason: str = ""  # why it went as a template, or why it was not sent / failed
    error_code: int = 0
    fallback_sent: bool = False
    #: When the current attempt was started (0: none in flight). An attempt in flight whose
    #: answer was never recorded may have reached Meta: it is resent only after a grace
    #: period in which no status carrying its callback data arrived.
    inflight_at: float = 0.0
    #: The lease token of the worker that started the attempt in flight.
    inflight_token: str = ""

    @property
    def callback_data(self) -> str:
        """What this attempt sends as ``biz_opaque_callback_data`` (Meta echoes it)."""
        return callback_data(self.id, self.attempts)


CALLBACK_PREFIX = "wb1:"


def callback_data(entry_id: str, attempt: int) -> str:
    """The callback data naming an outbox entry's attempt (``wb1:<attempt>:<entry id>``)."""
    return f"{CALLBACK_PREFIX}{attempt}:{entry_id}"


def parse_callback_data(data: str) -> tuple[str, int] | None:
    """The (entry id, attempt) a status's callback data names, or ``None`` if not ours."""
    if not data.startswith(CALLBACK_PREFIX):
        return None
    attempt, sep, entry_id = data[len(CALLBACK_PREFIX) :].partition(":")
    if not sep or not entry_id or not attempt.isdigit():
        return None
    return entry_id, int(attempt)


#: Delivery progress of a sent message, in the order it happens.
DELIVERY_RANK: Mapping[str, int] = {"pending": 0, "sent": 1, "delivered": 2, "read": 3}


def delivery_status(current: str, new: str) -> str:
    """The status an outbox entry has after ``new`` is reported for it at ``current``.

    Progress only moves forward (a late ``delivered`` never overwrites ``read``); anything
    that is not delivery progress (``failed``, ``skipped``) is taken as it is. Both stores
    and the sender call this one function.
    """
    if new in DELIVERY_RANK and current in DELIVERY_RANK:
        return new if DELIVERY_RANK[new] > DELIVERY_RANK[current] else current
    return new


#: A job's life: ``scheduled`` until a dispatcher hands it to the user's outbox
#: (``queued``), then what became of that message (``sent``, ``skipped``, ``failed``); or
#: ``cancelled``, ``expired``, or ``skipped`` before it was queued (opted out, template).
JobState = Literal["scheduled", "queued", "sent", "skipped", "failed", "cancelled", "expired"]
JOB_STATES: tuple[str, ...] = (
    "scheduled",
    "queued",
    "sent",
    "skipped",
    "failed",
    "cancelled",
    "expired",
)


@value_object
class Job:
    """A one-shot reminder for one user, tied to one event (see :mod:`bot.jobs`).

    Attributes:
        id: the job's id: ``user|key`` for a keyed job (scheduling the key again replaces
            it), else random.
        uid: new at every scheduling; the outbox entry the job becomes is named after it, so
            a job handed over twice (a crash in between) is queued once.
        user: the user's key (wa_id or business-scoped id).
        outgoing: what to send: a session message and/or its template fallback.
        send_at: when, unix seconds (not before).
        key: the event it belongs to (``appt:8812``), unique per user; ``""`` for none.
        expires_at: not sent after this time (0: never); then ``expired``.
        resume: ``flow.state`` the user's reply to this message's buttons lands in.
        quiet_hours: ``"21:00-08:00"`` for this job, ``"off"`` for none, ``""`` for the
            configured ones.
        state: see :data:`JobState`.
        reason: why it was skipped, why it waits, how it was sent.
        error_code: Meta's code when it failed.
        wake_at: not looked at before this time (its ``send_at``, later while it waits).
        claim_token / claim_until: the dispatcher holding it (handed over or settled only
            under that token; taken over by another once ``claim_until`` passed).
        entry_id: the outbox entry it became.
    """

    id: str
    uid: str
    user: str
    outgoing: Outgoing
    send_at: float
    key: str = ""
    expires_at: float = 0.0
    resume: str = ""
    quiet_hours: str = ""
    state: str = "scheduled"
    reason: str = ""
    error_code: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    wake_at: float = 0.0
    claim_token: str = ""
    claim_until: float = 0.0
    entry_id: str = ""
