"""The store contract: what every backend does, run against each of them (see conftest)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
from typing import Any

import pytest

from bot.errors import LeaseLost, VersionConflict
from bot.models import (
    IdentityChange,
    InboundMessage,
    Job,
    OutboxEntry,
    Outgoing,
    StatusUpdate,
    TemplateCall,
    UserRecord,
    callback_data,
)
from bot.scheduling import build_job
from bot.store.base import (
    Committed,
    JobStore,
    Lease,
    PreTurn,
    Store,
    Work,
    job_entry_id,
    outbox_id,
)
from bot.store.sqlite import SQLiteStore
from bot.webhook import parse_message, parse_status
from tests.store.conftest import Backend

NOW = 1_764_000_100.0
ANA = "5511999990000"
BIA = "5511999990001"
TS = 1_764_000_000


def inbound(wamid: str, user: str = ANA, ts: int = TS, text: str = "hi") -> InboundMessage:
    """A text message as the webhook parser builds it from Meta's item."""
    item = {
        "from": user,
        "id": wamid,
        "timestamp": str(ts),
        "type": "text",
        "text": {"body": text},
    }
    return parse_message(item, wa_id=user, profile_name="Ana", phone_number_id="1066")


def opaque_wamid() -> str:
    """A wamid as Meta makes them: ``wamid.`` and random base64, no order in it."""
    return "wamid." + base64.b64encode(os.urandom(24)).decode()


def status(
    wamid: str, name: str, recipient: str = ANA, ts: int = 1_764_000_050, callback: str = ""
) -> StatusUpdate:
    """A status item as the webhook parser builds it, echoing ``callback`` if given."""
    item = {"id": wamid, "status": name, "timestamp": str(ts), "recipient_id": recipient}
    if callback:
        item["biz_opaque_callback_data"] = callback
    return parse_status(item, phone_number_id="1066")


def reply(text: str, *, fallback: bool = False, send_at: float = 0.0) -> Outgoing:
    """A text reply, optionally with a template fallback or as a reminder."""
    call = TemplateCall(name="follow_up", parameters=("Ana", text), language="pt_BR")
    return Outgoing(
        message={"type": "text", "text": {"body": text, "preview_url": False}},
        fallback=call if fallback else None,
        note="test",
        send_at=send_at,
    )


def user(key: str = ANA, version: int = 0, **changes: Any) -> UserRecord:
    """A user record that read ``version``."""
    record = UserRecord(key=key, wa_id=key, profile_name="Ana", flow="onboarding", state="start")
    return dataclasses.replace(record, version=version, **changes)


async def claim(
    store: Store,
    key: str = ANA,
    owner: str = "w1",
    *,
    until: float = NOW + 30,
    now: float = NOW,
    limit: int = 64,
) -> Work:
    """Claim ``key`` and insist on getting it."""
    work = await store.claim(key, owner, until, now, limit=limit)
    assert work is not None, f"{owner} could not claim {key}"
    return work


async def pending(store: Store, key: str = ANA) -> list[OutboxEntry]:
    """The user's pending outbox entries in ``seq`` order, read without a lease."""
    return [e for e in await store.outbox_of(key) if e.status == "pending"]


async def entry_named(store: Store, entry_id: str, key: str = ANA) -> OutboxEntry:
    """The stored outbox entry with this id."""
    [entry] = [e for e in await store.outbox_of(key) if e.id == entry_id]
    return entry


async def taken_over(store: Store, key: str = ANA) -> tuple[Lease, Lease]:
    """``w1``'s lease, which expired, and ``w2``'s, which took it over."""
    old = (await claim(store, key, "w1", until=NOW + 30)).lease
    new = (await claim(store, key, "w2", until=NOW + 90, now=NOW + 31)).lease
    return old, new


async def one_sent(store: Store, lease: Lease, wamid: str = "wamid.out1") -> OutboxEntry:
    """Commit a turn with one reply (fallback included) and save it as sent as ``wamid``."""
    [entry] = (
        await store.commit_turn(lease, None, user(), [reply("hi", fallback=True)], NOW)
    ).entries
    sent = dataclasses.replace(entry, status="sent", attempts=1, wamid=wamid, sent_as="session")
    await store.save_outbox(lease, sent)
    return sent


