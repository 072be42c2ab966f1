"""Builders shared by the engine tests: messages through the real webhook parser, records,
flow folders written to ``tmp_path``, and a chat that carries the record between turns."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path
from typing import Any

from bot.engine import Engine, Finding, Turn
from bot.models import InboundMessage, UserRecord
from bot.testing import FlowTester, visible_text
from bot.webhook import parse_message

FLOWS = Path(__file__).resolve().parents[2] / "flows"
NOW = 1_764_000_000.0
WA_ID = "5511999990000"
_ids = itertools.count(1)


def message(
    kind: str, body: dict[str, Any], *, user: str = WA_ID, name: str = ""
) -> InboundMessage:
    """An inbound message of ``kind`` parsed from a Meta-shaped item (no ``name``: the
    record's profile name stays)."""
    item = {
        "from": user,
        "id": f"wamid.{next(_ids)}",
        "timestamp": str(int(NOW)),
        "type": kind,
        kind: body,
    }
    return parse_message(item, profile_name=name)


def text(body: str, **kw: Any) -> InboundMessage:
    """A text message."""
    return message("text", {"body": body}, **kw)


def button(ident: str, title: str = "", **kw: Any) -> InboundMessage:
    """A reply-button press."""
    return message(
        "interactive",
        {"type": "button_reply", "button_reply": {"id": ident, "title": title or ident}},
        **kw,
    )


def row(ident: str, title: str = "", **kw: Any) -> InboundMessage:
    """A list-row choice."""
    return message(
        "interactive",
        {"type": "list_reply", "list_reply": {"id": ident, "title": title or ident}},
        **kw,
    )


def payload(value: str, label: str = "", **kw: Any) -> InboundMessage:
    """A template quick-reply press (message type ``button``)."""
    return message("button", {"payload": value, "text": label or value}, **kw)


def media(kind: str = "image", caption: str = "", **kw: Any) -> InboundMessage:
    """An image/document/... message."""
    return message(kind, {"id": "media-1", "mime_type": "image/jpeg", "caption": caption}, **kw)


def location(lat: float = -23.5, lon: float = -46.6, **kw: Any) -> InboundMessage:
    """A shared location."""
    return message("location", {"latitude": lat, "longitude": lon, "name": "Home"}, **kw)


def user(key: str = WA_ID, name: str = "Ana", **kw: Any) -> UserRecord:
    """A record as the dispatcher passes it: inbound facts applied, no flow yet."""
    return UserRecord(
        key=key, wa_id=key, profile_name=name, last_inbound_at=int(NOW), message_count=1, **kw
    )


def write(folder: Path, files: dict[str, str]) -> Path:
    """Write dedented files into ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
    return folder


def line(folder: Path, name: str, marker: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line of ``folder/name`` that contains ``marker``."""
    lines = (folder / name).read_text(encoding="utf-8").splitlines()
    hits = [i + 1 for i, content in enumerate(lines) if marker in content]
    assert len(hits) >= nth, f"{marker!r} not found {nth} time(s) in {name}"
    return hits[nth - 1]


def only(findings: list[Finding], needle: str) -> Finding:
    """The single finding whose message contains ``needle``."""
    hits = [f for f in findings if needle in f.message]
    assert len(hits) == 1, f"expected one finding with {needle!r}, got {hits or findings}"
    return hits[0]


def bodies(turn: Turn) -> list[str]:
    """The visible text of each reply: a text body, an interactive body or a caption."""
    return [visible_text(reply) for reply in turn.outgoing]


class Chat:
    """One user talking to an engine through :class:`bot.testing.FlowTester`; each turn's
    record is the next turn's input."""

    def __init__(self, engine: Engine, record: UserRecord | None = None) -> None:
        self.tester = FlowTester(engine, record=record or user(), now=NOW)

    @property
    def record(self) -> UserRecord:
        """The user's record after the last turn."""
        return self.tester.record

    @record.setter
    def record(self, record: UserRecord) -> None:
        self.tester.record = record

    @property
    def turns(self) -> list[Turn]:
        """Every turn so far."""
        return self.tester.turns

    async def send(self, msg: InboundMessage, now: float = NOW) -> Turn:
        """Handle one message at ``now`` and keep the new record."""
        version = self.record.version
        self.tester.now = now
        turn = (await self.tester.handle(msg)).turn
        assert turn.record.version == version
        return turn

    @property
    def at(self) -> str:
        """``flow.state`` the user is in now."""
        return self.tester.state
