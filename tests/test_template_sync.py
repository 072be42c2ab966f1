"""``bot templates pull | push | status`` and ``bot stats`` against the fake Graph API."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.cli import main
from bot.templates import TemplateRegistry
from bot.testing import FakeCloudAPI
from tests.server import ROOT


@pytest.fixture
async def fake() -> AsyncIterator[FakeCloudAPI]:
    """The fake Graph API with an empty account."""
    async with FakeCloudAPI() as api:
        yield api


@pytest.fixture
def flows(tmp_path: Path, fake: FakeCloudAPI, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty flows folder, and the environment pointing ``bot`` at the fake account."""
    folder = tmp_path / "flows"
    folder.mkdir()
    for key, value in {
        "BOT_FLOWS_DIR": str(folder),
        "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
        "WHATSAPP_TOKEN": fake.token,
        "WHATSAPP_PHONE_NUMBER_ID": fake.phone_number_id,
        "WHATSAPP_WABA_ID": fake.waba_id,
        "WHATSAPP_API_URL": fake.url,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BOT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return folder


async def bot(*argv: str) -> int:
    """Run the ``bot`` command (its own event loop, in a thread: the fake runs on this one)."""
    return await asyncio.to_thread(main, list(argv))


def mirror(fake: FakeCloudAPI, registry: TemplateRegistry) -> None:
    """Put every variant of ``registry`` in the fake account as the file says it is."""
    for name, template in registry.templates.items():
        for code, variant in template.variants.items():
            fake.add_template(
                name,
                code,
                variant.body,
                status=variant.status,
                parameter_format=template.parameter_format.upper(),
            )


class TestPull:
    async def test_into_an_empty_folder(
        self, flows: Path, fake: FakeCloudAPI, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every page is read; MARKETING is left out; the new file loads and is in step."""
        fake.add_template("order_shipped", "en_US", "Hi {{1}}, order {{2}} shipped.")
        fake.add_template("order_shipped", "pt_BR", "Olá {{1}}, pedido {{2}} enviado.")
        fake.add_template("hours", "en_US", "We open at {{1}}.", status="PAUSED")
        fake.add_template("promo", "en_US", "20% off today!", category="MARKETING")
        assert await bot("templates", "pull") == 0
        out = capsys.readouterr().out
        assert "+ order_shipped (en_US, pt_BR): new, UTILITY" in out
        assert "promo: MARKETING at Meta, not added" in out
        registry = TemplateRegistry.load(flows / "templates.yaml")
        assert sorted(registry.templates) == ["hours", "order_shipped"]
        assert registry.templates["hours"].status("en_US") == "PAUSED"
        assert registry.templates["order_shipped"].parameters == ("1", "2")
        assert await bot("templates", "pull", "--check") == 0

    async def test_into_an_edited_file_keeps_comments_and_order(
        self, flows: Path, fake: FakeCloudAPI, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A paused variant and a new one are written in place; comments and order stay."""
        shutil.copy(ROOT / "flows" / "templates.yaml", flows / "templates.yaml")
        before = (flows / "templates.yaml").read_text()
        registry = TemplateRegistry.load(flows / "templates.yaml")
        mirror(fake, registry)
        fake.template("appointment_update", "en_US")["status"] = "PAUSED"
        fake.add_template("appointment_update", "fr", "Bonjour {{1}}, du nouveau : {{2}}")
        assert await bot("templates", "pull", "--check") == 1
        assert (flows / "templates.yaml").read_text() == before  # --check changes nothing
        assert await bot("templates", "pull") == 0
        out = capsys.readouterr().out
        assert "~ appointment_update (en_US): status APPROVED → PAUSED" in out
        assert "+ appointment_update (fr): new variant, APPROVED" in out
        after = (flows / "templates.yaml").read_text()
        for line in before.splitlines():
            if line.lstrip().startswith("#"):
                assert line in after  # every comment survives
        updated = TemplateRegistry.load(flows / "templates.yaml")
        assert list(updated.templates) == list(registry.templates)
        assert updated.templates["appointment_update"].status("en_US") == "PAUSED"
        assert updated.templates["appointment_update"].status("fr") == "APPROVED"
        assert updated.templates["business_hours"].use == "ALERT"
        assert await bot("templates", "pull", "--check") == 0

    async def test_local_only_variants_fail_the_check(
        self, flows: Path, fake: FakeCloudAPI, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A variant Meta does not have is reported, and --check exits 1."""
        shutil.copy(ROOT / "flows" / "templates.yaml", flows / "templates.yaml")
        assert await bot("templates", "pull", "--check") == 1
        assert "! business_hours (en_US): only in the file" in capsys.readouterr().out

    async def test_without_waba_id_the_error_says_what_to_set(
        self, flows: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No WHATSAPP_WABA_ID: one clear line, exit 1, no traceback."""
        monkeypatch.delenv("WHATSAPP_WABA_ID")
        assert await bot("templates", "pull") == 1
        err = capsys.readouterr().err
        assert "WHATSAPP_WABA_ID is not set" in err and "Traceback" not in err


class TestPush:
    async def test_new_variant_is_pending_and_marketing_never_goes(
        self, flows: Path, fake: FakeCloudAPI, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Only the missing variants go, with examples; MARKETING is refused and named."""
        (flows / "templates.yaml").write_text(
            """\
templates:
  order_shipped:
    category: UTILITY
    use: SHIPPING_UPDATE
    status: APPROVED
    examples: {"1": "Ana", "2": "A-1001"}
    languages:
      en_US: "Hi {{1}}, order {{2}} shipped."
      pt_BR: "Olá {{1}}, pedido {{2}} enviado."
  promo:
    category: MARKETING
    status: APPROVED
    languages:
      en_US: "Hello {{1}}"
""",
            encoding="utf-8",
        )
        fake.add_template("order_shipped", "en_US", "Hi {{1}}, order {{2}} shipped.")
        assert await bot("templates", "push") == 1  # something was refused
        out = capsys.readouterr().out
        [submitted] = [t for t in fake.templates if t["language"] == "pt_BR"]
        assert f"order_shipped (pt_BR): submitted, PENDING (Meta id {submitted['id']}" in out
        assert "promo: MARKETING, never pushed" in out
        assert "4 business days" in out
        assert submitted["status"] == "PENDING" and submitted["category"] == "UTILITY"
        [body] = [c for c in submitted["components"] if c["type"] == "BODY"]
        assert body["example"] == {"body_text": [["Ana", "A-1001"]]}
        assert all(t["name"] != "promo" for t in fake.templates)

    async def test_promotional_wording_is_not_pushed(
        self, flows: Path, fake: FakeCloudAPI, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A utility variant that reads like a promotion is refused with Meta's rule."""
        (flows / "templates.yaml").write_text(
            "templates:\n  hours:\n    category: ALERT\n    status: PENDING\n"
            '    languages:\n      en_US: "We open at 9. Use coupon SPRING for 20% off!"\n',
            encoding="utf-8",
        )
        assert await bot("templates", "push", "hours") == 1
        out = capsys.readouterr().out
        assert "hours (en_US): not pushed" in out and "must not promote" in out
        assert fake.templates == []


class TestStatusAndStats:
    async def test_empty_store(
        self, flows: Path, fake: FakeCloudAPI, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """status lists the file's variants with no webhook yet; stats says no pricing yet."""
        shutil.copy(ROOT / "flows" / "templates.yaml", flows / "templates.yaml")
        assert await bot("templates", "status") == 0
        out = capsys.readouterr().out
        assert "business_hours (en_US): file APPROVED UTILITY/ALERT; Meta: no webhook yet" in out
        assert await bot("stats") == 0
        assert "pricing: no status webhook with pricing yet" in capsys.readouterr().out

    async def test_live_view_and_pricing_next_to_the_file(
        self, flows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """status, check and stats show what the webhooks stored, beside the file."""
        from bot.store.sqlite import SQLiteStore
        from tests.store.test_ledgers import priced, status_event

        shutil.copytree(ROOT / "flows", flows, dirs_exist_ok=True)
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        await store.add_template_events([status_event("PAUSED", 1_764_000_000, "pt_BR")], 1.0)
        await store.add_pricing(
            [priced("w1", "sent", 1_764_000_000, "utility", "regular", True)], 1.0
        )
        await store.close()
        assert await bot("templates", "status") == 0
        out = capsys.readouterr().out
        assert (
            "appointment_update (pt_BR): file APPROVED UTILITY/APPOINTMENT_UPDATE;"
            " Meta: PAUSED UTILITY (not sent: PAUSED since 2025-11-24T16:00:00Z)" in out
        )
        assert await bot("check", str(flows)) == 0
        [live] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("live:")]
        assert "appointment_update (pt_BR)" in live and "PAUSED" in live
        assert await bot("stats") == 0
        assert "2025-11-24  utility         regular                billable 1" in (
            capsys.readouterr().out
        )