async def in_flight(store: Store, lease: Lease) -> tuple[OutboxEntry, OutboxEntry]:
    """Commit a turn with one reply and start its first attempt: the entry, then in flight."""
    [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
    started = await store.begin_send(lease, entry, NOW)
    assert started is not None
    return entry, started


class TestProtocol:
    async def test_backend_implements_the_protocol(self, store: Store) -> None:
        """Every backend is a ``Store`` with a description and answers a ping when open."""
        assert isinstance(store, Store)
        assert store.description
        await store.ping()

    async def test_write_ping_on_a_healthy_store(self, store: Store) -> None:
        """A write ping succeeds, twice, and leaves the user data alone."""
        await store.ping(write=True)
        await store.ping(write=True)
        assert await store.users_with_work(NOW, 10) == []
        assert await store.inbox_counts() == {"pending": 0, "done": 0, "failed": 0}


class TestInbox:
    async def test_new_messages_are_reported_new(self, store: Store) -> None:
        """Messages never seen before are each reported ``True``."""
        got = await store.add_inbound([inbound("wamid.1"), inbound("wamid.2")], NOW)
        assert got == [True, True]

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
        got = await store.add_inbound([inbound("wamid.1"), inbound("wamid.1")], NOW)
        assert got == [True, False]

    async def test_empty_batch(self, store: Store) -> None:
        """An empty batch stores nothing and returns an empty list."""
        assert await store.add_inbound([], NOW) == []
        assert await store.add_statuses([], NOW) == []
        assert await store.inbox_counts() == {"pending": 0, "done": 0, "failed": 0}

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
        [got] = (await claim(store)).inbound
        assert got == message
        assert got.raw == message.raw

    async def test_pending_is_per_user_and_limited(self, store: Store) -> None:
        """A claim reads only its user's messages, at most ``limit`` of them."""
        await store.add_inbound(
            [inbound(f"wamid.a{i}", ts=TS + i) for i in range(3)] + [inbound("wamid.b0", user=BIA)],
            NOW,
        )
        assert [m.id for m in (await claim(store, limit=2)).inbound] == ["wamid.a0", "wamid.a1"]
        assert [m.id for m in (await claim(store, BIA)).inbound] == ["wamid.b0"]
        assert (await claim(store, "5511000000000")).inbound == ()

    async def test_failed_message_is_still_a_duplicate(self, store: Store) -> None:
        """A message whose turn failed is not taken in again when Meta redelivers it."""
        await store.add_inbound([inbound("wamid.1")], NOW)
        lease = (await claim(store)).lease
        await store.commit_turn(lease, "wamid.1", user(), [], NOW, failed="bad")
        assert await store.add_inbound([inbound("wamid.1")], NOW + 5) == [False]
        assert (await store.read_work(lease)).inbound == ()

    async def test_counts_of_an_empty_inbox(self, store: Store) -> None:
        """An empty inbox counts zero of each status."""
        assert await store.inbox_counts() == {"pending": 0, "done": 0, "failed": 0}


class TestArrivalOrder:
    async def test_same_second_messages_keep_the_order_they_were_stored_in(
        self, store: Store
    ) -> None:
        """Fifty messages of one second with random wamids come back in the order stored."""
        wamids = [opaque_wamid() for _ in range(50)]
        assert wamids != sorted(wamids)  # what ordering by wamid would give
        for wamid in wamids:
            await store.add_inbound([inbound(wamid)], NOW)
        assert [m.id for m in (await claim(store)).inbound] == wamids

    async def test_a_clock_stepping_back_does_not_reorder(self, store: Store) -> None:
        """Messages stored while the receipt clock steps back keep the order stored."""
        wamids = [opaque_wamid() for _ in range(10)]
        for i, wamid in enumerate(wamids):
            await store.add_inbound([inbound(wamid)], NOW - i)
        assert [m.id for m in (await claim(store)).inbound] == wamids

    async def test_a_batch_keeps_its_order(self, store: Store) -> None:
        """Messages of one second stored in one batch come back in the batch's order."""
        wamids = [opaque_wamid() for _ in range(20)]
        await store.add_inbound([inbound(w) for w in wamids], NOW)
        assert [m.id for m in (await claim(store)).inbound] == wamids

    async def test_an_older_second_stored_later_goes_first(self, store: Store) -> None:
        """A late message stamped with an older second comes before one stored earlier."""
        await store.add_inbound([inbound("wamid.newer", ts=TS + 5)], NOW)
        await store.add_inbound([inbound("wamid.later", ts=TS + 5)], NOW + 1)
        await store.add_inbound([inbound("wamid.older", ts=TS + 2)], NOW + 2)
        got = [m.id for m in (await claim(store)).inbound]
        assert got == ["wamid.older", "wamid.newer", "wamid.later"]

    async def test_order_by_second_then_arrival(self, store: Store) -> None:
        """Oldest second first; inside a second, the order stored (not the wamid's)."""
        await store.add_inbound(
            [
                inbound("wamid.d", ts=TS + 3),
                inbound("wamid.c", ts=TS + 1),
                inbound("wamid.a", ts=TS + 2),
                inbound("wamid.b", ts=TS + 1),
            ],
            NOW,
        )
        got = [m.id for m in (await claim(store)).inbound]
        assert got == ["wamid.c", "wamid.b", "wamid.a", "wamid.d"]

    async def test_order_holds_across_stores_on_the_same_data(
        self, store: Store, backend: Backend
    ) -> None:
        """Two processes storing one after the other: the user's messages keep that order."""
        other = backend.make()
        await other.open()
        try:
            wamids = [opaque_wamid() for _ in range(6)]
            for i, wamid in enumerate(wamids):
                await (store if i % 2 else other).add_inbound([inbound(wamid)], NOW + i)
            assert [m.id for m in (await claim(store)).inbound] == wamids
        finally:
            await other.close()


class TestClaim:
    async def test_new_user_is_blank_at_version_zero(self, store: Store) -> None:
        """Claiming a user never seen gives a blank record at version 0 and no work."""
        work = await claim(store, ANA, "w1", until=NOW + 30)
        assert (work.lease.user, work.lease.owner, work.lease.until) == (ANA, "w1", NOW + 30)
        assert work.lease.token
        assert (work.record.key, work.record.wa_id, work.record.version) == (ANA, ANA, 0)
        assert (work.inbound, work.statuses, work.outbox) == ((), (), ())
        assert await store.get_user(ANA) is None

    async def test_claim_reads_the_users_work(self, store: Store) -> None:
        """The claim returns the stored record and pending messages, statuses and replies."""
        first = await claim(store)
        stored = (await store.commit_turn(first.lease, None, user(), [reply("a")], NOW)).record
        await store.release([first.lease])
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.b", user=BIA)], NOW)
        await store.add_statuses([status("wamid.x", "failed"), status("wamid.y", "read", BIA)], NOW)
        work = await claim(store, owner="w2", now=NOW + 1)
        assert work.record == stored
        assert [m.id for m in work.inbound] == ["wamid.1"]
        assert [(s.id, s.status) for s in work.statuses] == [("wamid.x", "failed")]
        assert [e.outgoing for e in work.outbox] == [reply("a")]

    async def test_release_names_users_with_work_left(self, store: Store) -> None:
        """Released users with pending messages or status items come back (stored while
        held, by a process that left them to the holder); the others do not."""
        cid = "5511999990003"
        await store.add_inbound([inbound("wamid.c", user=cid)], NOW)
        await store.add_statuses([status("wamid.y", "failed", recipient=cid)], NOW)
        leases = [(await claim(store, u)).lease for u in (ANA, BIA, cid)]
        await store.commit_turn(leases[2], "wamid.c", user(cid), [], NOW)  # handled
        await store.finish_statuses(cid, [("wamid.y", "failed")])  # applied
        await store.add_inbound([inbound("wamid.1")], NOW)
        await store.add_statuses([status("wamid.x", "failed", recipient=BIA)], NOW)
        assert await store.release(leases) == {ANA, BIA}
        assert await store.release([]) == set()

    async def test_limit_bounds_each_list(self, store: Store) -> None:
        """``limit`` bounds the messages, statuses and replies read, oldest first."""
        lease = (await claim(store)).lease
        await store.commit_turn(lease, None, user(), [reply(str(i)) for i in range(5)], NOW)
        await store.add_inbound([inbound(f"wamid.{i}", ts=TS + i) for i in range(5)], NOW)
        await store.add_statuses(
            [status(f"wamid.o{i}", "failed", ts=TS + i) for i in range(5)], NOW
        )
        work = await claim(store, limit=3)
        assert [m.id for m in work.inbound] == ["wamid.0", "wamid.1", "wamid.2"]
        assert [s.id for s in work.statuses] == ["wamid.o0", "wamid.o1", "wamid.o2"]
        assert [e.seq for e in work.outbox] == [0, 1, 2]

    async def test_second_owner_is_refused(self, store: Store) -> None:
        """While the lease is live another owner cannot take it, up to and including ``until``."""
        await claim(store, owner="w1", until=NOW + 30)
        assert await store.claim(ANA, "w2", NOW + 60, NOW + 10) is None
        assert await store.claim(ANA, "w2", NOW + 60, NOW + 30) is None

    async def test_owner_claims_again_with_a_new_token(self, store: Store) -> None:
        """The holder can claim again: it gets a new token and a later ``until``."""
        first = await claim(store, owner="w1", until=NOW + 30)
        again = await claim(store, owner="w1", until=NOW + 90, now=NOW + 20)
        assert again.lease.token != first.lease.token
        assert await store.claim(ANA, "w2", NOW + 120, NOW + 60) is None

    async def test_expired_lease_is_taken_over(self, store: Store) -> None:
        """A lease whose ``until`` has passed goes to the next owner, and the old one loses it."""
        await claim(store, owner="w1", until=NOW + 30)
        assert await store.claim(ANA, "w2", NOW + 90, NOW + 30.5) is not None
        assert await store.claim(ANA, "w1", NOW + 100, NOW + 40) is None

    async def test_concurrent_claims_have_one_winner(self, store: Store) -> None:
        """Of twenty workers racing for a free user exactly one gets it."""
        results = await asyncio.gather(
            *(store.claim(ANA, f"w{i}", NOW + 30, NOW) for i in range(20))
        )
        winners = [work for work in results if work is not None]
        assert len(winners) == 1

    async def test_concurrent_takeovers_have_one_winner(self, store: Store) -> None:
        """Of twenty workers racing for an expired lease exactly one gets it."""
        await claim(store, owner="w0", until=NOW + 30)
        results = await asyncio.gather(
            *(store.claim(ANA, f"w{i}", NOW + 90, NOW + 31) for i in range(1, 21))
        )
        assert sum(work is not None for work in results) == 1

    async def test_racing_claims_of_a_stored_user_all_see_its_record(self, store: Store) -> None:
        """Owners claiming and releasing one stored user over and over, concurrently: every
        claim that wins comes with the stored record, never a blank one (secantusdb's upsert
        under contention once answered 'no document before' for an existing user)."""
        first = await claim(store)
        stored = (await store.commit_turn(first.lease, None, user(), [], NOW)).record
        await store.release([first.lease])
        seen: list[int] = []

        async def churn(owner: str) -> None:
            for _ in range(40):
                work = await store.claim(ANA, owner, NOW + 30, NOW)
                if work is None:
                    await asyncio.sleep(0)
                    continue
                seen.append(work.record.version)
                await store.release([work.lease])

        await asyncio.gather(*(churn(f"w{i}") for i in range(3)))
        assert seen and set(seen) == {stored.version}

    async def test_leases_are_per_user(self, store: Store) -> None:
        """Holding one user does not block another."""
        await claim(store, ANA, "w1")
        assert await store.claim(BIA, "w2", NOW + 30, NOW) is not None

    async def test_release_frees_the_user(self, store: Store) -> None:
        """After the owner releases, another owner takes the lease at once."""
        lease = (await claim(store, owner="w1")).lease
        await store.release([lease])
        assert await store.claim(ANA, "w2", NOW + 30, NOW + 1) is not None

    async def test_release_of_a_replaced_lease_is_a_no_op(self, store: Store) -> None:
        """Releasing a lease that was taken over leaves the new holder's lease in place."""
        old, new = await taken_over(store)
        await store.release([old])
        assert await store.claim(ANA, "w3", NOW + 60, NOW + 40) is None
        assert await store.renew([new], NOW + 120) == {ANA}

    async def test_renew_extends_the_leases_still_held(self, store: Store) -> None:
        """Renewing extends each lease still held and names exactly those users."""
        old, new = await taken_over(store, ANA)
        bia = (await claim(store, BIA, "w1", until=NOW + 30)).lease
        assert await store.renew([old, bia], NOW + 200) == {BIA}
        assert await store.claim(BIA, "w2", NOW + 300, NOW + 100) is None
        assert await store.renew([], NOW + 200) == set()
        assert await store.renew([new], NOW + 200) == {ANA}

    async def test_released_lease_is_not_renewed(self, store: Store) -> None:
        """A released lease cannot be renewed back into existence."""
        lease = (await claim(store)).lease
        await store.release([lease])
        assert await store.renew([lease], NOW + 100) == set()
        assert await store.claim(ANA, "w2", NOW + 30, NOW + 1) is not None


class TestAddAndClaim:
    async def test_stores_like_add_inbound(self, store: Store) -> None:
        """The insert half answers like ``add_inbound``: new messages, then duplicates."""
        first, _ = await store.add_and_claim(
            [inbound("wamid.1")], NOW, owner="w1", until=NOW + 30, users=[ANA]
        )
        again, works = await store.add_and_claim(
            [inbound("wamid.1"), inbound("wamid.2")], NOW, owner="w2", until=NOW + 30, users=[]
        )
        assert (first, again, works) == ([True], [False, True], [])
        assert (await store.inbox_counts())["pending"] == 2

    async def test_a_claimed_user_comes_with_the_message(self, store: Store) -> None:
        """A user it claims comes back fenced by a lease of its own, with the new message."""
        _, works = await store.add_and_claim(
            [inbound("wamid.1"), inbound("wamid.b", user=BIA)],
            NOW,
            owner="w1",
            until=NOW + 30,
            users=[ANA],
        )
        if isinstance(store, SQLiteStore):  # claims in the insert's transaction
            assert [w.lease.user for w in works] == [ANA]
        for work in works:  # a store may claim none (Mongo): the usual claim then works
            assert (work.lease.user, work.lease.owner) == (ANA, "w1")
            assert [m.id for m in work.inbound] == ["wamid.1"]
            committed = await store.commit_turn(work.lease, "wamid.1", user(), [], NOW)
            assert committed.record.version == 1
        if not works:
            await claim(store, ANA, "w1")

    async def test_never_claims_a_user_another_owner_holds(self, store: Store) -> None:
        """A user held by another owner is not claimed, and that owner's lease still fences."""
        held = await claim(store, ANA, "w1")
        _, works = await store.add_and_claim(
            [inbound("wamid.1")], NOW, owner="w2", until=NOW + 30, users=[ANA]
        )
        assert works == []
        committed = await store.commit_turn(held.lease, "wamid.1", user(), [], NOW)
        assert committed.record.version == 1


async def known(store: Store, key: str = ANA) -> UserRecord:
    """Commit a first turn for ``key`` and release them: the record a later turn reads."""
    work = await claim(store, key)
    record = (await store.commit_turn(work.lease, None, user(key), [], NOW)).record
    await store.release([work.lease])
    return record


async def add_with_turn(
    store: Store, message: InboundMessage, record: UserRecord, owner: str = "w2"
) -> list[Work]:
    """Insert ``message`` and claim its user with a turn run on ``record`` (one reply)."""
    turn = PreTurn(message.id, dataclasses.replace(record, state="next"), (reply("pre"),), NOW)
    _, works = await store.add_and_claim(
        [message], NOW, owner=owner, until=NOW + 30, users=[message.user], turns={ANA: turn}
    )
    return works


class TestTurnsInTheClaim:
    """``add_and_claim``'s ``turns``: committed in the insert's write, or ignored."""

    async def test_a_turn_on_the_stored_record_is_committed_with_the_message(
        self, store: Store
    ) -> None:
        """The message is done, the record moved, the reply queued in flight for the lease."""
        record = await known(store)
        works = await add_with_turn(store, inbound("wamid.2"), record)
        if isinstance(store, SQLiteStore):  # a store may leave it to the worker (Mongo)
            assert [w.handled is not None for w in works] == [True]
            assert store.known_record(ANA) == works[0].record
        for work in works:
            assert work.handled is not None and (work.inbound, work.outbox) == ((), ())
            stored = await store.get_user(ANA)
            assert stored == work.record == work.handled.record
            assert (stored.version, stored.state) == (2, "next")
            [entry] = work.handled.entries
            assert (entry.attempts, entry.inflight_at, entry.inflight_token) == (
                1,
                NOW,
                work.lease.token,
            )
            assert await pending(store) == [entry]
            assert await store.inbox_counts() == {"pending": 0, "done": 1, "failed": 0}
            assert await store.renew([work.lease], NOW + 60) == {ANA}  # the claim's lease
        if not works:
            assert await store.inbox_counts() == {"pending": 1, "done": 0, "failed": 0}
            assert (await store.get_user(ANA)) == record

    async def test_a_turn_on_a_record_changed_since_is_ignored(self, store: Store) -> None:
        """Another write since the turn's read: the message waits, the record is untouched."""
        record = await known(store)
        lease = (await claim(store)).lease
        later = (await store.commit_turn(lease, None, record, [], NOW)).record
        await store.release([lease])
        works = await add_with_turn(store, inbound("wamid.2"), record)
        assert [w.handled for w in works] == [None] * len(works)
        assert [[m.id for m in w.inbound] for w in works] in ([], [["wamid.2"]])
        assert await store.get_user(ANA) == later
        assert await pending(store) == []

    async def test_a_turn_behind_other_pending_work_is_ignored(self, store: Store) -> None:
        """An older message, or a reply still to send, goes first: the turn is not stored."""
        record = await known(store)
        await store.add_inbound([inbound("wamid.1")], NOW)
        works = await add_with_turn(store, inbound("wamid.2"), record)
        assert [[m.id for m in w.inbound] for w in works] in ([], [["wamid.1", "wamid.2"]])
        assert [w.handled for w in works] == [None] * len(works)

        other = await known(store, BIA)
        lease = (await claim(store, BIA)).lease
        queued = await store.commit_turn(lease, None, other, [reply("older")], NOW)
        await store.release([lease])
        message = inbound("wamid.b", user=BIA)
        turn = PreTurn(message.id, queued.record, (reply("pre"),), NOW)
        _, works = await store.add_and_claim(
            [message], NOW, owner="w2", until=NOW + 30, users=[BIA], turns={BIA: turn}
        )
        assert [w.handled for w in works] == [None] * len(works)
        assert [e.outgoing.message for e in await pending(store, BIA)] == [reply("older").message]

    async def test_a_held_user_or_a_duplicate_is_never_handled_here(self, store: Store) -> None:
        """Another owner's user is not claimed; a message seen before is not handled again."""
        record = await known(store)
        held = await claim(store, ANA, "w1")
        assert await add_with_turn(store, inbound("wamid.2"), record) == []
        assert await store.get_user(ANA) == record
        await store.commit_turn(held.lease, "wamid.2", record, [], NOW)
        await store.release([held.lease])
        again = await store.get_user(ANA)
        assert again is not None and again.version == 2
        works = await add_with_turn(store, inbound("wamid.2"), again)  # Meta's retry
        assert [w.handled for w in works] == [None] * len(works)
        assert await store.get_user(ANA) == again
        assert await pending(store) == []


class TestFencing:
    async def test_old_lease_cannot_commit(self, store: Store) -> None:
        """After a takeover the old lease's turn raises ``LeaseLost`` and changes nothing."""
        await store.add_inbound([inbound("wamid.1")], NOW)
        old, new = await taken_over(store)
        with pytest.raises(LeaseLost):
            await store.commit_turn(old, "wamid.1", user(), [reply("stale")], NOW + 32)
        assert await store.get_user(ANA) is None
        assert await store.outbox_of(ANA) == []
        assert [m.id for m in (await store.read_work(new)).inbound] == ["wamid.1"]
        assert await store.inbox_counts() == {"pending": 1, "done": 0, "failed": 0}
        stored = (await store.commit_turn(new, "wamid.1", user(), [reply("ok")], NOW + 32)).record
        assert stored.version == 1

    async def test_old_lease_cannot_begin_a_send(self, store: Store) -> None:
        """After a takeover the old lease's ``begin_send`` raises ``LeaseLost``; nothing moves."""
        lease = (await claim(store, until=NOW + 30)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        await claim(store, owner="w2", until=NOW + 90, now=NOW + 31)
        with pytest.raises(LeaseLost):
            await store.begin_send(lease, entry, NOW + 32)
        assert await entry_named(store, entry.id) == entry

    async def test_old_lease_cannot_save_an_entry(self, store: Store) -> None:
        """After a takeover the old lease's ``save_outbox`` raises ``LeaseLost``; nothing moves."""
        lease = (await claim(store, until=NOW + 30)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        await claim(store, owner="w2", until=NOW + 90, now=NOW + 31)
        with pytest.raises(LeaseLost):
            await store.save_outbox(lease, dataclasses.replace(entry, status="sent", wamid="w.x"))
        assert await entry_named(store, entry.id) == entry

    async def test_old_lease_cannot_touch_an_entry_sent_earlier(self, store: Store) -> None:
        """An entry that was already sent is fenced too: the old lease cannot queue it again."""
        lease = (await claim(store, until=NOW + 30)).lease
        sent = await one_sent(store, lease)
        await claim(store, owner="w2", until=NOW + 90, now=NOW + 31)
        again = dataclasses.replace(sent, status="pending", wamid="", fallback_sent=True)
        with pytest.raises(LeaseLost):
            await store.save_outbox(lease, again)
        with pytest.raises(LeaseLost):
            await store.save_outbox(lease, dataclasses.replace(sent, status="failed"))
        assert await entry_named(store, sent.id) == sent

    async def test_new_lease_writes_entries_of_earlier_leases(self, store: Store) -> None:
        """The new holder can update an entry sent under an earlier lease, and send one again."""
        first = (await claim(store, until=NOW + 30)).lease
        sent = await one_sent(store, first)
        await store.release([first])
        second = (await claim(store, owner="w2", now=NOW + 1)).lease
        again = dataclasses.replace(sent, status="pending", wamid="", fallback_sent=True)
        await store.save_outbox(second, again)
        assert await entry_named(store, sent.id) == again
        started = await store.begin_send(second, again, NOW + 2)
        assert started is not None and started.attempts == 2
        assert started.inflight_token == second.token

    async def test_claiming_again_fences_the_previous_token(self, store: Store) -> None:
        """An owner that claims again gets a new token; its previous lease is refused."""
        first = (await claim(store, owner="w1")).lease
        [entry] = (await store.commit_turn(first, None, user(), [reply("a")], NOW)).entries
        second = (await claim(store, owner="w1", now=NOW + 1)).lease
        with pytest.raises(LeaseLost):
            await store.begin_send(first, entry, NOW + 2)
        with pytest.raises(LeaseLost):
            await store.commit_turn(first, None, user(version=1), [], NOW + 2)
        assert await store.begin_send(second, entry, NOW + 2) is not None

    async def test_released_lease_writes_nothing(self, store: Store) -> None:
        """After its release a lease can neither commit, begin a send nor save an entry."""
        lease = (await claim(store)).lease
        committed = await store.commit_turn(lease, None, user(), [reply("a")], NOW)
        [entry] = committed.entries
        await store.release([lease])
        with pytest.raises(LeaseLost):
            await store.commit_turn(lease, None, committed.record, [], NOW + 1)
        with pytest.raises(LeaseLost):
            await store.begin_send(lease, entry, NOW + 1)
        with pytest.raises(LeaseLost):
            await store.save_outbox(lease, dataclasses.replace(entry, status="skipped"))
        assert await entry_named(store, entry.id) == entry

    async def test_lease_of_another_user_cannot_commit(self, store: Store) -> None:
        """A lease fences its own user only: a record of another user is refused."""
        lease = (await claim(store, BIA)).lease
        with pytest.raises(LeaseLost):
            await store.commit_turn(lease, None, user(ANA), [reply("a")], NOW)
        assert await store.get_user(ANA) is None


class TestCommitTurn:
    async def test_unknown_user_is_none(self, store: Store) -> None:
        """A user never committed has no record."""
        assert await store.get_user(ANA) is None

    async def test_new_user_is_stored_with_version_one(self, store: Store) -> None:
        """Committing a version-0 record stores it as version 1 and returns what is stored."""
        lease = (await claim(store)).lease
        record = user(variables={"name": "Ana", "cart": {"items": [1, 2]}, "n": 2.5, "ok": True})
        stored = (await store.commit_turn(lease, None, record, [], NOW)).record
        assert stored == dataclasses.replace(record, version=1)
        got = await store.get_user(ANA)
        assert got == stored
        assert got is not None and got.variables["ok"] is True

    async def test_every_commit_bumps_the_version(self, store: Store) -> None:
        """Each commit stores the record with the read version plus one."""
        lease = (await claim(store)).lease
        first = (await store.commit_turn(lease, None, user(), [], NOW)).record
        asked = dataclasses.replace(first, state="asked")
        second = (await store.commit_turn(lease, None, asked, [], NOW)).record
        assert second.version == 2
        got = await store.get_user(ANA)
        assert got is not None
        assert (got.version, got.state) == (2, "asked")
        assert (await claim(store, owner="w1", now=NOW + 1)).record == second

    async def test_outgoing_appended_in_order(self, store: Store) -> None:
        """A turn's replies become pending outbox entries with consecutive ``seq`` from 0."""
        lease = (await claim(store)).lease
        outgoing = [reply("one"), reply("two", fallback=True)]
        await store.commit_turn(lease, None, user(), outgoing, NOW)
        entries = await pending(store)
        assert [e.outgoing for e in entries] == outgoing
        assert [e.seq for e in entries] == [0, 1]
        assert [e.id for e in entries] == [outbox_id(ANA, e.seq) for e in entries]
        assert {(e.user, e.status, e.created_at, e.attempts, e.inflight_at) for e in entries} == {
            (ANA, "pending", NOW, 0, 0.0)
        }

    async def test_sequence_continues_across_turns(self, store: Store) -> None:
        """The next turn's replies continue the user's sequence, even after some were sent."""
        lease = (await claim(store)).lease
        first = await store.commit_turn(lease, None, user(), [reply("a"), reply("b")], NOW)
        sent = dataclasses.replace(first.entries[0], status="sent", wamid="wamid.out1")
        await store.save_outbox(lease, sent)
        await store.commit_turn(lease, None, first.record, [reply("c")], NOW + 1)
        assert [e.seq for e in await pending(store)] == [1, 2]

    async def test_sequences_are_per_user(self, store: Store) -> None:
        """Two users' sequences are independent: both start at 0."""
        ana, bia = (await claim(store, ANA)).lease, (await claim(store, BIA)).lease
        await store.commit_turn(ana, None, user(ANA), [reply("a"), reply("b")], NOW)
        await store.commit_turn(bia, None, user(BIA), [reply("c")], NOW)
        assert [e.seq for e in await pending(store, BIA)] == [0]
        assert [e.seq for e in await pending(store, ANA)] == [0, 1]

    async def test_message_is_marked_done(self, store: Store) -> None:
        """The applied message is no longer pending and counts as done."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2", ts=TS + 9)], NOW)
        lease = (await claim(store)).lease
        await store.commit_turn(lease, "wamid.1", user(), [reply("hello")], NOW)
        assert [m.id for m in (await store.read_work(lease)).inbound] == ["wamid.2"]
        assert await store.inbox_counts() == {"pending": 1, "done": 1, "failed": 0}

    async def test_failed_turn_marks_the_message_failed(self, store: Store) -> None:
        """``failed`` marks the message failed yet stores the record and the replies."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2", ts=TS + 9)], NOW)
        lease = (await claim(store)).lease
        record = user(state="error")
        committed = await store.commit_turn(
            lease, "wamid.1", record, [reply("sorry")], NOW, failed="flow crashed"
        )
        assert committed.record == dataclasses.replace(record, version=1)
        assert await store.get_user(ANA) == committed.record
        assert [e.outgoing for e in await pending(store)] == [reply("sorry")]
        assert [m.id for m in (await store.read_work(lease)).inbound] == ["wamid.2"]
        assert await store.inbox_counts() == {"pending": 1, "done": 0, "failed": 1}

    async def test_stale_version_raises_and_changes_nothing(self, store: Store) -> None:
        """A commit from a stale read raises ``VersionConflict`` and writes nothing at all."""
        await store.add_inbound([inbound("wamid.1")], NOW)
        lease = (await claim(store)).lease
        stored = (await store.commit_turn(lease, None, user(state="one"), [reply("1")], NOW)).record
        before = await store.outbox_of(ANA)
        with pytest.raises(VersionConflict):
            await store.commit_turn(lease, "wamid.1", user(state="stale"), [reply("2")], NOW + 1)
        assert await store.get_user(ANA) == stored
        assert await store.outbox_of(ANA) == before
        assert [m.id for m in (await store.read_work(lease)).inbound] == ["wamid.1"]
        assert await store.inbox_counts() == {"pending": 1, "done": 0, "failed": 0}

    async def test_version_ahead_of_store_conflicts(self, store: Store) -> None:
        """A record claiming a version that was never stored is refused."""
        lease = (await claim(store)).lease
        with pytest.raises(VersionConflict):
            await store.commit_turn(lease, None, user(version=3), [reply("x")], NOW)
        assert await store.get_user(ANA) is None
        assert await store.outbox_of(ANA) == []

    async def test_new_user_race_has_one_winner(self, store: Store) -> None:
        """Two turns creating the same user at once: exactly one commit succeeds."""
        lease = (await claim(store)).lease
        results = await asyncio.gather(
            store.commit_turn(lease, None, user(state="left"), [reply("left")], NOW),
            store.commit_turn(lease, None, user(state="right"), [reply("right")], NOW),
            return_exceptions=True,
        )
        winners = [r.record for r in results if isinstance(r, Committed)]
        assert len(winners) == 1
        assert sum(isinstance(r, VersionConflict) for r in results) == 1
        assert await store.get_user(ANA) == winners[0]
        [entry] = await store.outbox_of(ANA)
        assert entry.outgoing == reply(winners[0].state)

    async def test_commit_reports_entries_and_backlog(self, store: Store) -> None:
        """The commit returns the entries it appended and whether older ones were pending."""
        lease = (await claim(store)).lease
        first = await store.commit_turn(lease, None, user(), [reply("a"), reply("b")], NOW)
        assert [e.seq for e in first.entries] == [0, 1] and not first.backlog
        assert list(first.entries) == await pending(store)
        second = await store.commit_turn(lease, None, first.record, [reply("c")], NOW)
        assert [e.seq for e in second.entries] == [2] and second.backlog
        for entry in await pending(store):
            await store.save_outbox(
                lease, dataclasses.replace(entry, status="sent", wamid=entry.id)
            )
        third = await store.commit_turn(lease, None, second.record, [reply("d")], NOW)
        assert not third.backlog and third.entries[0].outgoing == reply("d")

    async def test_concurrent_read_modify_write_loses_nothing(self, store: Store) -> None:
        """Fifty concurrent increments that retry on conflict all land, each with its reply."""
        lease = (await claim(store)).lease
        await store.commit_turn(lease, None, user(variables={"n": 0}), [], NOW)

        async def increment() -> None:
            while True:
                current = await store.get_user(ANA)
                assert current is not None
                n = current.variables["n"] + 1
                record = dataclasses.replace(current, variables={"n": n})
                try:
                    await store.commit_turn(lease, None, record, [reply(f"{n}")], NOW)
                    return
                except VersionConflict:
                    continue

        await asyncio.gather(*(increment() for _ in range(50)))
        final = await store.get_user(ANA)
        assert final is not None
        assert (final.variables["n"], final.version) == (50, 51)
        entries = await pending(store)
        assert [e.outgoing.message for e in entries] == [
            reply(f"{n}").message for n in range(1, 51)
        ]
        assert [e.seq for e in entries] == list(range(50))


