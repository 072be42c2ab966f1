"""The store contract: what every backend does, run against each of them (see conftest)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from bot.errors import VersionConflict
from bot.models import InboundMessage, OutboxEntry, Outgoing, StatusUpdate, TemplateCall, UserRecord
from bot.store.base import Committed, Store, outbox_id
from bot.webhook import parse_message, parse_status
from tests.store.conftest import Backend

NOW = 1_764_000_100.0
ANA = "5511999990000"
BIA = "5511999990001"


def inbound(
    wamid: str, user: str = ANA, ts: int = 1_764_000_000, text: str = "hi"
) -> InboundMessage:
    """A text message as the webhook parser builds it from Meta's item."""
    item = {
        "from": user,
        "id": wamid,
        "timestamp": str(ts),
        "type": "text",
        "text": {"body": text},
    }
    return parse_message(item, wa_id=user, profile_name="Ana", phone_number_id="1066")


def status(wamid: str, name: str, recipient: str = ANA, ts: int = 1_764_000_050) -> StatusUpdate:
    """A status item as the webhook parser builds it."""
    item = {"id": wamid, "status": name, "timestamp": str(ts), "recipient_id": recipient}
    return parse_status(item, phone_number_id="1066")


def reply(text: str, *, fallback: bool = False) -> Outgoing:
    """A text reply, optionally with a template fallback."""
    call = TemplateCall(name="follow_up", parameters=("Ana", text), language="pt_BR")
    return Outgoing(
        message={"type": "text", "text": {"body": text, "preview_url": False}},
        fallback=call if fallback else None,
        note="test",
    )


def user(key: str = ANA, version: int = 0, **changes: Any) -> UserRecord:
    """A user record that read ``version``."""
    record = UserRecord(key=key, wa_id=key, profile_name="Ana", flow="onboarding", state="start")
    return dataclasses.replace(record, version=version, **changes)


async def seqs(store: Store, key: str = ANA) -> list[int]:
    """The ``seq`` of the user's pending outbox entries, in order."""
    return [entry.seq for entry in await store.pending_outbox(key, 100)]


class TestProtocol:
    async def test_backend_implements_the_protocol(self, store: Store) -> None:
        """Every backend is a ``Store`` with a description and answers a ping when open."""
        assert isinstance(store, Store)
        assert store.description
        await store.ping()


