"""Reminder jobs through the real pipeline: a SQLite store, the dispatcher, the sender, the
Cloud API client and the shipped fake Cloud API (what was sent is counted there)."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot._when import parse_time, zone
from bot.dispatcher import Dispatcher
from bot.engine import Engine
from bot.engine.hooks import Reminder
from bot.errors import ScheduleError
from bot.jobs import JobDispatcher, JobPolicy
from bot.metrics import Metrics
from bot.models import InboundMessage, Job, Outgoing, TemplateCall, UserRecord
from bot.scheduling import Scheduler, build_job, resume_point, schedule_turn
from bot.sender import Sender
from bot.store.base import JobStore
from bot.store.mongo import MongoStore
from bot.store.sqlite import SQLiteStore
from bot.templates import TemplateRegistry
from bot.testing import FakeCloudAPI, quick_reply
from bot.webhook import parse_body
from bot.whatsapp import CloudAPI
from bot.window import WindowPolicy
from tests.mongo_server import running_nx_27017
from tests.store_access import commit

TEMPLATES = """
templates:
  visit_reminder:
    category: APPOINTMENT_UPDATE
    status: APPROVED
    languages:
      en_US:
        body: "Hi {{1}}, see you at {{2}}."
        buttons:
          - {type: quick_reply, text: "Confirm"}
  promo:
    category: ALERT
    status: APPROVED
    languages:
      en_US:
        body: "Hi {{1}}, {{2}} is on sale."
  waiting_review:
    category: APPOINTMENT_UPDATE
    status: PENDING
    languages:
      en_US:
        body: "Hi {{1}}, {{2}}."
"""

FLOW = """
flow: visit
initial: menu
states:
  menu:
    say: "Menu"
    on:
      - text: remind me
        to: reminded
      - else:
        say: "Menu again"
  reminded:
    say: "Confirm your visit?"
    on:
      - payload: CONFIRM
        say: "Confirmed, see you then."
        to: menu
"""

ANA = "15551230001"


def tapped(payload: str) -> InboundMessage:
    """Ana's tap on a template's quick-reply button carrying ``payload``."""
    body = json.dumps(quick_reply(ANA, payload, "Confirm")).encode()
    [message] = parse_body(body).messages
    return message


def remind(name: str = "visit_reminder", buttons: tuple[str, ...] = ()) -> TemplateCall:
    """A template reminder with two positional parameters."""
    return TemplateCall(name, ("Ana", "10:00"), buttons=buttons)


def recategorized(registry: TemplateRegistry, name: str) -> TemplateRegistry:
    """The registry after Meta moved template ``name`` to MARKETING (it stays APPROVED)."""
    moved = dataclasses.replace(registry.templates[name], category="MARKETING")
    return dataclasses.replace(registry, templates={**registry.templates, name: moved})


@dataclass
class Rig:
    """A store, the per-user dispatcher with its sender, and the job dispatcher on a clock."""

    store: JobStore
    fake: FakeCloudAPI
    dispatcher: Dispatcher
    metrics: Metrics
    registry: TemplateRegistry
    now: list[float]

    def jobs(self, **policy: object) -> JobDispatcher:
        """A job dispatcher on the rig's clock with these policy settings."""
        return JobDispatcher(
            self.store,
            wake=self.dispatcher.notify,
            registry=self.registry,
            window=WindowPolicy(),
            policy=JobPolicy(**policy),  # type: ignore[arg-type]
            metrics=self.metrics,
            clock=lambda: self.now[0],
        )

    async def dispatch(self, **policy: object) -> JobDispatcher:
        """Run one pass of a job dispatcher, then let the users' workers send."""
        jobs = self.jobs(**policy)
        while await jobs.run_once() >= jobs.policy.batch:
            pass
        await self.dispatcher.idle()
        return jobs

    async def schedule(self, *jobs: Job) -> None:
        """Store these jobs."""
        await self.store.schedule_jobs(list(jobs))

    async def job(self, user: str = ANA) -> Job:
        """The user's only job, as it stands."""
        [found] = await self.store.find_jobs(user=user)
        return found