class TestConcurrentWrites:
    async def test_a_refused_write_among_concurrent_ones_leaves_the_others_stored(
        self, store: Store
    ) -> None:
        """Writes made at the same moment (SQLite runs them in one transaction): the one
        refused raises, and every other is stored as if it had been alone."""
        old, _ = await taken_over(store)
        bia = (await claim(store, BIA, "w1")).lease
        results = await asyncio.gather(
            store.add_inbound([inbound("wamid.c1")], NOW),
            store.commit_turn(bia, None, user(BIA), [reply("to bia")], NOW),
            store.commit_turn(old, None, user(), [reply("never")], NOW),
            store.add_inbound([inbound("wamid.c2", user=BIA)], NOW),
            return_exceptions=True,
        )
        assert isinstance(results[2], LeaseLost)
        assert not any(isinstance(r, BaseException) for i, r in enumerate(results) if i != 2)
        assert [e.outgoing for e in await pending(store, BIA)] == [reply("to bia")]
        assert await pending(store, ANA) == []
        assert [i.message.id for i in await store.inbox_of(ANA)] == ["wamid.c1"]
        assert [i.message.id for i in await store.inbox_of(BIA)] == ["wamid.c2"]


class TestStartSending:
    async def test_due_entries_are_stored_in_flight(self, store: Store) -> None:
        """With ``start_sending`` the new entries are stored as their first attempt in flight."""
        lease = (await claim(store)).lease
        committed = await store.commit_turn(
            lease, None, user(), [reply("a"), reply("b")], NOW, start_sending=True
        )
        assert not committed.backlog
        expected = {(1, NOW, lease.token)}
        assert {
            (e.attempts, e.inflight_at, e.inflight_token) for e in committed.entries
        } == expected
        stored = await pending(store)
        assert stored == list(committed.entries)

    async def test_not_in_flight_behind_an_older_pending_entry(self, store: Store) -> None:
        """An older entry still pending keeps the new ones out of flight (order)."""
        lease = (await claim(store)).lease
        first = await store.commit_turn(lease, None, user(), [reply("a")], NOW)
        second = await store.commit_turn(
            lease, None, first.record, [reply("b")], NOW, start_sending=True
        )
        assert second.backlog
        [entry] = second.entries
        assert (entry.attempts, entry.inflight_at, entry.inflight_token) == (0, 0.0, "")
        assert await entry_named(store, entry.id) == entry

    async def test_a_reminder_is_never_in_flight(self, store: Store) -> None:
        """A reply with ``send_at`` in the future is stored not started, beside one that is."""
        lease = (await claim(store)).lease
        later = reply("remember", send_at=NOW + 3600)
        committed = await store.commit_turn(
            lease, None, user(), [reply("now"), later], NOW, start_sending=True
        )
        now_entry, reminder = committed.entries
        assert (now_entry.attempts, now_entry.inflight_token) == (1, lease.token)
        assert (reminder.attempts, reminder.inflight_at, reminder.inflight_token) == (0, 0.0, "")
        assert await entry_named(store, reminder.id) == reminder

    async def test_a_reminder_not_yet_due_is_no_backlog(self, store: Store) -> None:
        """A pending reminder due later does not hold a new reply out of flight."""
        lease = (await claim(store)).lease
        first = await store.commit_turn(
            lease, None, user(), [reply("remember", send_at=NOW + 3600)], NOW
        )
        second = await store.commit_turn(
            lease, None, first.record, [reply("now")], NOW, start_sending=True
        )
        assert not second.backlog
        [entry] = second.entries
        assert (entry.attempts, entry.inflight_token) == (1, lease.token)

    async def test_without_start_sending_nothing_is_in_flight(self, store: Store) -> None:
        """By default the new entries are stored with no attempt."""
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        assert (entry.attempts, entry.inflight_at, entry.inflight_token) == (0, 0.0, "")