class TestInbox:
    async def test_new_messages_are_reported_new(self, store: Store) -> None:
        """Messages never seen before are each reported ``True``."""
        assert await store.add_inbound([inbound("wamid.1"), inbound("wamid.2")], NOW) == [
            True,
            True,
        ]

    async def test_same_batch_twice_is_all_duplicates(self, store: Store) -> None:
        """Delivering the same batch again (Meta retries) reports every message as a duplicate."""
        batch = [inbound("wamid.1"), inbound("wamid.2")]
        await store.add_inbound(batch, NOW)
        assert await store.add_inbound(batch, NOW + 1) == [False, False]
        assert (await store.inbox_counts())["pending"] == 2

    async def test_mixed_batch_flags_each_message(self, store: Store) -> None:
        """A batch of old and new messages reports each one, in the batch's order."""
        await store.add_inbound([inbound("wamid.2")], NOW)
        got = await store.add_inbound(
            [inbound("wamid.1"), inbound("wamid.2"), inbound("wamid.3")], NOW
        )
        assert got == [True, False, True]

    async def test_duplicate_inside_one_batch(self, store: Store) -> None:
        """The second copy of a message inside one batch is a duplicate."""
        assert await store.add_inbound([inbound("wamid.1"), inbound("wamid.1")], NOW) == [
            True,
            False,
        ]

    async def test_empty_batch(self, store: Store) -> None:
        """An empty batch stores nothing and returns an empty list."""
        assert await store.add_inbound([], NOW) == []
        assert await store.add_statuses([], NOW) == []

    async def test_concurrent_duplicates_exactly_one_new(self, store: Store) -> None:
        """Twenty callers inserting the same message at once: exactly one is told it is new."""
        results = await asyncio.gather(
            *(store.add_inbound([inbound("wamid.race")], NOW) for _ in range(20))
        )
        assert sorted(r[0] for r in results) == [False] * 19 + [True]
        assert await store.inbox_counts() == {"pending": 1, "done": 0, "failed": 0}

    async def test_message_round_trips(self, store: Store) -> None:
        """A pending message comes back equal to what was stored, Meta's item included."""
        message = inbound("wamid.1", text="olá, tudo bem? 🙂")
        await store.add_inbound([message], NOW)
        [got] = await store.pending_inbound(ANA, 10)
        assert got == message
        assert got.raw == message.raw

    async def test_pending_orders_by_timestamp_then_wamid(self, store: Store) -> None:
        """Pending messages come oldest ``timestamp`` first, ties broken by wamid."""
        await store.add_inbound(
            [
                inbound("wamid.d", ts=1_764_000_003),
                inbound("wamid.c", ts=1_764_000_001),
                inbound("wamid.a", ts=1_764_000_002),
                inbound("wamid.b", ts=1_764_000_001),
            ],
            NOW,
        )
        got = [m.id for m in await store.pending_inbound(ANA, 10)]
        assert got == ["wamid.b", "wamid.c", "wamid.a", "wamid.d"]

    async def test_pending_is_per_user_and_limited(self, store: Store) -> None:
        """Only the asked user's messages are returned, at most ``limit`` of them."""
        await store.add_inbound(
            [inbound(f"wamid.a{i}", ts=1_764_000_000 + i) for i in range(3)]
            + [inbound("wamid.b0", user=BIA)],
            NOW,
        )
        assert [m.id for m in await store.pending_inbound(ANA, 2)] == ["wamid.a0", "wamid.a1"]
        assert [m.id for m in await store.pending_inbound(BIA, 10)] == ["wamid.b0"]
        assert await store.pending_inbound("5511000000000", 10) == []

    async def test_fail_inbound(self, store: Store) -> None:
        """A failed message is no longer pending and is counted as failed."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2")], NOW)
        await store.fail_inbound("wamid.1", "flow crashed", NOW + 1)
        assert [m.id for m in await store.pending_inbound(ANA, 10)] == ["wamid.2"]
        assert await store.inbox_counts() == {"pending": 1, "done": 0, "failed": 1}

    async def test_failed_message_is_still_a_duplicate(self, store: Store) -> None:
        """A message that failed is not taken in again when Meta redelivers it."""
        await store.add_inbound([inbound("wamid.1")], NOW)
        await store.fail_inbound("wamid.1", "bad", NOW)
        assert await store.add_inbound([inbound("wamid.1")], NOW + 5) == [False]
        assert await store.pending_inbound(ANA, 10) == []

    async def test_counts_of_an_empty_inbox(self, store: Store) -> None:
        """An empty inbox counts zero of each status."""
        assert await store.inbox_counts() == {"pending": 0, "done": 0, "failed": 0}


class TestCommitTurn:
    async def test_unknown_user_is_none(self, store: Store) -> None:
        """A user never committed has no record."""
        assert await store.get_user(ANA) is None

    async def test_new_user_is_stored_with_version_one(self, store: Store) -> None:
        """Committing a version-0 record stores it as version 1 and returns what is stored."""
        record = user(variables={"name": "Ana", "cart": {"items": [1, 2]}, "n": 2.5})
        stored = (await store.commit_turn(None, record, [], NOW)).record
        assert stored == dataclasses.replace(record, version=1)
        assert await store.get_user(ANA) == stored

    async def test_every_commit_bumps_the_version(self, store: Store) -> None:
        """Each commit stores the record with the read version plus one."""
        first = (await store.commit_turn(None, user(), [], NOW)).record
        second = (
            await store.commit_turn(None, dataclasses.replace(first, state="asked"), [], NOW)
        ).record
        assert second.version == 2
        got = await store.get_user(ANA)
        assert got is not None
        assert (got.version, got.state) == (2, "asked")

    async def test_outgoing_appended_in_order(self, store: Store) -> None:
        """A turn's replies become pending outbox entries with consecutive ``seq``."""
        outgoing = [reply("one"), reply("two", fallback=True)]
        await store.commit_turn(None, user(), outgoing, NOW)
        entries = await store.pending_outbox(ANA, 10)
        assert [e.outgoing for e in entries] == outgoing
        assert [e.seq for e in entries] == [entries[0].seq, entries[0].seq + 1]
        assert [e.id for e in entries] == [outbox_id(ANA, e.seq) for e in entries]
        assert {(e.user, e.status, e.created_at, e.attempts) for e in entries} == {
            (ANA, "pending", NOW, 0)
        }

    async def test_sequence_continues_across_turns(self, store: Store) -> None:
        """The next turn's replies continue the user's sequence, even after some were sent."""
        first = (await store.commit_turn(None, user(), [reply("a"), reply("b")], NOW)).record
        [sent, _] = await store.pending_outbox(ANA, 10)
        await store.save_outbox(dataclasses.replace(sent, status="sent", wamid="wamid.out1"))
        await store.commit_turn(None, first, [reply("c")], NOW + 1)
        base = sent.seq
        assert await seqs(store) == [base + 1, base + 2]

    async def test_sequences_are_per_user(self, store: Store) -> None:
        """Two users' sequences are independent: both start at the same first ``seq``."""
        await store.commit_turn(None, user(ANA), [reply("a"), reply("b")], NOW)
        await store.commit_turn(None, user(BIA), [reply("c")], NOW)
        assert (await seqs(store, BIA))[0] == (await seqs(store, ANA))[0]

    async def test_message_is_marked_done(self, store: Store) -> None:
        """The applied message is no longer pending and counts as done."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2", ts=1_764_000_009)], NOW)
        await store.commit_turn("wamid.1", user(), [reply("hello")], NOW)
        assert [m.id for m in await store.pending_inbound(ANA, 10)] == ["wamid.2"]
        assert await store.inbox_counts() == {"pending": 1, "done": 1, "failed": 0}

    async def test_stale_version_raises_and_changes_nothing(self, store: Store) -> None:
        """A commit from a stale read raises ``VersionConflict`` and writes nothing at all."""
        await store.add_inbound([inbound("wamid.1")], NOW)
        stored = (await store.commit_turn(None, user(state="first"), [reply("one")], NOW)).record
        before = await store.pending_outbox(ANA, 10)
        with pytest.raises(VersionConflict):
            await store.commit_turn("wamid.1", user(state="stale"), [reply("two")], NOW + 1)
        assert await store.get_user(ANA) == stored
        assert await store.pending_outbox(ANA, 10) == before
        assert [m.id for m in await store.pending_inbound(ANA, 10)] == ["wamid.1"]
        assert await store.inbox_counts() == {"pending": 1, "done": 0, "failed": 0}

    async def test_version_ahead_of_store_conflicts(self, store: Store) -> None:
        """A record claiming a version that was never stored is refused."""
        with pytest.raises(VersionConflict):
            await store.commit_turn(None, user(version=3), [reply("x")], NOW)
        assert await store.get_user(ANA) is None
        assert await store.pending_outbox(ANA, 10) == []

    async def test_new_user_race_has_one_winner(self, store: Store) -> None:
        """Two processes creating the same user at once: exactly one commit succeeds."""
        results = await asyncio.gather(
            store.commit_turn(None, user(state="left"), [reply("left")], NOW),
            store.commit_turn(None, user(state="right"), [reply("right")], NOW),
            return_exceptions=True,
        )
        winners = [r.record for r in results if isinstance(r, Committed)]
        assert len(winners) == 1
        assert sum(isinstance(r, VersionConflict) for r in results) == 1
        assert await store.get_user(ANA) == winners[0]
        [entry] = await store.pending_outbox(ANA, 10)
        assert entry.outgoing == reply(winners[0].state)

    async def test_commit_reports_entries_and_backlog(self, store: Store) -> None:
        """The commit returns the entries it appended and whether older ones were pending."""
        first = await store.commit_turn(None, user(), [reply("a"), reply("b")], NOW)
        assert [e.seq for e in first.entries] == [0, 1] and not first.backlog
        assert list(first.entries) == await store.pending_outbox(ANA, 10)
        second = await store.commit_turn(None, first.record, [reply("c")], NOW)
        assert [e.seq for e in second.entries] == [2] and second.backlog
        for entry in await store.pending_outbox(ANA, 10):
            await store.save_outbox(dataclasses.replace(entry, status="sent", wamid=entry.id))
        third = await store.commit_turn(None, second.record, [reply("d")], NOW)
        assert not third.backlog and third.entries[0].outgoing == reply("d")

    async def test_concurrent_read_modify_write_loses_nothing(self, store: Store) -> None:
        """Fifty concurrent increments that retry on conflict all land, each with its reply."""
        await store.commit_turn(None, user(variables={"n": 0}), [], NOW)

        async def increment() -> None:
            while True:
                current = await store.get_user(ANA)
                assert current is not None
                n = current.variables["n"] + 1
                try:
                    await store.commit_turn(
                        None, dataclasses.replace(current, variables={"n": n}), [reply(f"{n}")], NOW
                    )
                    return
                except VersionConflict:
                    continue

        await asyncio.gather(*(increment() for _ in range(50)))
        final = await store.get_user(ANA)
        assert final is not None
        assert (final.variables["n"], final.version) == (50, 51)
        entries = await store.pending_outbox(ANA, 100)
        assert [e.outgoing.message for e in entries] == [
            reply(f"{n}").message for n in range(1, 51)
        ]
        assert [e.seq for e in entries] == list(range(entries[0].seq, entries[0].seq + 50))


class TestLeases:
    async def test_free_user_can_be_taken(self, store: Store) -> None:
        """Nobody holds a new user: the first owner gets the lease."""
        assert await store.acquire_user(ANA, "w1", NOW + 30, NOW)

    async def test_second_owner_is_refused(self, store: Store) -> None:
        """While the lease is live another owner cannot take it, up to and including ``until``."""
        await store.acquire_user(ANA, "w1", NOW + 30, NOW)
        assert not await store.acquire_user(ANA, "w2", NOW + 60, NOW + 10)
        assert not await store.acquire_user(ANA, "w2", NOW + 60, NOW + 30)

    async def test_owner_extends_its_lease(self, store: Store) -> None:
        """The holder can extend; the extension keeps others out past the first ``until``."""
        await store.acquire_user(ANA, "w1", NOW + 30, NOW)
        assert await store.acquire_user(ANA, "w1", NOW + 90, NOW + 20)
        assert not await store.acquire_user(ANA, "w2", NOW + 120, NOW + 60)

    async def test_expired_lease_is_taken_over(self, store: Store) -> None:
        """A lease whose ``until`` has passed goes to the next owner, and the old one loses it."""
        await store.acquire_user(ANA, "w1", NOW + 30, NOW)
        assert await store.acquire_user(ANA, "w2", NOW + 90, NOW + 30.5)
        assert not await store.acquire_user(ANA, "w1", NOW + 100, NOW + 40)

    async def test_release_frees_the_user(self, store: Store) -> None:
        """After the owner releases, another owner takes the lease at once."""
        await store.acquire_user(ANA, "w1", NOW + 30, NOW)
        await store.release_user(ANA, "w1")
        assert await store.acquire_user(ANA, "w2", NOW + 30, NOW + 1)

    async def test_release_by_non_owner_is_a_no_op(self, store: Store) -> None:
        """Releasing someone else's lease leaves it in place."""
        await store.acquire_user(ANA, "w1", NOW + 30, NOW)
        await store.release_user(ANA, "w2")
        assert not await store.acquire_user(ANA, "w2", NOW + 30, NOW + 1)

    async def test_concurrent_acquire_has_one_winner(self, store: Store) -> None:
        """Of twenty workers racing for a free user exactly one gets it."""
        results = await asyncio.gather(
            *(store.acquire_user(ANA, f"w{i}", NOW + 30, NOW) for i in range(20))
        )
        assert sum(results) == 1

    async def test_leases_are_per_user(self, store: Store) -> None:
        """Holding one user does not block another."""
        await store.acquire_user(ANA, "w1", NOW + 30, NOW)
        assert await store.acquire_user(BIA, "w2", NOW + 30, NOW)