@pytest.fixture(scope="module")
def nx_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One nx-27017 server for this module's Mongo runs (started only if one runs)."""
    with running_nx_27017(tmp_path_factory.mktemp("nx-jobs")) as server:
        yield server.url


@pytest.fixture(params=["sqlite", pytest.param("mongo-nx", marks=pytest.mark.mongo)])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    """Everything real, on a clock the test moves (the sender and the jobs use the same),
    on SQLite and on nx-27017 (secantusdb runs the store contract only: it is slow)."""
    (tmp_path / "templates.yaml").write_text(TEMPLATES)
    registry = recategorized(TemplateRegistry.load(tmp_path / "templates.yaml"), "promo")
    store: JobStore
    if request.param == "sqlite":
        store = SQLiteStore(tmp_path / "bot.db")
    else:
        url = request.getfixturevalue("nx_url")
        store = MongoStore.from_url(url, database=f"jobs_{uuid.uuid4().hex[:12]}")
    await store.open()
    now = [time.time()]
    metrics = Metrics()
    async with (
        FakeCloudAPI(clock=lambda: now[0]) as fake,
        CloudAPI(phone_number_id=fake.phone_number_id, token=fake.token, base_url=fake.url) as api,
    ):
        sender = Sender(store, api, registry=registry, policy=WindowPolicy(), metrics=metrics)
        dispatcher = Dispatcher(store, drainer=sender, metrics=metrics, clock=lambda: now[0])
        yield Rig(store, fake, dispatcher, metrics, registry, now)
        await dispatcher.stop()
    await store.close()


async def wrote(rig: Rig, user: str, at: float, **changes: object) -> None:
    """Store a record of ``user`` who last wrote at ``at`` (and tell the fake)."""
    record = UserRecord(key=user, wa_id=user, last_inbound_at=int(at), **changes)  # type: ignore[arg-type]
    await commit(rig.store, record, now=rig.now[0])
    rig.fake.user_wrote(user, at)