class TestEnqueue:
    async def test_never_seen_user_is_created(self, store: Store) -> None:
        """Enqueueing to a user never seen creates a blank record at version 1."""
        entries = await store.enqueue(ANA, [reply("promo")], NOW)
        assert [(e.seq, e.status, e.attempts, e.outgoing) for e in entries] == [
            (0, "pending", 0, reply("promo"))
        ]
        record = await store.get_user(ANA)
        assert record is not None
        assert (record.key, record.wa_id, record.version) == (ANA, ANA, 1)
        assert await pending(store) == entries
        assert (await claim(store)).record == record

    async def test_appends_after_turns_and_bumps_the_version(self, store: Store) -> None:
        """Enqueued entries continue the sequence and the version goes up by one."""
        lease = (await claim(store)).lease
        committed = await store.commit_turn(lease, None, user(state="s"), [reply("a")], NOW)
        entries = await store.enqueue(ANA, [reply("b"), reply("c")], NOW + 1)
        assert [e.seq for e in entries] == [1, 2]
        record = await store.get_user(ANA)
        assert record == dataclasses.replace(committed.record, version=2)
        assert [e.outgoing for e in await pending(store)] == [reply("a"), reply("b"), reply("c")]

    async def test_a_turn_that_read_before_the_enqueue_conflicts(self, store: Store) -> None:
        """A worker's turn from the version read before an enqueue raises ``VersionConflict``."""
        lease = (await claim(store)).lease
        read = (await store.commit_turn(lease, None, user(), [], NOW)).record
        await store.enqueue(ANA, [reply("promo")], NOW + 1)
        with pytest.raises(VersionConflict):
            await store.commit_turn(lease, None, read, [reply("late")], NOW + 2)
        assert [e.outgoing for e in await pending(store)] == [reply("promo")]

    async def test_claimed_user_never_committed(self, store: Store) -> None:
        """Enqueueing to a claimed but never committed user creates the record at version 1."""
        work = await claim(store)
        await store.enqueue(ANA, [reply("promo")], NOW + 1)
        record = await store.get_user(ANA)
        assert record is not None and record.version == 1
        with pytest.raises(VersionConflict):
            await store.commit_turn(work.lease, None, work.record, [], NOW + 2)
        again = await store.read_work(work.lease)
        assert again.record == record
        assert [e.outgoing for e in again.outbox] == [reply("promo")]

    async def test_holder_can_send_enqueued_entries(self, store: Store) -> None:
        """Entries enqueued while a lease is held can be sent by its holder."""
        lease = (await claim(store)).lease
        [entry] = await store.enqueue(ANA, [reply("promo")], NOW)
        started = await store.begin_send(lease, entry, NOW + 1)
        assert started is not None and started.attempts == 1

    async def test_concurrent_enqueues_all_land(self, store: Store) -> None:
        """Ten concurrent enqueues each get their own ``seq``; the version counts them."""
        await asyncio.gather(*(store.enqueue(ANA, [reply(str(i))], NOW) for i in range(10)))
        entries = await pending(store)
        assert [e.seq for e in entries] == list(range(10))
        assert sorted(str(e.outgoing.message) for e in entries) == sorted(
            str(reply(str(i)).message) for i in range(10)
        )
        record = await store.get_user(ANA)
        assert record is not None and record.version == 10


