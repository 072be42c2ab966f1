"""``bot chat``: talk to your flows in the terminal, through the real pipeline.

Every line you type becomes an inbound message, is handled by the same dispatcher, engine
and sender as under ``bot run``, and each reply is printed as it would be sent: as a session
message or as its template fallback, and why.

The conversation lives in a throwaway SQLite store, deleted at the end, so neither the
chat's fake clock (``/wait``) nor its made-up user ever reach the bot's real store.
``--store URL`` chats in a real store instead; ``/wait`` is then refused.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from bot._pipeline import build_pipeline
from bot.config import Config
from bot.errors import BotError
from bot.log import configure_logging
from bot.models import JSON, OutboxEntry, UserRecord
from bot.runtime import load_engine, window_policy
from bot.store import store_from_url
from bot.templates import TemplateRegistry
from bot.webhook import parse_message
from bot.window import Decision, window_closes_at

HELP = """Type a message and press Enter. Pick a button or list row by its number.
  /wait 25h      move the clock (s, m, h, d) and send whatever reminders fall due
  /late 25h TEXT a message written 25h ago that only arrives now (window already closed)
  /image [CAPTION]  /document  /audio  /location LAT LON   send media or a location
  /state         show the flow, state, variables and window
  /reset         start over as a new user
  /help, /quit"""

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``30m``, ``25h``, ``2d``; raises ``ValueError`` otherwise."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 25h, 2d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class ChatTransport:
    """Prints each reply as the user would see it, and numbers its choices."""

    def __init__(self, out: TextIO, registry: TemplateRegistry | None) -> None:
        self.out = out
        self.registry = registry
        self.choices: list[tuple[str, str, str]] = []  # (kind, id, title)
        self.decisions: dict[str, Decision] = {}
        self._entry: OutboxEntry | None = None
        self._count = 0

    def on_decision(self, entry: OutboxEntry, decision: Decision) -> None:
        """Remember how the next send goes out; print replies that are not sent."""
        self._entry = entry
        if decision.kind == "skip":
            self.out.write(f"  ({decision.reason})\n")
        else:
            self.out.write(f"  [{decision.kind}: {decision.reason}]\n")

    async def send(self, to: str, message: JSON, *, callback: str = "") -> str:
        """Print the message and return a made-up wamid."""
        self._count += 1
        self.out.write(self.render(message))
        return f"wamid.chat.{self._count}"

    def render(self, message: JSON) -> str:
        """The message as terminal text."""
        kind = message.get("type", "")
        body: dict[str, Any] = message.get(kind) or {}
        if kind == "text":
            return _bubble(body.get("body", ""))
        if kind == "interactive":
            return self._interactive(body)
        if kind == "template":
            return self._template(body)
        if kind == "location":
            where = f"{body.get('name', '')} {body.get('address', '')}".strip()
            return _bubble(f"📍 {body.get('latitude')}, {body.get('longitude')} {where}")
        caption = body.get("caption") or body.get("filename") or ""
        return _bubble(f"[{kind}] {body.get('link') or body.get('id')} {caption}".rstrip())

    def _interactive(self, body: dict[str, Any]) -> str:
        text = _bubble(body.get("body", {}).get("text", ""))
        action = body.get("action", {})
        self.choices = choices_of(body)
        if body.get("type") == "button":
            return text + "".join(
                f"    {n}. {title}\n" for n, (_, _, title) in enumerate(self.choices, 1)
            )
        text += f"  ☰ {action.get('button', '')}\n"
        number = 0
        for section in action.get("sections", []):
            if section.get("title"):
                text += f"    {section['title']}\n"
            for row in section.get("rows", []):
                number += 1
                about = f" — {row['description']}" if row.get("description") else ""
                text += f"      {number}. {row['title']}{about}\n"
        return text

    def _template(self, body: dict[str, Any]) -> str:
        name, language = body.get("name", ""), body.get("language", {}).get("code", "")
        template = self.registry.get(name) if self.registry else None
        call = self._entry.outgoing.fallback if self._entry else None
        if template is not None and call is not None:
            try:
                return _bubble(template.render(language, call), f"template {name} ({language})")
            except BotError:
                pass
        return _bubble(str(body.get("components", "")), f"template {name} ({language})")


def choices_of(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The (reply kind, id, title) a user can pick in an interactive message body, in order."""
    action = body.get("action", {})
    if body.get("type") == "button":
        return [
            ("button_reply", b["reply"]["id"], b["reply"]["title"])
            for b in action.get("buttons", [])
        ]
    return [
        ("list_reply", row["id"], row["title"])
        for section in action.get("sections", [])
        for row in section.get("rows", [])
    ]


