"""``bot chat``: talk to your flows in the terminal, through the real pipeline.

Every line you type becomes an inbound message in the configured store, is handled by the
same dispatcher, engine and sender as under ``bot run``, and each reply is printed as it
would be sent: as a session message or as its template fallback, and why.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TextIO

from bot.config import Config
from bot.dispatcher import Dispatcher
from bot.errors import BotError
from bot.jobs import JobDispatcher, job_policy
from bot.models import JSON, OutboxEntry, UserRecord
from bot.runtime import load_engine, window_policy
from bot.scheduling import schedule_turn
from bot.sender import Sender
from bot.store import store_from_url
from bot.store.base import JobStore
from bot.templates import TemplateRegistry
from bot.webhook import parse_message
from bot.window import Decision, window_closes_at

HELP = """Type a message and press Enter. Pick a button or list row by its number.
  /wait 25h      move the clock (s, m, h, d); reminders due meanwhile go out at their time
  /jobs          your reminders: when, key, state and why
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
            self.out.write(f"  (not sent: {decision.reason})\n")
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
        self.choices = []
        if body.get("type") == "button":
            for button in action.get("buttons", []):
                reply = button["reply"]
                self.choices.append(("button_reply", reply["id"], reply["title"]))
        else:
            text += f"  ☰ {action.get('button', '')}\n"
            for section in action.get("sections", []):
                if section.get("title"):
                    text += f"    {section['title']}\n"
                for row in section.get("rows", []):
                    self.choices.append(("list_reply", row["id"], row["title"]))
                    about = f" — {row['description']}" if row.get("description") else ""
                    text += f"      {len(self.choices)}. {row['title']}{about}\n"
        if body.get("type") == "button":
            return text + "".join(
                f"    {n}. {title}\n" for n, (_, _, title) in enumerate(self.choices, 1)
            )
        return text

    def _template(self, body: dict[str, Any]) -> str:
        name, language = body.get("name", ""), body.get("language", {}).get("code", "")
        template = self.registry.get(name) if self.registry else None
        call = self._entry.outgoing.fallback if self._entry else None
        if template is not None and call is not None:
            self.choices = [  # its quick-reply buttons, tapped by number
                ("button", str(c["parameters"][0]["payload"]), b.text)
                for c in body.get("components", [])
                if c.get("sub_type") == "quick_reply"
                for b in template.variants[language].buttons[int(c["index"]) : int(c["index"]) + 1]
            ]
            try:
                text = _bubble(template.render(language, call), f"template {name} ({language})")
            except BotError:
                return _bubble(str(body.get("components", "")), f"template {name} ({language})")
            return text + "".join(
                f"    {n}. {title}\n" for n, (_, _, title) in enumerate(self.choices, 1)
            )
        return _bubble(str(body.get("components", "")), f"template {name} ({language})")


def _paused(record: UserRecord) -> str:
    """Why a human has the user, and how they get the bot back."""
    return f"{record.paused_reason}; hand back in the console (/console)"


def _bubble(text: str, label: str = "") -> str:
    head = f"bot ({label}): " if label else "bot: "
    lines = str(text).splitlines() or [""]
    return head + lines[0] + "\n" + "".join(f"     {line}\n" for line in lines[1:])


class ChatSession:
    """One terminal user talking to the flows; ``handle_line`` is one line of input."""

    def __init__(self, config: Config, user: str, name: str, out: TextIO) -> None:
        self.config, self.user, self.name, self.out = config, user, name, out
        self.offset = 0.0
        self.count = 0
        self.store = store_from_url(config.store.url, base_dir=config.base_dir)
        engine, registry = load_engine(config)
        if engine is None:
            raise BotError(f"no flows to chat with in {config.flows.dir}")
        self.transport = ChatTransport(out, registry)
        self.sender = Sender(
            self.store,
            self.transport,
            registry=registry,
            policy=window_policy(config),
            on_decision=self.transport.on_decision,
        )
        jobs_store = self.store if isinstance(self.store, JobStore) else None
        self.dispatcher = Dispatcher(
            self.store,
            handler=engine.handle,
            drainer=self.sender,
            error_replies=engine.error_replies,
            clock=self.clock,
            reminders=None if jobs_store is None else partial(schedule_turn, jobs_store),
        )
        self.jobs = None
        if jobs_store is not None:
            self.jobs = JobDispatcher(
                jobs_store,
                wake=self.dispatcher.notify,
                registry=registry,
                window=window_policy(config),
                policy=job_policy(config),
                clock=self.clock,
            )

    def clock(self) -> float:
        """Wall time moved by ``/wait``."""
        return time.time() + self.offset

    async def __aenter__(self) -> ChatSession:
        await self.store.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dispatcher.stop()
        await self.store.close()

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
            if kind == "button":  # a template's quick-reply button
                await self._inbound("button", {"payload": rid, "text": title})
            else:
                body = {"type": kind, kind: {"id": rid, "title": title}}
                await self._inbound("interactive", body)
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
            elif cmd == "/wait":
                await self._wait(parse_duration(rest))
            elif cmd == "/jobs":
                await self._show_jobs()
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

    async def _wait(self, seconds: float) -> None:
        """Move the clock, stopping at each job that falls due meanwhile, in order, so each
        goes out as that moment's window decision says."""
        target = self.clock() + seconds
        if self.jobs is None:
            self._move_to(target)
            await self._settle()
            return
        await self.jobs.run_until(
            self.user, target, now=self.clock, move_to=self._move_to, settle=self._settle
        )

    def _move_to(self, when: float) -> None:
        self.offset = when - time.time()
        shown = time.strftime("%a %d %b %H:%M UTC", time.gmtime(self.clock()))
        self.out.write(f"  (clock moved to {shown})\n")

    async def _settle(self) -> None:
        await self.dispatcher.sweep()
        await self.dispatcher.idle()

    async def _show_jobs(self) -> None:
        if self.jobs is None:
            self.out.write("  (this store keeps no reminder jobs)\n")
            return
        found = await self.jobs.store.find_jobs(user=self.user)
        if not found:
            self.out.write("  (no reminders)\n")
        for job in found:
            when = time.strftime("%a %d %b %H:%M UTC", time.gmtime(job.send_at))
            key = f" {job.key}" if job.key else ""
            self.out.write(f"  {when}{key}: {job.state} — {job.reason}\n")

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
        if record is None:
            self.out.write("  (new user: nothing stored yet)\n")
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


async def chat(
    config: Config,
    user: str,
    name: str,
    *,
    read_line: Callable[[], str] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """The ``bot chat`` loop; ``read_line`` (default: ``input``) raises EOFError to end."""
    reader = read_line or (lambda: input("you: "))
    async with ChatSession(config, user, name, out) as session:
        out.write(f"Chatting as {name} ({user}) with the flows in {config.flows.dir}. /help\n")
        while True:
            try:
                line = await asyncio.to_thread(reader)
            except EOFError:
                return 0
            if not await session.handle_line(line):
                return 0