class TestUsersWithWork:
    async def test_nothing_to_do(self, store: Store) -> None:
        """An empty store has no users with work."""
        assert await store.users_with_work(NOW, 10) == []

    async def test_pending_inbox_is_work_until_done(self, store: Store) -> None:
        """A user with pending messages is listed once, and no longer after the turn."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2")], NOW)
        assert await store.users_with_work(NOW, 10) == [ANA]
        await store.commit_turn("wamid.1", user(), [], NOW)
        stored = (await store.commit_turn("wamid.2", user(version=1), [], NOW)).record
        assert stored.version == 2
        assert await store.users_with_work(NOW, 10) == []

    async def test_unapplied_statuses_are_work_for_the_recipient(self, store: Store) -> None:
        """Unapplied status items list their recipient until they are finished."""
        await store.add_statuses([status("wamid.out1", "delivered", recipient=BIA)], NOW)
        assert await store.users_with_work(NOW, 10) == [BIA]
        await store.finish_statuses([("wamid.out1", "delivered")])
        assert await store.users_with_work(NOW, 10) == []

    async def test_due_outbox_is_work(self, store: Store) -> None:
        """Pending outbox entries due by ``now`` are work; sent ones are not."""
        await store.commit_turn(None, user(), [reply("hi")], NOW)
        assert await store.users_with_work(NOW, 10) == [ANA]
        [entry] = await store.pending_outbox(ANA, 10)
        await store.save_outbox(dataclasses.replace(entry, status="sent", wamid="wamid.o"))
        assert await store.users_with_work(NOW, 10) == []

    async def test_outbox_not_yet_due_is_not_work(self, store: Store) -> None:
        """An entry waiting for a retry is not work before its ``next_attempt_at``."""
        await store.commit_turn(None, user(), [reply("hi")], NOW)
        [entry] = await store.pending_outbox(ANA, 10)
        await store.save_outbox(dataclasses.replace(entry, attempts=1, next_attempt_at=NOW + 60))
        assert await store.users_with_work(NOW + 59, 10) == []
        assert await store.users_with_work(NOW + 60, 10) == [ANA]

    async def test_leased_users_are_left_out(self, store: Store) -> None:
        """Users whose lease is live are omitted; once it expires they are listed again."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2", user=BIA)], NOW)
        await store.acquire_user(ANA, "w1", NOW + 30, NOW)
        assert await store.users_with_work(NOW + 30, 10) == [BIA]
        assert sorted(await store.users_with_work(NOW + 31, 10)) == [ANA, BIA]

    async def test_limit_and_distinct(self, store: Store) -> None:
        """Each user is listed once, and no more than ``limit`` users."""
        await store.add_inbound(
            [
                inbound(f"wamid.{u}.{i}", user=u)
                for u in (ANA, BIA, "5511999990002")
                for i in range(3)
            ],
            NOW,
        )
        await store.add_statuses([status("wamid.o", "read", recipient=ANA)], NOW)
        everyone = await store.users_with_work(NOW, 10)
        assert sorted(everyone) == sorted([ANA, BIA, "5511999990002"])
        two = await store.users_with_work(NOW, 2)
        assert len(set(two)) == 2 and set(two) <= set(everyone)