class TestDispatch:
    async def test_a_due_job_goes_out_as_its_template_when_the_window_is_closed(
        self, rig: Rig
    ) -> None:
        """A due job is sent once, as its template, and reports how it was sent."""
        await rig.schedule(build_job(ANA, remind(), at=rig.now[0] - 5, now=rig.now[0]))
        await rig.dispatch()
        [sent] = rig.fake.messages_to(ANA)
        assert sent.body["template"]["name"] == "visit_reminder"
        job = await rig.job()
        assert job.state == "sent" and job.reason.startswith("sent as template")
        lag = rig.metrics.registry.get_sample_value("windowbot_jobs_dispatch_lag_seconds_count")
        assert rig.metrics.jobs_sent == 1 and lag == 1
        await rig.dispatch()
        assert len(rig.fake.messages_to(ANA)) == 1  # never twice

    async def test_the_session_message_while_the_window_is_open(self, rig: Rig) -> None:
        """With the window open at its time, a job with a message sends the message."""
        await wrote(rig, ANA, rig.now[0] - 3600)
        text = Outgoing(
            {"type": "text", "text": {"body": "See you at 10:00", "preview_url": False}},
            fallback=remind(),
        )
        await rig.schedule(build_job(ANA, text, at=rig.now[0], now=rig.now[0]))
        await rig.dispatch()
        [sent] = rig.fake.messages_to(ANA)
        assert sent.type == "text"
        assert (await rig.job()).reason.startswith("sent as session")

    async def test_a_job_not_due_waits(self, rig: Rig) -> None:
        """A job whose time has not come is left alone."""
        await rig.schedule(build_job(ANA, remind(), at=rig.now[0] + 60, now=rig.now[0]))
        await rig.dispatch()
        assert rig.fake.messages == [] and (await rig.job()).state == "scheduled"
        rig.now[0] += 61
        await rig.dispatch()
        assert len(rig.fake.messages_to(ANA)) == 1

    async def test_opted_out_user_is_skipped_with_the_reason(self, rig: Rig) -> None:
        """Never to a user who opted out, even with the window open."""
        await wrote(rig, ANA, rig.now[0] - 60, opted_out=True)
        text = Outgoing({"type": "text", "text": {"body": "hi", "preview_url": False}})
        await rig.schedule(build_job(ANA, text, at=rig.now[0], now=rig.now[0]))
        await rig.dispatch()
        job = await rig.job()
        assert rig.fake.messages == []
        assert (job.state, job.reason) == (
            "skipped",
            "not sent: user opted out of business-initiated messages",
        )
        assert rig.metrics.jobs_skipped == {"opted_out": 1}

    @pytest.mark.parametrize(
        ("template", "reason"),
        [
            ("promo", "not sent: template promo is MARKETING"),
            ("waiting_review", "not sent: template waiting_review is PENDING"),
        ],
    )
    async def test_marketing_or_unapproved_template_is_skipped(
        self, rig: Rig, template: str, reason: str
    ) -> None:
        """A template that is not APPROVED, or is MARKETING, is never sent: skipped, why."""
        await rig.schedule(build_job(ANA, remind(template), at=rig.now[0], now=rig.now[0]))
        await rig.dispatch()
        job = await rig.job()
        assert rig.fake.messages == []
        assert (job.state, job.reason) == ("skipped", reason)

    async def test_the_same_key_twice_sends_the_later_once(self, rig: Rig) -> None:
        """Rescheduling a key replaces the job: one message, the later one's."""
        scheduler = Scheduler(rig.store, rig.registry, clock=lambda: rig.now[0])
        await scheduler.schedule(ANA, remind(), at=rig.now[0] - 10, key="appt:1")
        later = TemplateCall("visit_reminder", ("Ana", "11:00"))
        await scheduler.schedule(ANA, later, at=rig.now[0] - 5, key="appt:1")
        await rig.dispatch()
        [sent] = rig.fake.messages_to(ANA)
        assert sent.body["template"]["components"][0]["parameters"][1]["text"] == "11:00"

    async def test_a_cancelled_job_is_never_sent(self, rig: Rig) -> None:
        """Cancel by key: the job is cancelled and nothing goes out."""
        scheduler = Scheduler(rig.store, rig.registry, clock=lambda: rig.now[0])
        await scheduler.schedule(ANA, remind(), at=rig.now[0] + 60, key="appt:1")
        assert await scheduler.cancel("appt:1") == 1
        rig.now[0] += 120
        await rig.dispatch()
        assert rig.fake.messages == []
        assert [j.state for j in await scheduler.jobs(ANA)] == ["cancelled"]

    async def test_an_expired_job_is_skipped_as_expired(self, rig: Rig) -> None:
        """A 10:00 reminder that could only go at 11:30 with a 1 h expiry: expired."""
        at = rig.now[0]
        await rig.schedule(build_job(ANA, remind(), at=at, now=at, expires_after="1h"))
        rig.now[0] = at + 5400
        await rig.dispatch()
        job = await rig.job()
        assert rig.fake.messages == []
        assert job.state == "expired" and job.reason.startswith("expired: due ")
        assert rig.metrics.jobs_expired == 1

    async def test_quiet_hours_make_a_job_wait_until_they_end(self, rig: Rig) -> None:
        """Due at 23:00 in São Paulo with quiet hours 21:00-08:00: waits until 08:00 there."""
        where = zone("America/Sao_Paulo")
        rig.now[0] = parse_time("2026-12-02T23:00:00", 0, where)
        user = "5511999990000"  # a Brazilian number: São Paulo time
        await rig.schedule(build_job(user, remind(), at=rig.now[0], now=rig.now[0]))
        await rig.dispatch(quiet_hours="21:00-08:00")
        job = await rig.job(user)
        assert rig.fake.messages == []
        assert job.state == "scheduled"
        assert job.reason == (
            "waiting: quiet hours (21:00-08:00 America/Sao_Paulo) until 2026-12-03T08:00-03:00"
        )
        rig.now[0] = parse_time("2026-12-03T08:00:00", 0, where)
        await rig.dispatch(quiet_hours="21:00-08:00")
        assert len(rig.fake.messages_to(user)) == 1

    async def test_a_users_stored_zone_wins_over_the_country(self, rig: Rig) -> None:
        """Quiet hours follow the zone stored on the user (variable ``timezone``)."""
        rig.now[0] = parse_time("2026-12-02T23:30:00Z", 0)  # 20:30 in São Paulo, 23:30 UTC
        user = "5511999990000"
        await wrote(rig, user, rig.now[0] - 86400 * 2, variables={"timezone": "UTC"})
        await rig.schedule(build_job(user, remind(), at=rig.now[0], now=rig.now[0]))
        await rig.dispatch(quiet_hours="21:00-08:00")
        assert "(21:00-08:00 UTC)" in (await rig.job(user)).reason

    async def test_the_messaging_limit_tier_is_never_exceeded(self, rig: Rig) -> None:
        """Tier 250 with 300 users due: 250 sent now, 50 wait with the reason, oldest first."""
        users = [f"1555777{n:04d}" for n in range(300)]
        at = rig.now[0] - 300
        await rig.schedule(
            *(build_job(u, remind(), at=at + n, now=at) for n, u in enumerate(users))
        )
        await rig.dispatch(messaging_limit=250, batch=100)
        assert {m.to for m in rig.fake.messages} == set(users[:250])
        waiting = await rig.store.find_jobs(state="scheduled", limit=500)
        assert {j.user for j in waiting} == set(users[250:])
        assert all(
            j.reason.startswith("waiting: messaging limit of 250 users per 24 h reached")
            for j in waiting
        )
        assert rig.metrics.tier_headroom == 0
        rig.now[0] += 3600  # still inside the 24 h: they keep waiting
        await rig.dispatch(messaging_limit=250)
        assert len(rig.fake.messages) == 250
        rig.now[0] = at + 86_400 + 300 + 1
        await rig.dispatch(messaging_limit=250)
        assert len(rig.fake.messages) == 300

    async def test_pair_rate_limit_backs_off_that_user_alone(self, rig: Rig) -> None:
        """131056 for one user: the others are sent at once; that user's job later."""
        users = [ANA, "15551230002", "15551230003"]
        rig.fake.fail_user(ANA, code=131056)
        await rig.schedule(*(build_job(u, remind(), at=rig.now[0], now=rig.now[0]) for u in users))
        await rig.dispatch()
        assert {m.to for m in rig.fake.messages} == set(users[1:])
        [entry] = [e for e in await rig.store.outbox_of(ANA) if e.status == "pending"]
        assert entry.error_code == 131056 and entry.next_attempt_at > rig.now[0]
        rig.now[0] = entry.next_attempt_at + 0.01  # SQLite's JSON keeps 15 digits of it
        assert await rig.dispatcher.sweep() == 1
        await rig.dispatcher.idle()
        assert len(rig.fake.messages_to(ANA)) == 1


