"""Meta's live word on templates, over real HTTP: two app instances on one store.

App A receives the webhooks (the fake Cloud API posts them, signed); app B only sends. A
pause, a reinstatement or a re-categorization stored through A changes the very next
template B sends; the live view survives a restart; the pricing ledger counts what the
status webhooks said. Runs on SQLite and on each Mongo server of the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bot.app import DISPATCHER, METRICS, Components, create_app
from bot.live_templates import LiveTemplates, overlay
from bot.models import Outgoing, TemplateCall
from bot.store.base import LiveVariant, PricingCount, Store, TemplateView
from bot.store.mongo import MongoStore
from bot.store.sqlite import SQLiteStore
from bot.templates import TemplateRegistry
from bot.testing import FakeCloudAPI
from bot.whatsapp import CloudAPI
from bot.window import WindowPolicy
from tests.conftest import SECRET, AppClient, make_config
from tests.example_templates import registry_with_pending
from tests.mongo_server import MONGO_SERVER_NAMES, mongo_database
from tests.server import ROOT
from tests.store_access import pending_outbox

USER = "15550001111"  # calling code 1: en_US first, then the default es_MX
POLICY = WindowPolicy(country_languages={"1": "en_US"}, default_language="es_MX")
NAME = "appointment_update"


@pytest.fixture(
    params=[
        "sqlite",
        *(pytest.param(name, marks=pytest.mark.mongo, id=name) for name in MONGO_SERVER_NAMES),
    ]
)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Builds handles on one test's data: SQLite file, or a fresh Mongo database."""
    if request.param == "sqlite":
        yield lambda: SQLiteStore(tmp_path / "bot.db")
        return
    with mongo_database(request.param, tmp_path / "nx", prefix="live") as url:
        yield lambda: MongoStore.from_url(url)


@pytest.fixture
def registry() -> TemplateRegistry:
    """The shipped example registry (appointment_update in en_US, pt_BR, es_MX)."""
    return TemplateRegistry.load(ROOT / "flows" / "templates.yaml")


@pytest.fixture
async def fake(registry: TemplateRegistry) -> AsyncIterator[FakeCloudAPI]:
    """The fake Cloud API, its account holding appointment_update's variants."""
    async with FakeCloudAPI(registry=registry, app_secret=SECRET) as api:
        for code, variant in registry.templates[NAME].variants.items():
            api.add_template(NAME, code, variant.body)
        yield api


async def two_apps(
    aiohttp_client: Callable[..., Awaitable[AppClient]],
    tmp_path: Path,
    new_store: Callable[[], Store],
    fake: FakeCloudAPI,
    registry: TemplateRegistry,
) -> tuple[AppClient, AppClient]:
    """App A takes webhooks (no sender); app B sends through the fake; one store."""
    config = make_config(tmp_path)

    def transport() -> CloudAPI:
        return fake.client()

    a: AppClient = await aiohttp_client(create_app(config, Components(store=new_store())))
    b: AppClient = await aiohttp_client(
        create_app(
            config,
            Components(store=new_store(), transport=transport, registry=registry, policy=POLICY),
        )
    )
    fake.webhook_url = str(a.make_url("/webhook"))
    return a, b


async def send_template(b: AppClient, fake: FakeCloudAPI, store: Store, count: int) -> str:
    """Queue a business-initiated appointment_update; the language B sent it in ('' if not).

    B is notified until it has settled the entry (sent or skipped): a sweep of A's (which
    has no sender) may hold the user just then, and B's worker then finds the user held and
    leaves the entry to a later sweep.
    """
    call = TemplateCall(NAME, ("Ana", "moved to 10:00"))
    await store.enqueue(USER, [Outgoing(message=None, fallback=call)], 0.0)
    for _ in range(200):
        b.app[DISPATCHER].notify(USER)
        await b.app[DISPATCHER].idle()
        if not await pending_outbox(store, USER):
            break
        await asyncio.sleep(0.05)  # A releases the user within one store round trip
    sent = fake.messages_to(USER)
    if len(sent) < count:
        return ""
    assert len(sent) == count
    return str(sent[-1].body["template"]["language"]["code"])


