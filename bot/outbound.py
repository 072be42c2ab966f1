"""Business-initiated sends: the Python API behind ``bot send`` and the base of reminders.

A business-initiated message takes the same way as a flow's reply: it is appended to the
user's outbox (atomically, whoever holds the user), then sent through the window decision,
the template registry and the Cloud API client, in order with the user's other replies::

    async with Outbound.open(load_config()) as outbound:
        decisions = await outbound.send(
            "5511999990000",
            Outgoing(message=None, fallback=TemplateCall("appointment_update", ("Ana", "10:00"))),
        )

If a running ``bot run`` holds the user at that moment, the message stays queued and that
process sends it (its sweep finds it within seconds); ``send`` then returns no decision.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from bot._pipeline import build_pipeline
from bot.config import Config, resolve
from bot.errors import TemplateError
from bot.models import Outgoing
from bot.runtime import load_registry, make_transport, window_policy
from bot.sender import Transport
from bot.store import Store, store_from_url
from bot.templates import TemplateRegistry
from bot.window import Decision, WindowPolicy

_LEASE_SECONDS = 30.0


@dataclass
class Outbound:
    """Queue and send messages a business starts (not replies to a message)."""

    store: Store
    transport: Transport
    registry: TemplateRegistry | None
    policy: WindowPolicy
    config: Config = field(default_factory=Config)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: Config) -> AsyncIterator[Outbound]:
        """The store, registry and Cloud API client (or the sandbox's log) that ``config`` names."""
        registry, _ = load_registry(resolve(config, config.flows.dir))
        store = store_from_url(config.store.url, base_dir=config.base_dir)
        await store.open()
        try:
            async with make_transport(config) as transport:
                yield cls(store, transport, registry, window_policy(config), config)
        finally:
            await store.close()

    def check(self, outgoing: Outgoing) -> None:
        """Refuse a template fallback the registry would never send, before queuing it."""
        call = outgoing.fallback
        if call is None:
            return
        if self.registry is None:
            raise TemplateError(
                f"template {call.name}: no valid templates.yaml is loaded (run `bot check`)"
            )
        problems = [
            p
            for p in self.registry.check_call(call.name, call.language or "user", call.parameters)
            if not p.startswith("warning")
        ]
        if problems:
            raise TemplateError("; ".join(problems))

    async def send(
        self, user: str, outgoing: Outgoing, *, now: float | None = None
    ) -> list[Decision]:
        """Queue ``outgoing`` for ``user`` and send it now unless a running bot holds them.

        Returns the decisions taken for every entry sent (this one and any older ones still
        queued for the user): session, template or not sent, each with its reason.
        """
        self.check(outgoing)
        when = time.time() if now is None else now
        await self.store.enqueue(user, [outgoing], when)
        owner = f"outbound-{uuid.uuid4().hex[:12]}"
        work = await self.store.claim(user, owner, when + _LEASE_SECONDS, when)
        if work is None:
            return []
        decisions: list[Decision] = []
        sender = build_pipeline(
            self.config,
            self.store,
            self.transport,
            registry=self.registry,
            policy=self.policy,
            on_decision=lambda _entry, decision: decisions.append(decision),
        ).sender
        assert sender is not None  # a transport always makes a sender
        try:
            await sender.drain(work.lease, work.record, work.outbox, when)
        finally:
            await self.store.release([work.lease])
        return decisions