class TestBeginSend:
    async def test_records_the_attempt(self, store: Store) -> None:
        """An attempt is counted and stored in flight with the lease's token."""
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        started = await store.begin_send(lease, entry, NOW + 1)
        assert started == dataclasses.replace(
            entry, attempts=1, inflight_at=NOW + 1, inflight_token=lease.token
        )
        assert await entry_named(store, entry.id) == started
        again = await store.begin_send(lease, started, NOW + 2)
        assert again is not None and again.attempts == 2

    async def test_none_for_an_entry_no_longer_pending(self, store: Store) -> None:
        """An entry that was sent (or settled) is not started again."""
        lease = (await claim(store)).lease
        sent = await one_sent(store, lease)
        assert await store.begin_send(lease, sent, NOW + 1) is None
        [entry] = (await store.commit_turn(lease, None, user(version=1), [reply("b")], NOW)).entries
        skipped = dataclasses.replace(entry, status="skipped", reason="opted out")
        await store.save_outbox(lease, skipped)
        assert await store.begin_send(lease, entry, NOW + 1) is None
        assert await entry_named(store, entry.id) == skipped

    async def test_none_when_a_wamid_was_recorded(self, store: Store) -> None:
        """A pending entry with a wamid (Meta accepted it) is not started again."""
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        accepted = dataclasses.replace(entry, wamid="wamid.out1")
        await store.save_outbox(lease, accepted)
        assert await store.begin_send(lease, accepted, NOW + 1) is None
        assert (await entry_named(store, entry.id)).attempts == 0

    async def test_none_for_an_unknown_entry(self, store: Store) -> None:
        """An entry that was never stored is not started."""
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        ghost = dataclasses.replace(entry, id=outbox_id(ANA, 99), seq=99)
        assert await store.begin_send(lease, ghost, NOW + 1) is None


class TestCallbackReconciliation:
    async def in_flight(self, store: Store, attempts: int = 1) -> tuple[Lease, OutboxEntry]:
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        for _ in range(attempts):
            started = await store.begin_send(lease, entry, NOW + 1)
            assert started is not None
            entry = started
        return lease, entry

    @pytest.mark.parametrize("name", ["sent", "delivered"])
    async def test_status_of_the_attempt_records_the_wamid(self, store: Store, name: str) -> None:
        """A status echoing the attempt's callback data records its wamid; no resend then."""
        lease, entry = await self.in_flight(store)
        echo = status("wamid.meta", name, callback=callback_data(entry.id, entry.attempts))
        assert await store.add_statuses([echo], NOW + 2) == [True]
        stored = await entry_named(store, entry.id)
        assert (stored.wamid, stored.status, stored.inflight_at) == ("wamid.meta", name, 0.0)
        assert await store.begin_send(lease, entry, NOW + 3) is None
        assert (await store.read_work(lease)).statuses == ()
        assert await store.outbox_for_status(status("wamid.meta", "read")) == stored

    async def test_status_of_an_older_attempt_changes_nothing(self, store: Store) -> None:
        """A status naming an earlier attempt leaves the entry in flight, the item pending."""
        lease, entry = await self.in_flight(store, attempts=2)
        echo = status("wamid.meta", "sent", callback=callback_data(entry.id, 1))
        await store.add_statuses([echo], NOW + 2)
        assert await entry_named(store, entry.id) == entry
        assert [s.id for s in (await store.read_work(lease)).statuses] == ["wamid.meta"]

    async def test_entry_not_in_flight_is_left_alone(self, store: Store) -> None:
        """A status naming an entry with no attempt in flight changes nothing."""
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        echo = status("wamid.meta", "sent", callback=callback_data(entry.id, 0))
        await store.add_statuses([echo], NOW + 2)
        assert await entry_named(store, entry.id) == entry
        assert await store.begin_send(lease, entry, NOW + 3) is not None

    async def test_another_recipients_status_changes_nothing(self, store: Store) -> None:
        """Callback data naming the entry of another user is not applied to it."""
        _, entry = await self.in_flight(store)
        echo = status("wamid.meta", "sent", recipient=BIA, callback=callback_data(entry.id, 1))
        await store.add_statuses([echo], NOW + 2)
        assert await entry_named(store, entry.id) == entry

    async def test_failed_status_does_not_record_the_wamid(self, store: Store) -> None:
        """A ``failed`` status echoing the attempt waits for the worker; the entry is unchanged."""
        lease, entry = await self.in_flight(store)
        echo = status("wamid.meta", "failed", callback=callback_data(entry.id, 1))
        await store.add_statuses([echo], NOW + 2)
        assert await entry_named(store, entry.id) == entry
        assert [s.status for s in (await store.read_work(lease)).statuses] == ["failed"]


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
        got = (await claim(store)).statuses
        assert [(s.id, s.status) for s in got] == [("wamid.o1", "delivered"), ("wamid.o2", "read")]
        assert [s.id for s in (await claim(store, limit=1)).statuses] == ["wamid.o1"]

    async def test_same_second_goes_sent_delivered_read(self, store: Store) -> None:
        """Statuses of one second stored in one batch come in the order they happen in."""
        await store.add_statuses(
            [status("wamid.o", "read"), status("wamid.o", "sent"), status("wamid.o", "delivered")],
            NOW,
        )
        got = [s.status for s in (await claim(store)).statuses]
        assert got == ["sent", "delivered", "read"]

    async def test_status_round_trips(self, store: Store) -> None:
        """A stored status item comes back equal, errors, callback data and raw item included."""
        item = {
            "id": "wamid.o",
            "status": "failed",
            "timestamp": "1764000050",
            "recipient_id": ANA,
            "biz_opaque_callback_data": callback_data(outbox_id(ANA, 0), 1),
            "errors": [{"code": 131047, "title": "Re-engagement message"}],
        }
        failed = parse_status(item, phone_number_id="1066")
        await store.add_statuses([failed], NOW)
        [got] = (await claim(store)).statuses
        assert got == failed
        assert got.raw == failed.raw

    async def test_finish_statuses(self, store: Store) -> None:
        """Finished items are no longer pending; the others stay."""
        await store.add_statuses([status("wamid.o", "sent"), status("wamid.o", "read")], NOW)
        lease = (await claim(store)).lease
        await store.finish_statuses(ANA, [("wamid.o", "sent")])
        assert [s.status for s in (await store.read_work(lease)).statuses] == ["read"]
        await store.finish_statuses(ANA, [])
        assert len((await store.read_work(lease)).statuses) == 1

    async def test_finish_statuses_is_per_user(self, store: Store) -> None:
        """Finishing a user's items leaves another recipient's alone."""
        await store.add_statuses([status("wamid.b", "failed", recipient=BIA)], NOW)
        await store.finish_statuses(ANA, [("wamid.b", "failed")])
        assert [s.id for s in (await claim(store, BIA)).statuses] == ["wamid.b"]

    async def test_finished_status_stays_a_duplicate(self, store: Store) -> None:
        """A redelivered status that was already applied is not taken in again."""
        await store.add_statuses([status("wamid.o", "read")], NOW)
        await store.finish_statuses(ANA, [("wamid.o", "read")])
        assert await store.add_statuses([status("wamid.o", "read")], NOW + 1) == [False]
        assert (await claim(store)).statuses == ()


class TestStatusProgress:
    async def test_progress_is_applied_on_the_way_in(self, store: Store) -> None:
        """delivered then read move the entry forward and need no worker."""
        lease = (await claim(store)).lease
        await one_sent(store, lease)
        await store.release([lease])
        await store.add_statuses([status("wamid.out1", "delivered")], NOW)
        entry = await store.outbox_for_status(status("wamid.out1", "delivered"))
        assert entry is not None and entry.status == "delivered"
        await store.add_statuses([status("wamid.out1", "read", ts=1_764_000_060)], NOW)
        entry = await store.outbox_for_status(status("wamid.out1", "read"))
        assert entry is not None and entry.status == "read" and entry.sent_as == "session"
        assert await store.users_with_work(NOW, 10) == []
        assert (await claim(store)).statuses == ()

    async def test_progress_never_moves_back(self, store: Store) -> None:
        """A delivered that arrives after read leaves the entry read."""
        lease = (await claim(store)).lease
        await one_sent(store, lease)
        await store.add_statuses([status("wamid.out1", "read")], NOW)
        await store.add_statuses([status("wamid.out1", "delivered")], NOW)
        entry = await store.outbox_for_status(status("wamid.out1", "read"))
        assert entry is not None and entry.status == "read"
        assert (await store.read_work(lease)).statuses == ()

    async def test_failed_and_unknown_stay_pending(self, store: Store) -> None:
        """A failed status, and one for a wamid not in the outbox, wait for the worker."""
        lease = (await claim(store)).lease
        await one_sent(store, lease)
        await store.add_statuses(
            [status("wamid.out1", "failed"), status("wamid.early", "delivered")], NOW
        )
        entry = await store.outbox_for_status(status("wamid.out1", "failed"))
        assert entry is not None and entry.status == "sent"
        got = (await store.read_work(lease)).statuses
        assert sorted((s.id, s.status) for s in got) == [
            ("wamid.early", "delivered"),
            ("wamid.out1", "failed"),
        ]


