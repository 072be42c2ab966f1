"""An in-process flow tester: one user talking to a flows folder, turn by turn, on a fake clock.

No HTTP, no store: each message is built as Meta sends it, parsed by the real webhook parser,
applied to the user's record as the dispatcher does and run through the real engine; the
record each turn returns is the next turn's input. Re-exported by :mod:`bot.testing`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.dispatcher import apply_inbound
from bot.engine import Engine, Reminder, Turn
from bot.errors import FlowError
from bot.models import InboundMessage, Outgoing, UserRecord
from bot.runtime import fallback_checker, load_registry
from bot.webhook import parse_message

#: Where the fake clock starts (unix seconds): 2025-11-24 16:00 UTC, a Monday.
START = 1_764_000_000.0
WINDOW_SECONDS = 24 * 3600
_wamids = itertools.count(1)


def visible_text(reply: Outgoing) -> str:
    """What the user reads first: a text body, an interactive body, a caption, or the kind.

    A template-only reply reads as ``template <name>``.
    """
    message = reply.message
    if message is None:
        return f"template {reply.fallback.name}" if reply.fallback else ""
    kind = str(message.get("type", ""))
    content = message.get(kind, {})
    if kind == "text":
        return str(content["body"])
    if kind == "interactive":
        return str(content["body"]["text"])
    return str(content.get("caption", kind)) if isinstance(content, Mapping) else kind


@dataclass(frozen=True, slots=True)
class Answer:
    """What one message got back.

    Attributes:
        turn: the engine's whole result (record, replies, reminders, trigger).
    """

    turn: Turn

    @property
    def replies(self) -> tuple[Outgoing, ...]:
        """The replies, in order."""
        return self.turn.outgoing

    @property
    def texts(self) -> list[str]:
        """The visible text of each reply (see :func:`visible_text`)."""
        return [visible_text(r) for r in self.turn.outgoing]

    @property
    def choices(self) -> list[str]:
        """The button titles and list-row titles the last interactive reply offers."""
        for reply in reversed(self.turn.outgoing):
            inter = (reply.message or {}).get("interactive")
            if inter is None:
                continue
            action = inter["action"]
            if "buttons" in action:
                return [b["reply"]["title"] for b in action["buttons"]]
            return [row["title"] for s in action["sections"] for row in s["rows"]]
        return []

    @property
    def trigger(self) -> str:
        """What fired: a rule's label, ``start``, ``reprompt``..."""
        return self.turn.trigger


class FlowTester:
    """One user talking to an engine, on a fake clock that moves only when told.

    Example::

        bot = FlowTester.load("flows")
        answer = await bot.send("hi")
        assert "Welcome" in answer.texts[0] and bot.state == "welcome.menu"
        await bot.tap("book")
        bot.advance(hours=25)  # the window has closed: fallbacks would go out now

    Args:
        engine: the compiled flows (:meth:`load` reads a folder).
        user: the user's wa_id.
        name: the user's WhatsApp profile name.
        now: where the clock starts (unix seconds).
        record: start from this record instead of a new user.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        user: str = "15550000001",
        name: str = "Test User",
        now: float = START,
        record: UserRecord | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.now = now
        self.record = record or UserRecord(key=user, wa_id=user)
        self.turns: list[Turn] = []
        self.pending: list[Reminder] = []

    @classmethod
    def load(cls, flows_dir: str | Path, **kwargs: Any) -> FlowTester:
        """A tester on the flows folder, checked as ``bot run`` checks it.

        Raises:
            FlowError: the flows or ``templates.yaml`` have errors (``findings`` lists them).
        """
        folder = Path(flows_dir)
        registry, findings = load_registry(folder)
        errors: list[object] = [f for f in findings if f.severity == "error"]
        if errors:
            listing = "\n".join(str(f) for f in errors)
            raise FlowError(f"{len(errors)} error(s) in templates.yaml:\n{listing}", list(errors))
        return cls(Engine.load(folder, fallback_checker=fallback_checker(registry)), **kwargs)

    @property
    def state(self) -> str:
        """``flow.state`` the user is in now."""
        return f"{self.record.flow}.{self.record.state}"

    @property
    def vars(self) -> Mapping[str, Any]:
        """The user's flow variables."""
        return self.record.variables

    @property
    def window_open(self) -> bool:
        """Whether the user wrote within the last 24 hours (session messages allowed)."""
        return self.now < self.record.last_inbound_at + WINDOW_SECONDS

    async def send(self, text: str) -> Answer:
        """The user types ``text``."""
        return await self._item("text", {"body": text})

    async def tap(self, button_id: str, title: str = "") -> Answer:
        """The user taps the reply button ``button_id`` of an interactive message."""
        reply = {"id": button_id, "title": title or button_id}
        return await self._item("interactive", {"type": "button_reply", "button_reply": reply})

    async def pick(self, row_id: str, title: str = "") -> Answer:
        """The user picks the row ``row_id`` of a list message."""
        row = {"id": row_id, "title": title or row_id}
        return await self._item("interactive", {"type": "list_reply", "list_reply": row})

    async def press(self, payload: str, label: str = "") -> Answer:
        """The user taps a template's quick-reply button whose payload is ``payload``."""
        return await self._item("button", {"payload": payload, "text": label or payload})

    async def share_location(self, latitude: float, longitude: float, name: str = "") -> Answer:
        """The user shares a location."""
        content: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
        if name:
            content["name"] = name
        return await self._item("location", content)

    async def send_media(self, kind: str = "image", caption: str = "") -> Answer:
        """The user sends an image, video, audio, document or sticker."""
        content: dict[str, Any] = {"id": f"media-{next(_wamids)}", "mime_type": "image/jpeg"}
        if caption:
            content["caption"] = caption
        return await self._item(kind, content)

    async def handle(self, message: InboundMessage) -> Answer:
        """Run any inbound message as the dispatcher would, at the clock's time."""
        base = apply_inbound(self.record, message, self.now)
        turn = await self.engine.handle(base, message, self.now)
        self.record = turn.record
        self.turns.append(turn)
        self.pending += turn.reminders
        self.pending.sort(key=lambda r: r.at)
        return Answer(turn)

    def advance(
        self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0
    ) -> list[Reminder]:
        """Move the clock forward; the reminders that came due meanwhile, in time order."""
        self.now += seconds + 60 * minutes + 3600 * hours
        due = [r for r in self.pending if r.at <= self.now]
        self.pending = [r for r in self.pending if r.at > self.now]
        return due

    async def _item(self, kind: str, content: Mapping[str, Any]) -> Answer:
        item = {
            "from": self.record.wa_id or self.record.key,
            "id": f"wamid.TESTER{next(_wamids)}",
            "timestamp": str(int(self.now)),
            "type": kind,
            kind: dict(content),
        }
        return await self.handle(parse_message(item, profile_name=self.name))