class TestStatuses:
    async def test_dedupe_by_wamid_and_status(self, store: Store) -> None:
        """The same (wamid, status) is seen once; another status of the same wamid is new."""
        first = [status("wamid.o", "sent"), status("wamid.o", "delivered")]
        assert await store.add_statuses(first, NOW) == [True, True]
        again = [status("wamid.o", "delivered"), status("wamid.o", "read")]
        assert await store.add_statuses(again, NOW + 1) == [False, True]

    async def test_pending_by_recipient_oldest_first(self, store: Store) -> None:
        """A user's unapplied statuses come oldest first; other recipients' are not included."""
        await store.add_statuses(
            [
                status("wamid.o2", "read", ts=1_764_000_070),
                status("wamid.o1", "delivered", ts=1_764_000_060),
                status("wamid.b", "sent", recipient=BIA),
            ],
            NOW,
        )
        got = await store.pending_statuses(ANA, 10)
        assert [(s.id, s.status) for s in got] == [("wamid.o1", "delivered"), ("wamid.o2", "read")]
        assert [s.id for s in await store.pending_statuses(ANA, 1)] == ["wamid.o1"]

    async def test_status_round_trips(self, store: Store) -> None:
        """A stored status item comes back equal, errors and raw item included."""
        item = {
            "id": "wamid.o",
            "status": "failed",
            "timestamp": "1764000050",
            "recipient_id": ANA,
            "errors": [{"code": 131047, "title": "Re-engagement message"}],
        }
        failed = parse_status(item, phone_number_id="1066")
        await store.add_statuses([failed], NOW)
        [got] = await store.pending_statuses(ANA, 10)
        assert got == failed
        assert got.raw == failed.raw

    async def test_finish_statuses(self, store: Store) -> None:
        """Finished items are no longer pending; the others stay."""
        await store.add_statuses([status("wamid.o", "sent"), status("wamid.o", "read")], NOW)
        await store.finish_statuses([("wamid.o", "sent")])
        assert [s.status for s in await store.pending_statuses(ANA, 10)] == ["read"]
        await store.finish_statuses([])
        assert len(await store.pending_statuses(ANA, 10)) == 1

    async def test_finished_status_stays_a_duplicate(self, store: Store) -> None:
        """A redelivered status that was already applied is not taken in again."""
        await store.add_statuses([status("wamid.o", "read")], NOW)
        await store.finish_statuses([("wamid.o", "read")])
        assert await store.add_statuses([status("wamid.o", "read")], NOW + 1) == [False]
        assert await store.pending_statuses(ANA, 10) == []