class TestSaveOutbox:
    async def test_saved_fields_come_back(self, store: Store) -> None:
        """Every delivery field saved is stored; the reply itself is kept."""
        lease = (await claim(store)).lease
        [entry] = (
            await store.commit_turn(lease, None, user(), [reply("hi", fallback=True)], NOW)
        ).entries
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
            inflight_at=NOW + 1,
            inflight_token="t",
        )
        await store.save_outbox(lease, sent)
        assert await store.outbox_for_status(status("wamid.out1", "read")) == sent
        assert await pending(store) == []

    async def test_a_status_that_got_there_first_is_kept(self, store: Store) -> None:
        """Saving ``sent`` over the same wamid already ``delivered`` keeps ``delivered``."""
        lease = (await claim(store)).lease
        entry, started = await in_flight(store, lease)
        echo = status("wamid.m", "delivered", callback=callback_data(entry.id, 1))
        await store.add_statuses([echo], NOW + 1)
        sent = dataclasses.replace(started, status="sent", wamid="wamid.m", sent_as="session")
        await store.save_outbox(lease, sent)
        stored = await entry_named(store, entry.id)
        assert (stored.status, stored.sent_as, stored.wamid) == ("delivered", "session", "wamid.m")

    async def test_a_status_that_settled_an_attempt_outlives_its_outcome_unknown(
        self, store: Store
    ) -> None:
        """Meta's ``sent`` (naming the attempt) beat the owner's timeout: the entry stays sent."""
        lease = (await claim(store)).lease
        entry, started = await in_flight(store, lease)
        echo = status("wamid.m", "sent", callback=callback_data(entry.id, 1))
        await store.add_statuses([echo], NOW + 1)
        unknown = dataclasses.replace(started, inflight_token="", reason="no answer in 10s")
        await store.save_outbox(lease, unknown)
        stored = await entry_named(store, entry.id)
        assert (stored.status, stored.wamid, stored.inflight_at) == ("sent", "wamid.m", 0)
        assert await pending(store) == []

    async def test_outcome_unknown_is_stored_when_no_status_came(self, store: Store) -> None:
        """With no status yet, the attempt's unknown outcome is stored as it is."""
        lease = (await claim(store)).lease
        entry, started = await in_flight(store, lease)
        unknown = dataclasses.replace(started, inflight_token="", reason="no answer in 10s")
        await store.save_outbox(lease, unknown)
        assert await entry_named(store, entry.id) == unknown

    async def test_delivered_never_overwrites_read(self, store: Store) -> None:
        """An owner's ``delivered`` over a stored ``read`` of the same wamid stays ``read``."""
        lease = (await claim(store)).lease
        sent = await one_sent(store, lease)
        await store.add_statuses([status(sent.wamid, "read")], NOW)
        await store.save_outbox(lease, dataclasses.replace(sent, status="delivered"))
        assert (await entry_named(store, sent.id)).status == "read"

    async def test_failed_over_the_same_wamid_is_taken(self, store: Store) -> None:
        """A ``failed`` outcome is stored over a delivered entry of the same wamid."""
        lease = (await claim(store)).lease
        sent = await one_sent(store, lease)
        await store.add_statuses([status(sent.wamid, "delivered")], NOW)
        await store.save_outbox(lease, dataclasses.replace(sent, status="failed", reason="x"))
        stored = await entry_named(store, sent.id)
        assert (stored.status, stored.reason) == ("failed", "x")

    async def test_another_wamid_takes_the_entrys_status(self, store: Store) -> None:
        """Queued again without a wamid (for its fallback), the entry is pending again."""
        lease = (await claim(store)).lease
        sent = await one_sent(store, lease)
        await store.add_statuses([status(sent.wamid, "read")], NOW)
        again = dataclasses.replace(sent, status="pending", wamid="", fallback_sent=True)
        await store.save_outbox(lease, again)
        assert await entry_named(store, sent.id) == again

    async def test_unknown_entry_is_a_no_op(self, store: Store) -> None:
        """Saving an entry that was never stored changes nothing."""
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        ghost = dataclasses.replace(entry, id=outbox_id(ANA, 7), seq=7, status="sent")
        await store.save_outbox(lease, ghost)
        assert await store.outbox_of(ANA) == [entry]


class TestOutboxForStatus:
    async def test_by_wamid(self, store: Store) -> None:
        """A status naming a sent wamid finds that entry."""
        lease = (await claim(store)).lease
        sent = await one_sent(store, lease)
        assert await store.outbox_for_status(status("wamid.out1", "failed")) == sent

    async def test_by_callback_data_of_the_same_recipient(self, store: Store) -> None:
        """With no entry of that wamid, the callback data names the recipient's entry."""
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("a")], NOW)).entries
        echo = status("wamid.meta", "failed", callback=callback_data(entry.id, 1))
        assert await store.outbox_for_status(echo) == entry
        other = status("wamid.meta", "failed", recipient=BIA, callback=echo.callback_data)
        assert await store.outbox_for_status(other) is None

    async def test_wamid_wins_over_callback_data(self, store: Store) -> None:
        """When the wamid names an entry, that entry is the answer whatever the callback says."""
        lease = (await claim(store)).lease
        sent = await one_sent(store, lease)
        [other] = (await store.commit_turn(lease, None, user(version=1), [reply("b")], NOW)).entries
        echo = status(sent.wamid, "read", callback=callback_data(other.id, 1))
        assert await store.outbox_for_status(echo) == sent

    async def test_unknown_and_foreign_callback_data(self, store: Store) -> None:
        """Neither an unknown wamid nor callback data that is not ours finds an entry."""
        lease = (await claim(store)).lease
        await one_sent(store, lease)
        assert await store.outbox_for_status(status("wamid.nobody", "read")) is None
        foreign = status("wamid.nobody", "read", callback="campaign-7")
        assert await store.outbox_for_status(foreign) is None

    async def test_empty_wamid_finds_nothing(self, store: Store) -> None:
        """Unsent entries (no wamid yet) are never found by an empty wamid."""
        lease = (await claim(store)).lease
        await store.commit_turn(lease, None, user(), [reply("hi")], NOW)
        empty = StatusUpdate(id="", status="sent", timestamp=TS, recipient=ANA)
        assert await store.outbox_for_status(empty) is None


class TestOutbox:
    async def test_reminder_waits_for_its_time(self, store: Store) -> None:
        """A reply with ``send_at`` is pending but only due, and work, from that time."""
        lease = (await claim(store)).lease
        await store.commit_turn(lease, None, user(), [reply("remember", send_at=NOW + 3600)], NOW)
        await store.release([lease])
        [entry] = await pending(store)
        assert entry.next_attempt_at == NOW + 3600 and entry.outgoing.send_at == NOW + 3600
        assert await store.users_with_work(NOW + 60, 10) == []
        assert await store.users_with_work(NOW + 3600, 10) == [ANA]

    async def test_outbox_of_lists_every_status_newest_last(self, store: Store) -> None:
        """``outbox_of`` lists sent and pending entries in ``seq`` order, the newest ``limit``."""
        lease = (await claim(store)).lease
        committed = await store.commit_turn(
            lease, None, user(), [reply(str(i)) for i in range(5)], NOW
        )
        sent = dataclasses.replace(committed.entries[0], status="sent", wamid="wamid.o")
        await store.save_outbox(lease, sent)
        assert [e.seq for e in await store.outbox_of(ANA)] == [0, 1, 2, 3, 4]
        assert (await store.outbox_of(ANA))[0] == sent
        assert [e.seq for e in await store.outbox_of(ANA, limit=2)] == [3, 4]
        assert await store.outbox_of(BIA) == []


class TestUsersWithWork:
    async def test_nothing_to_do(self, store: Store) -> None:
        """An empty store has no users with work."""
        assert await store.users_with_work(NOW, 10) == []

    async def test_pending_inbox_is_work_until_done(self, store: Store) -> None:
        """A user with pending messages is listed once, and no longer after the turns."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2")], NOW)
        assert await store.users_with_work(NOW, 10) == [ANA]
        lease = (await claim(store)).lease
        done = await store.commit_turn(lease, "wamid.1", user(), [], NOW)
        await store.commit_turn(lease, "wamid.2", done.record, [], NOW)
        await store.release([lease])
        assert await store.users_with_work(NOW, 10) == []

    async def test_unapplied_statuses_are_work_for_the_recipient(self, store: Store) -> None:
        """Unapplied status items list their recipient until they are finished."""
        await store.add_statuses([status("wamid.out1", "delivered", recipient=BIA)], NOW)
        assert await store.users_with_work(NOW, 10) == [BIA]
        await store.finish_statuses(BIA, [("wamid.out1", "delivered")])
        assert await store.users_with_work(NOW, 10) == []

    async def test_due_outbox_is_work(self, store: Store) -> None:
        """Pending outbox entries due by ``now`` are work; sent ones are not."""
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("hi")], NOW)).entries
        await store.release([lease])
        assert await store.users_with_work(NOW, 10) == [ANA]
        lease = (await claim(store)).lease
        await store.save_outbox(lease, dataclasses.replace(entry, status="sent", wamid="w.o"))
        await store.release([lease])
        assert await store.users_with_work(NOW, 10) == []

    async def test_outbox_not_yet_due_is_not_work(self, store: Store) -> None:
        """An entry waiting for a retry is not work before its ``next_attempt_at``."""
        lease = (await claim(store)).lease
        [entry] = (await store.commit_turn(lease, None, user(), [reply("hi")], NOW)).entries
        await store.save_outbox(
            lease, dataclasses.replace(entry, attempts=1, next_attempt_at=NOW + 60)
        )
        await store.release([lease])
        assert await store.users_with_work(NOW + 59, 10) == []
        assert await store.users_with_work(NOW + 60, 10) == [ANA]

    async def test_leased_users_are_left_out_until_expiry(self, store: Store) -> None:
        """Users whose lease is live are omitted; once it expires they are listed again."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2", user=BIA)], NOW)
        await claim(store, ANA, "w1", until=NOW + 30)
        assert await store.users_with_work(NOW + 30, 10) == [BIA]
        assert sorted(await store.users_with_work(NOW + 31, 10)) == [ANA, BIA]

    async def test_released_users_are_listed_again(self, store: Store) -> None:
        """A user whose lease was released with work left is listed at once."""
        await store.add_inbound([inbound("wamid.1")], NOW)
        lease = (await claim(store, until=NOW + 30)).lease
        assert await store.users_with_work(NOW, 10) == []
        await store.release([lease])
        assert await store.users_with_work(NOW, 10) == [ANA]

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