class TestScheduling:
    @pytest.mark.parametrize("at", ["every day at 09:00", "0 9 * * *", "daily 09:00"])
    async def test_a_recurring_request_is_refused_with_the_reason(self, rig: Rig, at: str) -> None:
        """Recurring schedules are not an allowed template use: refused, nothing stored."""
        scheduler = Scheduler(rig.store, rig.registry)
        with pytest.raises(ScheduleError, match="recurring content and subscription"):
            await scheduler.schedule(ANA, remind(), at=at)
        assert await scheduler.jobs() == []

    async def test_an_unknown_template_is_refused_when_scheduled(self, rig: Rig) -> None:
        """A template the registry does not declare never becomes a job."""
        scheduler = Scheduler(rig.store, rig.registry)
        with pytest.raises(ScheduleError, match="nope"):
            await scheduler.schedule(ANA, TemplateCall("nope", ("a",)), at="in 1h")

    def test_at_expressions(self) -> None:
        """ISO times with offsets, relative times and arithmetic all give unix seconds."""
        now = 1_764_000_000.0
        assert parse_time("2026-12-02T10:00:00-03:00 - 1h", now) == parse_time(
            "2026-12-02T12:00:00Z", now
        )
        assert parse_time("in 90m", now) == now + 5400
        assert parse_time("+2h", now) == now + 7200
        with pytest.raises(ScheduleError, match="not a time"):
            parse_time("tomorrowish", now)