async def test_pause_reinstate_recategorize_reach_the_other_app_at_once(
    aiohttp_client: Callable[..., Awaitable[AppClient]],
    tmp_path: Path,
    new_store: Callable[[], Store],
    fake: FakeCloudAPI,
    registry: TemplateRegistry,
) -> None:
    """Every change webhooked to A decides B's next send; the view outlives a restart."""
    a, b = await two_apps(aiohttp_client, tmp_path, new_store, fake, registry)
    store = new_store()
    await store.open()
    try:
        assert await send_template(b, fake, store, 1) == "en_US"
        assert await fake.set_template_status(NAME, "en_US", "PAUSED", "LOW_QUALITY") == 200
        with capture_logs() as logs:
            assert await send_template(b, fake, store, 2) == "es_MX"  # the next language
        [skipped] = [e for e in logs if e["event"] == "template_variant_skipped"]
        assert skipped["skipped"]["en_US"].startswith("PAUSED") and skipped["sent_in"] == "es_MX"
        assert b.app[METRICS].templates_skipped_live == 1
        assert await fake.set_template_status(NAME, "en_US", "REINSTATED") == 200
        assert await send_template(b, fake, store, 3) == "en_US"

        with capture_logs() as logs:
            assert await fake.recategorize(NAME, "en_US", "MARKETING", notice_for=1_900_000_000)
        [notice] = [e for e in logs if e["event"] == "template_recategorization_notice"]
        assert (notice["template"], notice["on"]) == (NAME, "2030-03-17T17:46:40Z")
        assert await send_template(b, fake, store, 4) == "en_US"  # a notice changes nothing
        assert await fake.recategorize(NAME, "en_US", "MARKETING") == 200
        assert await send_template(b, fake, store, 5) == "es_MX"
        assert await fake.recategorize(NAME, "es_MX", "MARKETING") == 200
        assert await send_template(b, fake, store, 6) == ""  # no sendable variant left
        last = (await store.outbox_of(USER))[-1]
        assert last.status == "skipped" and "MARKETING" in last.reason, last.reason

        restarted = LiveTemplates(store, registry)  # a new process starts from the store
        view = await restarted.refresh()
        assert view is not None
        variants = view.templates[NAME].variants
        assert (variants["en_US"].status, variants["es_MX"].status) == ("MARKETING", "MARKETING")
        assert variants["pt_BR"].status == "APPROVED"

        await fake.settle()
        priced = await store.pricing_counts()
        assert [(p.category, p.type, p.billable) for p in priced] == [("utility", "regular", True)]
        assert sum(p.count for p in priced) == 5  # one per template sent, sent+delivered once
        metrics = await (await a.get("/metrics")).text()
        assert 'windowbot_priced_messages{category="utility",type="regular",billable="true"} 5' in (
            metrics
        )
        assert isinstance(priced[0], PricingCount)
    finally:
        await store.close()


class TestOverlay:
    def view(self, **live: str) -> TemplateView:
        """A live view of appointment_update's variants: language → status or MARKETING."""
        variants = {}
        for code, word in live.items():
            if word == "MARKETING":
                variant = LiveVariant(NAME, code, category="MARKETING", category_at=1)
            else:
                variant = LiveVariant(NAME, code, status=word, status_at=1)
            variants[(NAME, code)] = variant
        return TemplateView(1, variants)

    def test_meta_wins_over_the_file(self, registry: TemplateRegistry) -> None:
        """Paused and re-categorized variants stop; FLAGGED and REINSTATED still send."""
        live = overlay(
            registry, self.view(en_US="PAUSED", pt_BR="MARKETING", es_MX="FLAGGED")
        ).templates[NAME]
        assert {code: v.status for code, v in live.variants.items()} == {
            "en_US": "PAUSED",
            "pt_BR": "MARKETING",
            "es_MX": "APPROVED",
        }
        assert registry.templates[NAME].status("en_US") == "APPROVED"  # the file is untouched

    def test_approval_of_a_pending_variant_makes_it_sendable(self, tmp_path: Path) -> None:
        """spring_sale is PENDING in the file; Meta's APPROVED webhook makes it go."""
        registry = registry_with_pending(tmp_path)
        view = TemplateView(
            1,
            {("spring_sale", "en_US"): LiveVariant("spring_sale", "en_US", "", "APPROVED", "", 1)},
        )
        assert overlay(registry, view).templates["spring_sale"].approved("en_US")
        assert not overlay(registry, view).templates["spring_sale"].approved("pt_BR")