def _paused(record: UserRecord) -> str:
    """Why a human has the user, and how they get the bot back."""
    return f"{record.paused_reason}; hand back in the console (/console)"


def _bubble(text: str, label: str = "") -> str:
    head = f"bot ({label}): " if label else "bot: "
    lines = str(text).splitlines() or [""]
    return head + lines[0] + "\n" + "".join(f"     {line}\n" for line in lines[1:])


class FakeClock:
    """The wall clock plus however far ``/wait`` moved it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class ChatSession:
    """One terminal user talking to the flows; ``handle_line`` is one line of input."""

    def __init__(
        self,
        config: Config,
        user: str,
        name: str,
        out: TextIO,
        *,
        store_url: str | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.config, self.user, self.name, self.out = config, user, name, out
        self.clock = clock or FakeClock()
        self.count = 0
        engine, registry = load_engine(config)  # first: a refusal leaves nothing behind
        self.real_store = store_url is not None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        if store_url is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="windowbot-chat-")
            store_url = f"sqlite:///{Path(self._scratch.name) / 'chat.db'}"
        self.store = store_from_url(store_url, base_dir=config.base_dir)
        self.where = "a throwaway store" if not self.real_store else self.store.description
        self.transport = ChatTransport(out, registry)
        pipeline = build_pipeline(
            config,
            self.store,
            self.transport,
            handler=engine.handle,
            error_replies=engine.error_replies,
            registry=registry,
            policy=window_policy(config),
            on_decision=self.transport.on_decision,
            clock=self.clock,
        )
        self.dispatcher = pipeline.dispatcher

    async def __aenter__(self) -> ChatSession:
        try:
            await self.store.open()
            await self._restore_choices()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the dispatcher, close the store, delete a throwaway one."""
        try:
            await self.dispatcher.stop()
            await self.store.close()
        finally:
            if self._scratch is not None:
                self._scratch.cleanup()
                self._scratch = None

    async def _restore_choices(self) -> None:
        """Make the buttons of the last interactive reply pickable again (a real store)."""
        for entry in reversed(await self.store.outbox_of(self.user, limit=20)):
            message = entry.outgoing.message
            if entry.sent_as == "session" and message and message.get("type") == "interactive":
                self.transport.choices = choices_of(message.get("interactive") or {})
                return

    async def handle_line(self, line: str) -> bool:
        """Act on one line of input; ``False`` when the user wants to quit."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            return await self._command(line)
        if line.isdigit() and 0 < int(line) <= len(self.transport.choices):
            kind, rid, title = self.transport.choices[int(line) - 1]
            self.out.write(f"  → [{title}]\n")
            await self._inbound("interactive", {"type": kind, kind: {"id": rid, "title": title}})
        else:
            await self._inbound("text", {"body": line})
        return True

    async def _command(self, line: str) -> bool:
        cmd, _, rest = line.partition(" ")
        try:
            if cmd in ("/quit", "/exit"):
                return False
            if cmd == "/help":
                self.out.write(HELP + "\n")
            elif cmd == "/wait" and self.real_store:
                self.out.write(
                    f"  /wait is off in {self.where}: the chat's clock must not reach a real "
                    "store (chat without --store to try time)\n"
                )
            elif cmd == "/wait":
                self.clock.offset += parse_duration(rest)
                when = time.strftime("%a %d %b %H:%M UTC", time.gmtime(self.clock()))
                self.out.write(f"  (clock moved to {when})\n")
                await self.dispatcher.sweep()
                await self.dispatcher.idle()
            elif cmd == "/late":
                ago, _, text = rest.partition(" ")
                await self._inbound("text", {"body": text or "hello"}, ago=parse_duration(ago))
            elif cmd in ("/image", "/document", "/audio", "/video", "/sticker"):
                media = {"id": f"media.{self.count}", "mime_type": "application/octet-stream"}
                if rest:
                    media["caption"] = rest
                await self._inbound(cmd[1:], media)
            elif cmd == "/location":
                lat, lon = (float(x) for x in rest.split()[:2])
                await self._inbound("location", {"latitude": lat, "longitude": lon})
            elif cmd == "/state":
                await self._show_state()
            elif cmd == "/reset":
                await self._reset()
            else:
                self.out.write(f"  unknown command {cmd}; /help lists them\n")
        except ValueError as exc:
            self.out.write(f"  {exc}\n")
        return True

    async def _inbound(self, kind: str, body: JSON, *, ago: float = 0.0) -> None:
        self.count += 1
        sent = self.clock() - ago
        item = {
            "from": self.user,
            "id": f"wamid.chat.in.{int(sent * 1000)}.{self.count}",
            "timestamp": str(int(sent)),
            "type": kind,
            kind: body,
        }
        message = parse_message(item, profile_name=self.name, phone_number_id="chat")
        await self.store.add_inbound([message], self.clock())
        self.dispatcher.notify(self.user)
        await self.dispatcher.idle()
        record = await self.store.get_user(self.user)
        if record is not None and record.paused:
            self.out.write(f"  (the bot is paused for you: {_paused(record)})\n")

    async def _show_state(self) -> None:
        record = await self.store.get_user(self.user)
        if record is None or not record.flow:
            self.out.write("  (new user: no flow or state yet; your next message starts one)\n")
            return
        closes = window_closes_at(record)
        left = closes - self.clock()
        window = f"open for {left / 3600:.1f} h more" if left > 0 else "closed"
        self.out.write(
            f"  flow {record.flow}, state {record.state}, window {window}\n"
            f"  variables {dict(record.variables)}\n"
        )
        if record.paused:
            self.out.write(f"  paused: {_paused(record)}\n")

    async def _reset(self) -> None:
        now = self.clock()
        work = await self.store.claim(self.user, "chat-reset", now + 30, now, limit=1)
        if work is None:
            raise BotError(f"user {self.user} is being handled by a running bot; try again")
        try:
            record = work.record
            if record.version:
                blank = UserRecord(key=record.key, wa_id=record.wa_id, version=record.version)
                await self.store.commit_turn(work.lease, None, blank, [], now)
        finally:
            await self.store.release([work.lease])
        self.transport.choices = []
        self.out.write("  (starting over as a new user)\n")


def run_chat(config: Config, user: str, name: str, *, store_url: str | None = None) -> int:
    """The ``bot chat`` loop on the terminal; Ctrl-C or Ctrl-D ends it at once.

    Lines are read between turns, outside the event loop (nothing runs while the chat waits
    for you), so Ctrl-C interrupts the read itself instead of waiting for Enter.
    """
    out, clock = sys.stdout, FakeClock()
    level = config.log.level if config.log.level in ("warning", "error") else "warning"
    configure_logging(level, config.log.format, clock=clock)  # keep the conversation readable
    with asyncio.Runner() as runner:
        session = ChatSession(config, user, name, out, store_url=store_url, clock=clock)
        runner.run(session.__aenter__())
        try:
            out.write(
                f"Chatting as {name} ({user}) with the flows in {config.flows.dir}, "
                f"in {session.where}. /help\n"
            )
            while True:
                try:
                    line = input("you: ")
                except EOFError:
                    out.write("\n")
                    return 0
                except KeyboardInterrupt:
                    out.write("\n")
                    return 130
                if not runner.run(session.handle_line(line)):
                    return 0
        finally:
            runner.run(session.close())