class TestStatusProgress:
    async def sent_entry(self, store: Store, wamid: str = "wamid.out1") -> OutboxEntry:
        await store.commit_turn(None, user(), [reply("hi", fallback=True)], NOW)
        [entry] = await store.pending_outbox(ANA, 10)
        sent = dataclasses.replace(entry, status="sent", wamid=wamid, sent_as="session")
        await store.save_outbox(sent)
        return sent

    async def test_progress_is_applied_on_the_way_in(self, store: Store) -> None:
        """delivered then read move the entry forward and need no worker."""
        await self.sent_entry(store)
        await store.add_statuses([status("wamid.out1", "delivered")], NOW)
        entry = await store.outbox_by_wamid("wamid.out1")
        assert entry is not None and entry.status == "delivered"
        await store.add_statuses([status("wamid.out1", "read", ts=1_764_000_060)], NOW)
        entry = await store.outbox_by_wamid("wamid.out1")
        assert entry is not None and entry.status == "read" and entry.sent_as == "session"
        assert await store.pending_statuses(ANA, 10) == []
        assert await store.users_with_work(NOW, 10) == []

    async def test_progress_never_moves_back(self, store: Store) -> None:
        """A delivered that arrives after read leaves the entry read."""
        await self.sent_entry(store)
        await store.add_statuses([status("wamid.out1", "read")], NOW)
        await store.add_statuses([status("wamid.out1", "delivered")], NOW)
        entry = await store.outbox_by_wamid("wamid.out1")
        assert entry is not None and entry.status == "read"
        assert await store.pending_statuses(ANA, 10) == []

    async def test_failed_and_unknown_stay_pending(self, store: Store) -> None:
        """A failed status, and one for a wamid not in the outbox, wait for the worker."""
        await self.sent_entry(store)
        await store.add_statuses(
            [status("wamid.out1", "failed"), status("wamid.early", "delivered")], NOW
        )
        entry = await store.outbox_by_wamid("wamid.out1")
        assert entry is not None and entry.status == "sent"
        pending = await store.pending_statuses(ANA, 10)
        assert sorted((s.id, s.status) for s in pending) == [
            ("wamid.early", "delivered"),
            ("wamid.out1", "failed"),
        ]


