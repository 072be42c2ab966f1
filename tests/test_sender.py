"""The send path (bot.sender) on a real store, a real client and the fake Cloud API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog

from bot.dispatcher import Dispatcher
from bot.models import InboundMessage, OutboxEntry, Outgoing, TemplateCall, UserRecord
from bot.retry import RetryPolicy
from bot.sender import Sender
from bot.store.sqlite import SQLiteStore
from bot.templates import TemplateRegistry
from bot.testing import FakeCloudAPI
from bot.webhook import parse_message
from bot.whatsapp import CloudAPI
from bot.window import WindowPolicy

ROOT = Path(__file__).resolve().parent.parent
USER = "15550001111"
T0 = 1_764_000_000.0


def hello(text: str = "hi there") -> Outgoing:
    return Outgoing(
        message={"type": "text", "text": {"body": text, "preview_url": False}},
        fallback=TemplateCall("business_hours", ("Ana", "9-18")),
        note="test.reply",
    )


@dataclass
class Rig:
    """A store, the fake API, a client on it, a sender and a dispatcher with a movable clock."""

    store: SQLiteStore
    fake: FakeCloudAPI
    api: CloudAPI
    sender: Sender
    dispatcher: Dispatcher
    now: list[float] = field(default_factory=lambda: [T0])

    async def queue(self, *outgoing: Outgoing, last_inbound: float = T0) -> None:
        """Commit a turn that queues replies, as if the process died right after it."""
        work = await self.store.claim(USER, "crashed", self.now[0] + 15, self.now[0])
        assert work is not None
        record = UserRecord(
            key=USER,
            wa_id=USER,
            profile_name="Ana",
            last_inbound_at=int(last_inbound),
            version=work.record.version,
        )
        await self.store.commit_turn(work.lease, None, record, list(outgoing), self.now[0])
        await self.store.release([work.lease])

    async def pending(self) -> list[OutboxEntry]:
        """The user's entries still pending."""
        return [e for e in await self.store.outbox_of(USER) if e.status == "pending"]

    async def entry(self, wamid: str) -> OutboxEntry | None:
        """The user's entry sent with ``wamid``."""
        return next((e for e in await self.store.outbox_of(USER) if e.wamid == wamid), None)

    async def run(self) -> None:
        """One sweep, then wait until the workers are done."""
        await self.dispatcher.sweep()
        await self.dispatcher.idle()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    registry = TemplateRegistry.load(ROOT / "flows" / "templates.yaml")
    store = SQLiteStore(tmp_path / "bot.db")
    await store.open()
    clock = [T0]

    async def no_wait(_: float) -> None:
        await asyncio.sleep(0)

    async with FakeCloudAPI(
        token="tok", phone_number_id="PN", registry=registry, clock=lambda: clock[0]
    ) as fake:
        fake.user_wrote(USER, T0)
        async with fake.client(sleep=no_wait) as api:
            sender = Sender(
                store,
                api,
                registry=registry,
                policy=WindowPolicy(),
                jitter=lambda: 0.5,
                retry=RetryPolicy(max_attempts=3),
            )
            dispatcher = Dispatcher(store, drainer=sender, clock=lambda: clock[0])
            yield Rig(store, fake, api, sender, dispatcher, clock)
            await dispatcher.stop()
    await store.close()


class TestRecovery:
    async def test_queued_before_a_crash_is_sent_after_restart(self, rig: Rig) -> None:
        """Replies committed but never sent (the process died) go out at the next sweep."""
        await rig.queue(hello("one"), hello("two"))
        await rig.run()
        assert [m.body["text"]["body"] for m in rig.fake.messages_to(USER)] == ["one", "two"]
        assert await rig.pending() == []
        sent = await rig.entry(rig.fake.messages_to(USER)[0].wamid)
        assert sent is not None and (sent.status, sent.sent_as) == ("sent", "session")


