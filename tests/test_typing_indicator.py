"""A flow's ``typing_indicator``: the read receipt with "typing…" goes out, best effort."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.app import DISPATCHER, Components, create_app
from bot.engine import Engine
from bot.store.sqlite import SQLiteStore
from bot.testing import FakeCloudAPI, text_message
from bot.whatsapp import CloudAPI
from tests.conftest import AppClient, make_config, signed

FLOW = """\
flow: welcome
initial: start
{option}
states:
  start:
    say: "hello"
    final: true
"""


async def run_one(
    aiohttp_client: Callable[..., Awaitable[AppClient]], tmp_path: Path, option: str
) -> tuple[FakeCloudAPI, str]:
    """Answer one message with a one-state flow; the fake and the message's wamid."""
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "welcome.yaml").write_text(FLOW.format(option=option), encoding="utf-8")
    engine = Engine.load(flows)
    fake = FakeCloudAPI()
    await fake.start()

    def transport() -> CloudAPI:
        return CloudAPI(phone_number_id=fake.phone_number_id, token=fake.token, base_url=fake.url)

    config = make_config(tmp_path)
    components = Components(
        store=SQLiteStore(tmp_path / "bot.db"),
        handler=engine.handle,
        transport=transport,
        typing=engine.wants_typing if engine.typing_flows else None,
    )
    client = await aiohttp_client(create_app(config, components))
    fake.user_wrote("15550002222")
    body = text_message("15550002222", "hi", wamid="wamid.IN1", timestamp=time.time())
    raw, headers = signed(body)
    assert (await client.post("/webhook", data=raw, headers=headers)).status == 200
    await fake.wait_for("15550002222")
    await client.app[DISPATCHER].idle()
    if option:  # the receipt is a task of its own: wait for it to land
        await fake.wait_for_read("wamid.IN1")
    await fake.close()
    return fake, "wamid.IN1"


async def test_flow_with_typing_indicator_marks_read_and_types(
    aiohttp_client: Callable[..., Awaitable[AppClient]], tmp_path: Path
) -> None:
    """The message is marked read with the typing indicator, and the reply still goes."""
    fake, wamid = await run_one(aiohttp_client, tmp_path, "typing_indicator: true")
    assert fake.typing_indicators == [wamid]
    assert [m.body["text"]["body"] for m in fake.messages] == ["hello"]
    read = [r for r in fake.requests if isinstance(r, dict) and r.get("status") == "read"]
    assert read == [
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": wamid,
            "typing_indicator": {"type": "text"},
        }
    ]


async def test_flow_without_it_sends_no_receipt(
    aiohttp_client: Callable[..., Awaitable[AppClient]], tmp_path: Path
) -> None:
    """Without the option nothing but the reply is sent."""
    fake, _ = await run_one(aiohttp_client, tmp_path, "")
    assert fake.typing_indicators == [] and fake.read_receipts == []
    assert len(fake.messages) == 1


def test_option_must_be_true_or_false(tmp_path: Path) -> None:
    """A typing_indicator that is not a boolean is a flow error naming the key."""
    from bot.engine import check_folder

    (tmp_path / "welcome.yaml").write_text(
        textwrap.dedent(FLOW.format(option="typing_indicator: sometimes")), encoding="utf-8"
    )
    findings = check_folder(tmp_path)
    assert any("typing_indicator" in f.message and f.severity == "error" for f in findings)