class TestOutbox:
    async def test_save_and_find_by_wamid(self, store: Store) -> None:
        """A saved entry replaces the stored one and is found again by its wamid."""
        await store.commit_turn(None, user(), [reply("hi", fallback=True)], NOW)
        [entry] = await store.pending_outbox(ANA, 10)
        sent = dataclasses.replace(
            entry,
            status="sent",
            attempts=2,
            wamid="wamid.out1",
            sent_as="template",
            reason="window closed",
            error_code=131047,
            fallback_sent=True,
            next_attempt_at=NOW + 5,
        )
        await store.save_outbox(sent)
        assert await store.outbox_by_wamid("wamid.out1") == sent
        assert await store.pending_outbox(ANA, 10) == []

    async def test_unknown_wamid(self, store: Store) -> None:
        """No entry has a wamid nobody sent."""
        await store.commit_turn(None, user(), [reply("hi")], NOW)
        assert await store.outbox_by_wamid("wamid.nobody") is None

    async def test_empty_wamid_finds_nothing(self, store: Store) -> None:
        """Unsent entries (no wamid yet) are never found by an empty wamid."""
        await store.commit_turn(None, user(), [reply("hi")], NOW)
        assert await store.outbox_by_wamid("") is None

    async def test_reminder_waits_for_its_time(self, store: Store) -> None:
        """A reply with ``send_at`` is pending but only due, and work, from that time."""
        later = dataclasses.replace(reply("remember"), send_at=NOW + 3600)
        await store.commit_turn(None, user(), [later], NOW)
        [entry] = await store.pending_outbox(ANA, 10)
        assert entry.next_attempt_at == NOW + 3600 and entry.outgoing.send_at == NOW + 3600
        assert await store.users_with_work(NOW + 60, 10) == []
        assert await store.users_with_work(NOW + 3600, 10) == [ANA]

    async def test_pending_outbox_limit_in_seq_order(self, store: Store) -> None:
        """``limit`` takes the lowest ``seq`` first."""
        await store.commit_turn(None, user(), [reply(str(i)) for i in range(5)], NOW)
        entries: list[OutboxEntry] = await store.pending_outbox(ANA, 3)
        assert [e.outgoing.message for e in entries] == [reply(str(i)).message for i in range(3)]


