"""Business-initiated sends through the Python API (bot.outbound)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.config import load_config
from bot.errors import TemplateError
from bot.models import Outgoing, TemplateCall
from bot.outbound import Outbound
from bot.testing import FakeCloudAPI
from tests.store_access import pending_outbox

ROOT = Path(__file__).resolve().parent.parent
UPDATE = Outgoing(message=None, fallback=TemplateCall("appointment_update", ("Ana", "10:00")))


async def test_sends_template_and_reports_the_decision(tmp_path: Path) -> None:
    """A template-only send to a user who never wrote goes out and says why."""
    async with FakeCloudAPI(token="tok", phone_number_id="PN") as fake:
        config = load_config(
            None,
            environ={
                "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
                "BOT_FLOWS_DIR": str(ROOT / "flows"),
                "WHATSAPP_TOKEN": "tok",
                "WHATSAPP_PHONE_NUMBER_ID": "PN",
                "WHATSAPP_API_URL": fake.url,
            },
        )
        async with Outbound.open(config) as outbound:
            [decision] = await outbound.send("5511999990000", UPDATE)
        assert decision.kind == "template" and "business-initiated" in decision.reason
        [sent] = fake.messages_to("5511999990000")
        assert sent.body["template"]["language"]["code"] == "pt_BR"


async def test_user_held_by_a_running_bot_is_only_queued(tmp_path: Path) -> None:
    """While another process holds the user the message waits in the outbox for it."""
    config = load_config(
        None,
        environ={
            "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
            "BOT_FLOWS_DIR": str(ROOT / "flows"),
        },
    )
    async with Outbound.open(config) as outbound:
        now = time.time()
        assert await outbound.store.claim("15550001", "bot-run", now + 60, now) is not None
        assert await outbound.send("15550001", UPDATE, now=now) == []
        [entry] = await pending_outbox(outbound.store, "15550001")
        assert entry.outgoing == UPDATE


async def test_wrong_parameters_are_refused_before_queuing(tmp_path: Path) -> None:
    """A template call that does not fit the registry raises and queues nothing."""
    config = load_config(
        None,
        environ={
            "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
            "BOT_FLOWS_DIR": str(ROOT / "flows"),
        },
    )
    bad = Outgoing(message=None, fallback=TemplateCall("appointment_update", ("only one",)))
    async with Outbound.open(config) as outbound:
        with pytest.raises(TemplateError, match="2 parameter"):
            await outbound.send("15550002", bad)
        assert await pending_outbox(outbound.store, "15550002") == []