class TestResume:
    async def test_a_tap_on_the_reminders_button_lands_in_the_resume_point(
        self, rig: Rig, tmp_path: Path
    ) -> None:
        """The quick-reply of a job with a resume point continues in that state."""
        flows = tmp_path / "flows"
        flows.mkdir()
        (flows / "visit.yaml").write_text(FLOW)
        engine = Engine.load(flows)
        job = build_job(
            ANA,
            remind(buttons=("CONFIRM",)),
            at=rig.now[0],
            now=rig.now[0],
            resume="visit.reminded",
        )
        await rig.schedule(job)
        await rig.dispatch()
        [sent] = rig.fake.messages_to(ANA)
        [button] = [c for c in sent.body["template"]["components"] if c["type"] == "button"]
        payload = button["parameters"][0]["payload"]
        tap = tapped(payload)
        record = UserRecord(key=ANA, wa_id=ANA, flow="visit", state="menu")
        turn = await engine.handle(record, tap, rig.now[0])
        assert [o.message["text"]["body"] for o in turn.outgoing if o.message] == [
            "Confirmed, see you then.",
            "Menu",
        ]
        assert (turn.record.flow, turn.record.state) == ("visit", "menu")

    def test_a_plain_button_is_no_resume_point(self) -> None:
        """Payloads without the job mark are left as they are."""
        assert resume_point(tapped("CONFIRM")) is None


class TestTurnJobs:
    async def test_a_turn_tried_again_schedules_its_reminders_once(self, rig: Rig) -> None:
        """A hook's reminders become jobs named after the message: a retry replaces them."""
        ctx_turn = _TurnWith(reminders=(Reminder(at=rig.now[0] + 60, template=remind()),))
        record, message = UserRecord(key=ANA, wa_id=ANA), tapped("x")
        for _ in range(2):
            await schedule_turn(rig.store, record, message, ctx_turn, rig.now[0])
        [job] = await rig.store.find_jobs(user=ANA)
        assert job.id == f"{ANA}|~{message.id}:0" and job.send_at == rig.now[0] + 60

    async def test_a_turns_cancel_drops_the_users_keyed_job(self, rig: Rig) -> None:
        """ctx.cancel(key) in a turn cancels that user's scheduled job with the key."""
        await rig.schedule(build_job(ANA, remind(), at=rig.now[0] + 60, now=rig.now[0], key="k"))
        record, message = UserRecord(key=ANA, wa_id=ANA), tapped("x")
        await schedule_turn(rig.store, record, message, _TurnWith(cancels=("k",)), rig.now[0])
        assert (await rig.job()).state == "cancelled"


class TestMetrics:
    async def test_job_metrics_are_exposed(self, rig: Rig) -> None:
        """Sent, skipped by reason, expiry, lag and tier headroom appear in /metrics' text."""
        at = rig.now[0] - 20  # dispatched 20 s late
        await wrote(rig, "15551230009", at, opted_out=True)
        await rig.schedule(
            build_job(ANA, remind(), at=at, now=at),
            build_job("15551230009", remind(), at=at, now=at),
        )
        await rig.dispatch(messaging_limit=250)
        text = rig.metrics.render().decode()
        assert "windowbot_jobs_sent_total 1.0" in text
        assert 'windowbot_jobs_skipped_total{reason="opted_out"} 1.0' in text
        assert "windowbot_tier_headroom 249.0" in text
        assert "windowbot_jobs_dispatch_lag_seconds_count 1.0" in text
        assert 'windowbot_jobs_dispatch_lag_seconds_bucket{le="10.0"} 0.0' in text
        assert 'windowbot_jobs_dispatch_lag_seconds_bucket{le="30.0"} 1.0' in text


@dataclass(frozen=True)
class _TurnWith:
    """A turn result carrying only reminders and cancels."""

    reminders: tuple[Reminder, ...] = ()
    cancels: tuple[str, ...] = ()
