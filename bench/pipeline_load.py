"""The load of ``bench/bench_pipeline.py``: numbered messages, their replies, burst and closed loop.

Every message text is ``<prefix><user>-<n>``: unique, and numbered per user, so the
:class:`Ledger` can tell from the replies the sink reports whether each message was answered
exactly once and whether a user's replies came back in the order the messages were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import statistics
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from loadgen import Connection

from bot.testing import text_message


@dataclass
class Ledger:
    """The messages of one phase and the replies that came back for them."""

    sent_at: dict[str, float] = field(default_factory=dict)
    replies: dict[str, int] = field(default_factory=dict)
    refused: dict[int, int] = field(default_factory=dict)  # HTTP status (0: dropped) -> count
    highest: dict[str, int] = field(default_factory=dict)  # user -> highest n answered
    latencies: list[float] = field(default_factory=list)
    waiters: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    unsure: set[str] = field(default_factory=set)  # the connection dropped: maybe received
    answered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    last_answer_at: float = 0.0
    last_event_at: float = 0.0

    def sent(self, text: str, at: float) -> None:
        """``text`` is being POSTed now (``at``, monotonic)."""
        self.sent_at[text] = at
        self.last_event_at = at

    def refuse(self, text: str, status: int) -> None:
        """The server did not acknowledge ``text`` (status 0: the connection dropped).

        No reply is owed for it; after a dropped connection one may still come (the server
        may have stored the message), and then counts as an answer.
        """
        self.refused[status] = self.refused.get(status, 0) + 1
        if status == 0:
            self.unsure.add(text)
        else:
            del self.sent_at[text]
        waiter = self.waiters.pop(text, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def expect(self, text: str) -> asyncio.Future[None]:
        """A future that completes when the first reply to ``text`` arrives."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters[text] = waiter
        return waiter

    def arrived(self, text: str, at: float) -> None:
        """The sink accepted a reply with this text at ``at`` (monotonic)."""
        self.last_event_at = at
        sent = self.sent_at.get(text)
        if sent is None:
            self.unexpected += 1
            return
        count = self.replies.get(text, 0) + 1
        self.replies[text] = count
        if count > 1:
            self.duplicates += 1
            return
        self.answered += 1
        self.last_answer_at = at
        self.latencies.append(at - sent)
        user, _, n = text.partition("-")
        if int(n) < self.highest.get(user, -1):
            self.out_of_order += 1
        else:
            self.highest[user] = int(n)
        waiter = self.waiters.pop(text, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def acked(self) -> int:
        """Messages the server acknowledged."""
        return len(self.sent_at) - len(self.unsure)

    @property
    def missing(self) -> int:
        """Acknowledged messages without a reply."""
        unsure_answered = sum(1 for text in self.unsure if text in self.replies)
        return self.acked - (self.answered - unsure_answered)

    def percentile(self, q: float) -> float:
        """End-to-end latency percentile in seconds (POST written → reply at the sink)."""
        if not self.latencies:
            return float("nan")
        if q == 50:
            return statistics.median(self.latencies)
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]

    async def settle(self, idle: float, deadline: float) -> None:
        """Wait until every acknowledged message is answered, nothing moved for ``idle``
        seconds, or ``deadline`` (monotonic) passed."""
        while self.missing:
            now = time.monotonic()
            if now - self.last_event_at > idle or now > deadline:
                return
            await asyncio.sleep(0.02)


class Messages:
    """Signed-body builder: the ``n``-th message of user ``u`` of one phase.

    Like Meta's, timestamps are whole seconds, taken when the message is built, and wamids
    are opaque (``ordered_wamids``: they sort in sending order instead, to tell a tie-break
    on equal timestamps from other reordering).
    """

    def __init__(self, prefix: str, number_base: int, *, ordered_wamids: bool = False) -> None:
        self.prefix = prefix
        self.number_base = number_base
        self.ordered_wamids = ordered_wamids
        self._seq = itertools.count()

    def make(self, user: int, n: int) -> tuple[str, bytes]:
        """The message's text and its webhook body."""
        text = f"{self.prefix}{user}-{n}"
        if self.ordered_wamids:
            wamid = f"wamid.BENCH{self.prefix}{next(self._seq):012d}"
        else:
            wamid = f"wamid.{uuid.uuid4().hex.upper()}"
        wa_id = str(self.number_base + user)
        body = text_message(wa_id, text, wamid=wamid, timestamp=int(time.time()), name="Bench")
        return text, json.dumps(body).encode()


async def burst(
    url: str,
    secret: str,
    ledger: Ledger,
    messages: Messages,
    *,
    count: int,
    users: int,
    concurrency: int,
    deadline: float,
) -> float:
    """POST ``count`` messages as fast as the server acknowledges them; when the last ack came.

    Message ``i`` is user ``i % users``'s message ``i // users``. A user's next message is
    not written before the previous one was acknowledged, so the server receives each
    user's messages in order, and keeping that order is the server's job.
    """
    order = iter(range(count))
    acked = [0] * users  # per user: how many of its messages were acknowledged (or skipped)
    gates: dict[tuple[int, int], asyncio.Future[None]] = {}
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        conn = await Connection.open(url, app_secret=secret)
        try:
            for i in order:
                user, n = i % users, i // users
                if acked[user] < n:
                    gates[user, n] = gate = loop.create_future()
                    await gate
                if time.monotonic() < deadline:  # past it, the rest is skipped, in order
                    text, body = messages.make(user, n)
                    ledger.sent(text, time.monotonic())
                    status = await conn.try_post(body)
                    if status != 200:
                        ledger.refuse(text, status)
                acked[user] = n + 1
                waiting = gates.pop((user, n + 1), None)  # the user's next message
                if waiting is not None:
                    waiting.set_result(None)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic()


async def closed_loop(
    url: str,
    secret: str,
    ledger: Ledger,
    messages: Messages,
    *,
    count: int,
    users: int,
    concurrency: int,
    reply_timeout: float,
    deadline: float,
) -> None:
    """Send ``count`` messages with at most ``concurrency`` awaiting their reply at once.

    Each of ``concurrency`` connections sends a message, reads the ack, waits for the reply
    at the sink (at most ``reply_timeout`` seconds), then sends the next. Users take turns
    from a queue, so a user never has two messages in flight.
    """
    if users < concurrency:
        raise ValueError(f"users ({users}) must be at least the concurrency ({concurrency})")
    free = deque(range(users))
    sent = [0] * users
    remaining = count

    async def slot() -> None:
        nonlocal remaining
        conn = await Connection.open(url, app_secret=secret)
        try:
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                user = free.popleft()
                text, body = messages.make(user, sent[user])
                sent[user] += 1
                reply = ledger.expect(text)
                ledger.sent(text, time.monotonic())
                status = await conn.try_post(body)
                if status != 200:
                    ledger.refuse(text, status)
                else:
                    # a reply that does not come in time counts as missing unless it still comes
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reply, reply_timeout)
                free.append(user)
        finally:
            conn.close()

    await asyncio.gather(*(slot() for _ in range(concurrency)))