class TestPurge:
    async def test_purge_removes_old_finished_work_only(self, store: Store) -> None:
        """Old handled messages, applied statuses and sent replies go; pending work stays."""
        old, recent = NOW, NOW + 10 * 86400
        await store.add_inbound(
            [inbound("wamid.old"), inbound("wamid.wait", ts=1_764_000_001)], old
        )
        committed = await store.commit_turn(
            "wamid.old", user(), [reply("sent"), reply("queued")], old
        )
        sent = dataclasses.replace(committed.entries[0], status="sent", wamid="wamid.out")
        await store.save_outbox(sent)
        await store.add_statuses([status("wamid.out", "delivered")], old)
        await store.add_inbound([inbound("wamid.new", ts=1_764_000_002)], recent)
        await store.commit_turn("wamid.new", committed.record, [], recent)
        deleted = await store.purge(old + 86400, 100)
        assert deleted == 3  # the old message, its applied status, its sent reply
        assert await store.inbox_counts() == {"pending": 1, "done": 1, "failed": 0}
        assert [e.outgoing for e in await store.pending_outbox(ANA, 10)] == [reply("queued")]
        assert await store.outbox_by_wamid("wamid.out") is None
        assert await store.add_inbound([inbound("wamid.old")], recent) == [True]  # forgotten
        assert await store.purge(old + 86400, 100) == 0

    async def test_purge_respects_the_limit(self, store: Store) -> None:
        """At most ``limit`` rows of each kind go per call."""
        await store.add_inbound(
            [inbound(f"wamid.{i}", ts=1_764_000_000 + i) for i in range(5)], NOW
        )
        record = user()
        for i in range(5):
            record = (await store.commit_turn(f"wamid.{i}", record, [], NOW)).record
        assert await store.purge(NOW + 1, 2) == 2
        assert (await store.inbox_counts())["done"] == 3


class TestDurability:
    async def test_data_survives_close_and_reopen(self, store: Store, backend: Backend) -> None:
        """Everything written is there again in a new store on the same data."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2")], NOW)
        await store.add_statuses([status("wamid.o", "read")], NOW)
        record = (await store.commit_turn("wamid.1", user(), [reply("hi")], NOW)).record
        await store.acquire_user(BIA, "w1", NOW + 30, NOW)
        await store.close()
        await store.close()  # twice is fine

        reopened = backend.make()
        await reopened.open()
        try:
            assert await reopened.get_user(ANA) == record
            assert [m.id for m in await reopened.pending_inbound(ANA, 10)] == ["wamid.2"]
            assert [e.outgoing for e in await reopened.pending_outbox(ANA, 10)] == [reply("hi")]
            assert [s.status for s in await reopened.pending_statuses(ANA, 10)] == ["read"]
            assert not await reopened.acquire_user(BIA, "w2", NOW + 30, NOW + 1)
            assert await reopened.inbox_counts() == {"pending": 1, "done": 1, "failed": 0}
        finally:
            await reopened.close()

    async def test_open_twice_is_harmless(self, store: Store, backend: Backend) -> None:
        """Opening a second store on existing data (indexes, tables) keeps the data."""
        await store.add_inbound([inbound("wamid.1")], NOW)
        other = backend.make()
        await other.open()
        try:
            assert [m.id for m in await other.pending_inbound(ANA, 10)] == ["wamid.1"]
        finally:
            await other.close()