class TestPurge:
    async def test_purge_removes_old_finished_work_only(self, store: Store) -> None:
        """Old handled messages, applied statuses and sent replies go; pending work stays."""
        old, recent = NOW, NOW + 10 * 86400
        await store.add_inbound([inbound("wamid.old"), inbound("wamid.wait", ts=TS + 1)], old)
        lease = (await claim(store, until=recent + 30)).lease
        committed = await store.commit_turn(
            lease, "wamid.old", user(), [reply("sent"), reply("queued")], old
        )
        sent = dataclasses.replace(committed.entries[0], status="sent", wamid="wamid.out")
        await store.save_outbox(lease, sent)
        await store.add_statuses([status("wamid.out", "delivered")], old)
        await store.add_inbound([inbound("wamid.new", ts=TS + 2)], recent)
        await store.commit_turn(lease, "wamid.new", committed.record, [], recent)
        deleted = await store.purge(old + 86400, 100)
        assert deleted == 3  # the old message, its applied status, its sent reply
        assert await store.inbox_counts() == {"pending": 1, "done": 1, "failed": 0}
        assert [e.outgoing for e in await store.outbox_of(ANA)] == [reply("queued")]
        assert await store.outbox_for_status(status("wamid.out", "read")) is None
        assert await store.add_inbound([inbound("wamid.old")], recent) == [True]  # forgotten
        assert await store.purge(old + 86400, 100) == 0

    async def test_failed_messages_go_pending_statuses_stay(self, store: Store) -> None:
        """Old failed messages are purged; status items still pending never are."""
        await store.add_inbound([inbound("wamid.1")], NOW)
        await store.add_statuses([status("wamid.x", "failed")], NOW)
        lease = (await claim(store)).lease
        await store.commit_turn(lease, "wamid.1", user(), [], NOW, failed="bad")
        assert await store.purge(NOW + 1, 100) == 1
        assert await store.inbox_counts() == {"pending": 0, "done": 0, "failed": 0}
        assert [s.id for s in (await store.read_work(lease)).statuses] == ["wamid.x"]

    async def test_purge_respects_the_limit(self, store: Store) -> None:
        """At most ``limit`` rows of each kind go per call."""
        await store.add_inbound([inbound(f"wamid.{i}", ts=TS + i) for i in range(5)], NOW)
        lease = (await claim(store)).lease
        record = user()
        for i in range(5):
            record = (await store.commit_turn(lease, f"wamid.{i}", record, [], NOW)).record
        assert await store.purge(NOW + 1, 2) == 2
        assert (await store.inbox_counts())["done"] == 3


class TestDurability:
    async def test_data_survives_close_and_reopen(self, store: Store, backend: Backend) -> None:
        """Everything written is there again in a new store on the same data."""
        await store.add_inbound([inbound("wamid.1"), inbound("wamid.2")], NOW)
        await store.add_statuses([status("wamid.o", "read")], NOW)
        lease = (await claim(store)).lease
        record = (await store.commit_turn(lease, "wamid.1", user(), [reply("hi")], NOW)).record
        await store.release([lease])
        await claim(store, BIA, "w1", until=NOW + 30)
        await store.close()
        await store.close()  # twice is fine

        reopened = backend.make()
        await reopened.open()
        try:
            assert await reopened.get_user(ANA) == record
            work = await claim(reopened, ANA, "w2", now=NOW + 1)
            assert work.record == record
            assert [m.id for m in work.inbound] == ["wamid.2"]
            assert [e.outgoing for e in work.outbox] == [reply("hi")]
            assert [s.status for s in work.statuses] == ["read"]
            assert await reopened.claim(BIA, "w2", NOW + 30, NOW + 1) is None
            assert await reopened.inbox_counts() == {"pending": 1, "done": 1, "failed": 0}
        finally:
            await reopened.close()

    async def test_open_twice_is_harmless(self, store: Store, backend: Backend) -> None:
        """Opening a second store on existing data (indexes, tables) keeps the data."""
        await store.add_inbound([inbound("wamid.1")], NOW)
        other = backend.make()
        await other.open()
        try:
            assert [m.id for m in (await claim(other)).inbound] == ["wamid.1"]
        finally:
            await other.close()


# --- reminder jobs -----------------------------------------------------------------------------


def job(
    key: str = "",
    user: str = ANA,
    *,
    at: float = NOW,
    expires_after: float = 0.0,
    created: float = NOW - 100,
) -> Job:
    """A job with a text reminder due at ``at``."""
    return build_job(
        user, reply(key or "r"), at=at, now=created, key=key, expires_after=expires_after
    )


def jobs_store(store: Store) -> JobStore:
    """The store as the job dispatcher sees it (every backend is one)."""
    assert isinstance(store, JobStore)
    return store


class TestJobs:
    async def test_a_job_is_stored_as_scheduled(self, store: Store) -> None:
        """A scheduled job comes back with everything it was given."""
        s = jobs_store(store)
        made = job("appt:1", expires_after=600)
        await s.schedule_jobs([made])
        [found] = await s.find_jobs(user=ANA)
        assert found == made
        assert (found.state, found.expires_at, found.id) == (
            "scheduled",
            NOW + 600,
            f"{ANA}|appt:1",
        )

    async def test_the_same_key_again_replaces_the_job(self, store: Store) -> None:
        """Scheduling a key twice leaves one job: the later."""
        s = jobs_store(store)
        await s.schedule_jobs([job("appt:1", at=NOW)])
        later = job("appt:1", at=NOW + 3600)
        await s.schedule_jobs([later])
        found = await s.find_jobs(key="appt:1")
        assert [(j.uid, j.send_at) for j in found] == [(later.uid, NOW + 3600)]

    async def test_keys_are_per_user(self, store: Store) -> None:
        """Two users' jobs with the same key are two jobs."""
        s = jobs_store(store)
        await s.schedule_jobs([job("appt:1"), job("appt:1", user=BIA)])
        assert len(await s.find_jobs(key="appt:1")) == 2
        assert await s.cancel_jobs(NOW, key="appt:1", user=BIA) == 1
        assert [j.state for j in await s.find_jobs(user=ANA)] == ["scheduled"]

    async def test_cancel_by_key_and_prefix(self, store: Store) -> None:
        """Cancelled jobs are never claimed; a prefix cancels a campaign."""
        s = jobs_store(store)
        await s.schedule_jobs([job("camp:1"), job("camp:2", user=BIA), job("other")])
        assert await s.cancel_jobs(NOW, prefix="camp:") == 2
        claimed = await s.claim_jobs("w1", NOW, NOW + 30, 10)
        assert [j.key for j in claimed] == ["other"]
        states = {j.key: j.state for j in await s.find_jobs()}
        assert states == {"camp:1": "cancelled", "camp:2": "cancelled", "other": "scheduled"}

    async def test_claims_due_jobs_oldest_first_once(self, store: Store) -> None:
        """Only due jobs are claimed, by send_at, and a claimed job is not claimed again."""
        s = jobs_store(store)
        await s.schedule_jobs([job("b", at=NOW - 5), job("a", at=NOW - 10), job("c", at=NOW + 5)])
        first = await s.claim_jobs("w1", NOW, NOW + 30, 10)
        assert [j.key for j in first] == ["a", "b"]
        assert all(j.claim_token for j in first)
        assert await s.claim_jobs("w2", NOW + 1, NOW + 31, 10) == []

    async def test_concurrent_claimers_share_jobs_without_overlap(self, store: Store) -> None:
        """Ten claimers at once: every job is claimed by exactly one of them."""
        s = jobs_store(store)
        await s.schedule_jobs([job(f"k{i}", user=f"1555{i:07d}") for i in range(40)])
        got = await asyncio.gather(*(s.claim_jobs(f"w{n}", NOW, NOW + 30, 7) for n in range(10)))
        got.append(await s.claim_jobs("late", NOW, NOW + 30, 40))  # whatever races left
        ids = [j.id for batch in got for j in batch]
        assert len(ids) == len(set(ids)) == 40

    async def test_an_expired_claim_is_taken_over(self, store: Store) -> None:
        """A crashed claimer's jobs are claimed by another once its lease ran out."""
        s = jobs_store(store)
        await s.schedule_jobs([job("k")])
        [old] = await s.claim_jobs("w1", NOW, NOW + 30, 10)
        assert await s.claim_jobs("w2", NOW + 29, NOW + 59, 10) == []
        [new] = await s.claim_jobs("w2", NOW + 31, NOW + 61, 10)
        assert new.claim_token != old.claim_token
        assert await s.hand_over(old, old.outgoing, NOW + 31) is None  # fenced
        assert await s.settle_job(old, NOW + 31, state="skipped", reason="x") is False
        entry = await s.hand_over(new, new.outgoing, NOW + 31)
        assert entry is not None and entry.id == job_entry_id(new)

    async def test_hand_over_appends_to_the_outbox_and_marks_queued(self, store: Store) -> None:
        """A handed-over job is a pending outbox entry of its user, once, and queued."""
        s = jobs_store(store)
        await s.schedule_jobs([job("k")])
        [claimed] = await s.claim_jobs("w1", NOW, NOW + 30, 10)
        entry = await s.hand_over(claimed, claimed.outgoing, NOW)
        assert entry is not None
        [queued] = await pending(store)
        assert (queued.id, queued.outgoing.message) == (entry.id, claimed.outgoing.message)
        assert queued.next_attempt_at == 0.0
        [found] = await s.find_jobs(user=ANA)
        assert (found.state, found.entry_id) == ("queued", entry.id)
        assert await s.hand_over(claimed, claimed.outgoing, NOW) is None
        assert len(await pending(store)) == 1

    async def test_a_queued_job_reports_its_entrys_outcome(self, store: Store) -> None:
        """Once sent, skipped or failed, the job says so with the entry's reason."""
        s = jobs_store(store)
        await s.schedule_jobs([job("k")])
        [claimed] = await s.claim_jobs("w1", NOW, NOW + 30, 10)
        entry = await s.hand_over(claimed, claimed.outgoing, NOW)
        assert entry is not None
        lease = (await claim(store)).lease
        sent = dataclasses.replace(
            entry, status="sent", wamid="wamid.j", sent_as="template", reason="window closed"
        )
        await store.save_outbox(lease, sent)
        [found] = await s.find_jobs(state="sent")
        assert found.reason == "sent as template (window closed)"
        assert await s.find_jobs(state="queued") == []

    async def test_purge_removes_jobs_whose_story_is_over(self, store: Store) -> None:
        """Old cancelled, settled and sent jobs go; scheduled ones, those queued behind a
        pending entry and those not yet due stay."""
        s = jobs_store(store)
        recent = job("recent", at=NOW + 20 * 86400)
        await s.schedule_jobs([job("cancelled"), job("skipped"), job("sent"), recent])
        await s.schedule_jobs([job("waiting", user=BIA)])
        assert await s.cancel_jobs(NOW, key="cancelled") == 1
        assert await s.cancel_jobs(NOW, key="recent") == 1
        claimed = {j.key: j for j in await s.claim_jobs("w1", NOW, NOW + 30, 10)}
        assert set(claimed) == {"skipped", "sent", "waiting"}
        assert await s.settle_job(claimed["skipped"], NOW, state="skipped", reason="opted out")
        entry = await s.hand_over(claimed["sent"], claimed["sent"].outgoing, NOW)
        assert entry is not None
        assert await s.hand_over(claimed["waiting"], claimed["waiting"].outgoing, NOW)
        lease = (await claim(store)).lease
        sent = dataclasses.replace(entry, status="sent", wamid="wamid.j", sent_as="session")
        await store.save_outbox(lease, sent)
        await s.schedule_jobs([job("later", user=BIA)])  # due, never claimed
        assert await store.purge(NOW + 86400, 100) == 4  # three jobs and the sent entry
        left = await s.find_jobs(user=ANA) + await s.find_jobs(user=BIA)
        assert sorted(j.key for j in left) == ["later", "recent", "waiting"]
        assert await store.purge(NOW + 86400, 100) == 0

    async def test_settle_final_and_waiting(self, store: Store) -> None:
        """A settled job keeps its reason; a waiting one is claimed again at its wake time."""
        s = jobs_store(store)
        await s.schedule_jobs([job("gone"), job("later")])
        gone, later = await s.claim_jobs("w1", NOW, NOW + 30, 10)
        assert await s.settle_job(gone, NOW, state="expired", reason="expired: too late")
        assert await s.settle_job(
            later, NOW, state="scheduled", reason="waiting: quiet hours", wake_at=NOW + 600
        )
        assert await s.claim_jobs("w1", NOW + 599, NOW + 630, 10) == []
        [again] = await s.claim_jobs("w1", NOW + 600, NOW + 630, 10)
        assert (again.key, again.reason) == ("later", "waiting: quiet hours")
        [expired] = await s.find_jobs(state="expired")
        assert expired.reason == "expired: too late"
        assert await s.due_jobs(NOW + 600) == 1

    async def test_reach_never_exceeds_the_limit(self, store: Store) -> None:
        """The messaging limit: new users beyond it are refused; users reached are free."""
        s = jobs_store(store)
        first = await s.reserve_reach(["a", "b", "c"], NOW, 4)
        assert (set(first.allowed), first.headroom) == ({"a", "b", "c"}, 1)
        second = await s.reserve_reach(["a", "d", "e"], NOW + 10, 4)
        assert second.allowed == {"a", "d"}
        assert (second.headroom, second.room_at) == (0, NOW + 86_400)
        later = await s.reserve_reach(["e"], NOW + 86_401, 4)
        assert later.allowed == {"e"}

    async def test_send_slots_are_consecutive_across_callers(self, store: Store) -> None:
        """Reserved send slots never overlap, whoever asks, and never start in the past."""
        s = jobs_store(store)
        starts = [await s.reserve_sends(8, 0.0125, NOW) for _ in range(3)]
        assert starts == pytest.approx([NOW, NOW + 0.1, NOW + 0.2])
        assert await s.reserve_sends(1, 0.0125, NOW + 5) == NOW + 5