class TestFailures:
    async def test_transient_errors_defer_then_send_once(self, rig: Rig) -> None:
        """A 5xx defers the reply in the outbox; the next attempt sends it once."""
        rig.fake.fail_next(1, status=503)
        await rig.queue(hello())
        await rig.run()
        assert rig.fake.messages_to(USER) == []
        [entry] = await rig.pending()
        assert entry.attempts == 1 and entry.next_attempt_at > rig.now[0]
        rig.now[0] = entry.next_attempt_at + 1
        await rig.run()
        assert len(rig.fake.messages_to(USER)) == 1
        await rig.run()
        assert len(rig.fake.messages_to(USER)) == 1

    async def test_bad_token_halts_keeps_queue_and_resumes(self, rig: Rig) -> None:
        """A 190 stops all sending and keeps replies queued; after the pause it tries again."""
        rig.fake.fail_next(1, code=190)
        await rig.queue(hello("first"), hello("second"))
        with structlog.testing.capture_logs() as logs:
            await rig.run()
        assert any(e["event"] == "sending_halted" for e in logs)
        assert rig.fake.messages_to(USER) == []
        assert len(await rig.pending()) == 2
        rig.now[0] += 30
        await rig.run()
        assert rig.fake.messages_to(USER) == []  # still paused
        rig.now[0] += 31
        await rig.run()
        assert [m.body["text"]["body"] for m in rig.fake.messages_to(USER)] == ["first", "second"]

    async def test_parameter_error_is_recorded_not_retried(self, rig: Rig) -> None:
        """A 100 error marks the reply failed with Meta's code and sends the next one."""
        rig.fake.fail_next(1, code=100)
        await rig.queue(hello("bad"), hello("good"))
        await rig.run()
        assert [m.body["text"]["body"] for m in rig.fake.messages_to(USER)] == ["good"]
        assert await rig.pending() == []
        assert rig.sender.metrics.send_failures == 1


class TestWindow:
    async def test_closed_window_without_fallback_is_not_sent_with_reason(self, rig: Rig) -> None:
        """Outside the window a reply with no fallback is skipped and the reason kept."""
        bare = Outgoing(message={"type": "text", "text": {"body": "late", "preview_url": False}})
        await rig.queue(bare, last_inbound=T0 - 30 * 3600)
        with structlog.testing.capture_logs() as logs:
            await rig.run()
        assert rig.fake.messages == []
        [event] = [e for e in logs if e["event"] == "reply_not_sent"]
        assert "no template fallback" in event["reason"]

    async def test_reminder_waits_then_goes_as_template(self, rig: Rig) -> None:
        """A reminder due in 25 h is held back, then sent as its template once due."""
        reminder = Outgoing(
            message={"type": "text", "text": {"body": "see you", "preview_url": False}},
            fallback=TemplateCall(
                "appointment_reminder", {"name": "Ana", "slot": "Tue 10:00"}, buttons=("CONFIRM",)
            ),
            send_at=T0 + 25 * 3600,
        )
        await rig.queue(reminder, hello("now"))
        await rig.run()
        assert [m.type for m in rig.fake.messages_to(USER)] == ["text"]
        rig.now[0] = T0 + 25 * 3600
        rig.fake.clock = lambda: rig.now[0]
        await rig.run()
        kinds = [(m.type, m.body.get("template", {}).get("name")) for m in rig.fake.messages]
        assert kinds == [("text", None), ("template", "appointment_reminder")]


class TestLogContext:
    async def test_lines_inside_handling_carry_user_message_flow_state(
        self, tmp_path: Path
    ) -> None:
        """A failure inside a turn is logged with wa_id, message_id, flow and state."""
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()

        async def broken(record: UserRecord, message: InboundMessage, now: float) -> object:
            raise RuntimeError("hook exploded")

        item = {
            "from": USER,
            "id": "wamid.ctx",
            "timestamp": str(int(T0)),
            "type": "text",
            "text": {"body": "hi"},
        }
        await store.add_inbound([parse_message(item)], T0)
        dispatcher = Dispatcher(store, handler=broken)  # type: ignore[arg-type]
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            dispatcher.notify(USER)
            await dispatcher.idle()
        [event] = [e for e in logs if e["event"] == "message_failed"]
        assert (event["wa_id"], event["message_id"]) == (USER, "wamid.ctx")
        assert "flow" in event and "state" in event
        await store.close()


class TestUndeliverable:
    async def test_131026_marks_the_user_until_they_write(self, rig: Rig) -> None:
        """After 131026 the user is marked and later replies are not sent, with the reason."""
        rig.fake.fail_next(1, code=131026)
        await rig.queue(hello("first"), hello("second"))
        with structlog.testing.capture_logs() as logs:
            await rig.run()
        assert rig.fake.messages == []
        record = await rig.store.get_user(USER)
        assert record is not None and record.undeliverable
        [skipped] = [e for e in logs if e["event"] == "reply_not_sent"]
        assert "131026" in skipped["reason"]