ANA_ID = "BR.13491208655302741918"
ANA_NEW_ID = "BR.24817305912873645029"


def from_ids(wamid: str, *, wa_id: str = "", user_id: str = "", ts: int = TS) -> InboundMessage:
    """A text message carrying a phone number, a business-scoped id or both."""
    item: dict[str, Any] = {"id": wamid, "timestamp": str(ts), "type": "text"}
    item["text"] = {"body": "hi"}
    if wa_id:
        item["from"] = wa_id
    if user_id:
        item["from_user_id"] = user_id
    return parse_message(item, wa_id=wa_id, user_id=user_id, phone_number_id="1066")


class TestIdentity:
    async def test_phone_then_user_id_only_then_both_is_one_user(self, store: Store) -> None:
        """A user seen by phone (with their id), then by id only, then by both, is one user."""
        added = await store.add_inbound([from_ids("wamid.1", wa_id=ANA, user_id=ANA_ID)], NOW)
        assert added.users == [ANA]
        added = await store.add_inbound([from_ids("wamid.2", user_id=ANA_ID)], NOW)
        assert added == [True] and added.users == [ANA]
        added = await store.add_inbound([from_ids("wamid.3", wa_id=ANA, user_id=ANA_ID)], NOW)
        assert added.users == [ANA]
        work = await claim(store)
        assert [m.id for m in work.inbound] == ["wamid.1", "wamid.2", "wamid.3"]
        assert {m.user for m in work.inbound} == {ANA}
        assert (await claim(store, ANA_ID)).inbound == ()

    async def test_user_first_seen_by_id_keeps_that_key(self, store: Store) -> None:
        """A user first known by id only stays under it when their phone number shows up."""
        batch = [
            from_ids("wamid.1", user_id=ANA_ID),
            from_ids("wamid.2", wa_id=ANA, user_id=ANA_ID),
            from_ids("wamid.3", wa_id=ANA),
        ]
        added = await store.add_inbound(batch, NOW)
        assert added.users == [ANA_ID, ANA_ID, ANA_ID]
        assert (await store.add_inbound([from_ids("wamid.4", wa_id=ANA)], NOW)).users == [ANA_ID]
        assert [m.id for m in (await claim(store, ANA_ID)).inbound] == [
            "wamid.1",
            "wamid.2",
            "wamid.3",
            "wamid.4",
        ]

    async def test_another_process_resolves_the_same_user(
        self, store: Store, backend: Backend
    ) -> None:
        """Aliases are stored, not only cached: a second store on the same data agrees."""
        await store.add_inbound([from_ids("wamid.1", wa_id=ANA, user_id=ANA_ID)], NOW)
        other = backend.make()
        await other.open()
        try:
            added = await other.add_inbound([from_ids("wamid.2", user_id=ANA_ID)], NOW)
            assert added.users == [ANA]
        finally:
            await other.close()

    async def test_status_with_only_the_user_id_moves_the_right_entry(self, store: Store) -> None:
        """A status carrying only ``recipient_user_id`` finds the user first seen by phone."""
        await store.add_inbound([from_ids("wamid.1", wa_id=ANA, user_id=ANA_ID)], NOW)
        lease = (await claim(store)).lease
        sent = await one_sent(store, lease)
        item = {"id": sent.wamid, "status": "delivered", "timestamp": str(TS + 60)}
        item["recipient_user_id"] = ANA_ID
        added = await store.add_statuses([parse_status(item, phone_number_id="1066")], NOW)
        assert added == [True] and added.users == [ANA]
        assert (await entry_named(store, sent.id)).status == "delivered"
        failed = parse_status({**item, "status": "failed"}, phone_number_id="1066")
        await store.add_statuses([failed], NOW)
        [read_back] = (await store.read_work(lease)).statuses
        assert read_back.recipient == ANA
        assert await store.outbox_for_status(read_back) == await entry_named(store, sent.id)

    async def test_user_id_update_rekeys_without_losing_anything(self, store: Store) -> None:
        """A changed id joins the same user: state, opt-out and outbox stay; turns re-read."""
        await store.add_inbound([from_ids("wamid.1", wa_id=ANA, user_id=ANA_ID)], NOW)
        lease = (await claim(store)).lease
        record = user(user_id=ANA_ID, state="asked", opted_out=True)
        committed = await store.commit_turn(lease, "wamid.1", record, [reply("later")], NOW)
        stale = committed.record

        assert await store.add_identity_changes([IdentityChange(ANA_ID, ANA_NEW_ID)], NOW) == [ANA]
        rekeyed = await store.get_user(ANA)
        assert rekeyed == dataclasses.replace(stale, user_id=ANA_NEW_ID, version=stale.version + 1)
        with pytest.raises(VersionConflict):
            await store.commit_turn(lease, None, stale, [], NOW)
        added = await store.add_inbound([from_ids("wamid.2", user_id=ANA_NEW_ID)], NOW)
        assert added.users == [ANA]
        work = await store.read_work(lease)
        assert [m.id for m in work.inbound] == ["wamid.2"]
        assert [e.outgoing for e in work.outbox] == [reply("later")]
        assert work.record.opted_out and work.record.state == "asked"

    async def test_unlinked_records_are_kept_apart(self, store: Store) -> None:
        """Two users made before anything linked their ids stay two; nothing is lost."""
        await store.add_inbound([from_ids("wamid.1", wa_id=ANA)], NOW)
        await store.add_inbound([from_ids("wamid.2", user_id=ANA_ID)], NOW)
        added = await store.add_inbound([from_ids("wamid.3", wa_id=ANA, user_id=ANA_ID)], NOW)
        assert added.users == [ANA_ID]  # the business-scoped id decides
        assert [m.id for m in (await claim(store)).inbound] == ["wamid.1"]
        assert [m.id for m in (await claim(store, ANA_ID)).inbound] == ["wamid.2", "wamid.3"]


class TestConsoleViews:
    async def test_list_users_last_writer_first(self, store: Store) -> None:
        """Users with a record come back the one who wrote last first; claimed-only users not."""
        for key, wrote in ((ANA, TS), (BIA, TS + 50)):
            lease = (await claim(store, key)).lease
            await store.commit_turn(lease, None, user(key, last_inbound_at=wrote), [], NOW)
            await store.release([lease])
        await claim(store, "5511000000000")  # a lease, never a turn: no record yet
        assert [r.key for r in await store.list_users()] == [BIA, ANA]
        assert [r.key for r in await store.list_users(1)] == [BIA]
        ana = (await store.list_users())[1]
        assert (ana.profile_name, ana.flow, ana.version) == ("Ana", "onboarding", 1)

    async def test_paused_fields_round_trip(self, store: Store) -> None:
        """A paused user's record keeps why and since when, through every read."""
        lease = (await claim(store)).lease
        paused = user(paused=True, paused_reason="asked for a human", paused_at=NOW)
        await store.commit_turn(lease, None, paused, [], NOW)
        got = await store.get_user(ANA)
        assert got is not None
        assert (got.paused, got.paused_reason, got.paused_at) == (True, "asked for a human", NOW)
        assert (await store.list_users())[0].paused
        assert (await store.read_work(lease)).record.paused_reason == "asked for a human"

    async def test_inbox_of_shows_every_status_in_arrival_order(self, store: Store) -> None:
        """A user's inbox comes back in arrival order with status and reason, newest ``limit``."""
        await store.add_inbound([inbound("wamid.1", ts=TS + 9)], NOW)
        await store.add_inbound([inbound("wamid.2", ts=TS), inbound("wamid.b", user=BIA)], NOW + 1)
        await store.add_inbound([inbound("wamid.3", text="third")], NOW + 2)
        lease = (await claim(store)).lease
        await store.commit_turn(lease, "wamid.1", user(), [], NOW + 3)
        await store.commit_turn(lease, "wamid.2", user(version=1), [], NOW + 3, failed="boom")
        items = await store.inbox_of(ANA)
        assert [(i.message.id, i.status, i.reason) for i in items] == [
            ("wamid.1", "done", ""),
            ("wamid.2", "failed", "boom"),
            ("wamid.3", "pending", ""),
        ]
        assert items[2].message.text == "third" and items[2].received_at == NOW + 2
        assert [i.message.id for i in await store.inbox_of(ANA, 2)] == ["wamid.2", "wamid.3"]
        assert await store.inbox_of("5511000000000") == []
