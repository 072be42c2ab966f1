"""The console in a real browser: headless Chromium drives ``/console`` of a real ``bot run``.

The bot runs in sandbox mode on the example flows; the page talks to it only through its
HTTP API, which delivers the user's messages as webhooks and shows what the fake Cloud API
in the bot's process received. Screenshots of each step land in the test's tmp folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Page, async_playwright, expect

from bot.testing import FakeCloudAPI, signed_request, text_message
from tests.server import ROOT, BotProcess, log_events

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
USER = "5511999990000"  # a Brazilian number: templates go out in pt_BR
ANOTHER = "15551230001"
PNID = "123456789012345"
WAIT = 30_000  # ms: an upper bound for a condition the page is waiting for, never a pause


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[BotProcess]:
    """``bot run`` in sandbox mode (no Meta credentials) on the example flows."""
    if CHROMIUM is None:  # before the bot starts: its teardown checks what the browser did
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    process = BotProcess(
        {
            "WHATSAPP_TOKEN": "",
            "WHATSAPP_APP_SECRET": "browser-test-secret",
            "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
            "BOT_FLOWS_DIR": str(ROOT / "flows"),
        },
        tmp_path / "bot.log",
    )
    async with process:
        yield process
    log = (tmp_path / "bot.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "browser-test-secret" not in log
    actions = [json.loads(line) for line in log.splitlines() if '"console_action"' in line]
    assert [a["action"] for a in actions] == ["clock", "pause", "reply", "handback"]
    assert all(a["operator"] == "sandbox" and a["timestamp"] for a in actions)


@pytest.fixture
async def page(bot: BotProcess) -> AsyncIterator[Page]:
    """A headless Chromium page on the console (the system's Chromium, no download)."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            tab = await browser.new_page(viewport={"width": 1280, "height": 860})
            await tab.goto(f"{bot.url}/console/")
            yield tab
        finally:
            await browser.close()


async def send(page: Page, text: str, *, ago: float = 0) -> None:
    """Type ``text`` as the user, written ``ago`` hours before it arrives."""
    await page.fill("#compose-ago", str(ago))
    await page.fill("#compose-text", text)
    await page.click("#send")


async def test_sandbox_play_and_human_takeover(page: Page, tmp_path: Path) -> None:
    """Greet, press a button, close the window, see a template; pause, get refused, send a
    template, hand back."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    await page.fill("#user-id", USER)
    await page.fill("#user-name", "Ana")
    await page.click("#open-user")

    await send(page, "hi")
    greeting = page.locator(".bubble.bot", has_text="Welcome to Lumen Dental")
    await expect(greeting.locator(".badge.session")).to_contain_text("window open", timeout=WAIT)
    await expect(greeting.locator(".status")).to_contain_text("read", timeout=WAIT)
    await page.screenshot(path=shots / "1-greeting.png")

    await greeting.get_by_role("button", name="Book").click()
    ask = page.locator(".bubble.bot", has_text="What name should the appointment be under?")
    await expect(ask.locator(".badge")).to_have_attribute("data-kind", "session", timeout=WAIT)
    await expect(page.locator(".bubble.user", has_text="Book")).to_be_visible()
    await page.screenshot(path=shots / "2-button.png")

    await send(page, "Ana Souza")
    slots = page.locator(".bubble.bot", has_text="Thanks, Ana Souza! Which time suits you?")
    await slots.locator(".list-open").click(timeout=WAIT)
    # a delivery tick redraws the chat: the list the operator opened stays open
    await page.evaluate("refresh()")
    await expect(slots.locator(".row-choice", has_text="Tomorrow 11:00")).to_be_visible()
    await slots.locator(".row-choice", has_text="Tomorrow 11:00").click()
    confirm = page.locator(".bubble.bot", has_text="Book Tomorrow 11:00 for Ana Souza?")
    await expect(confirm.locator(".badge.session")).to_be_visible(timeout=WAIT)

    await page.fill("#advance-hours", "25")
    await page.click("#advance")
    await expect(page.locator("#window")).to_contain_text("window closed", timeout=WAIT)
    await send(page, "yes", ago=25)  # written before the window closed, arrives now
    fallback = page.locator(".bubble.bot[data-sent-as=template]")
    await expect(fallback.locator(".tpl-name")).to_have_text(
        "template appointment_confirmation", timeout=WAIT
    )
    await expect(fallback.locator(".badge.template")).to_contain_text(
        "appointment_confirmation · APPOINTMENT_UPDATE · pt_BR"
    )
    await expect(fallback.locator(".badge.template")).to_contain_text("window closed")
    await expect(fallback.locator(".text")).to_contain_text("Olá Ana Souza")
    await expect(page.locator("#jobs li")).to_contain_text("appointment_reminder")
    await page.screenshot(path=shots / "3-template.png")

    await page.fill("#pause-reason", "asked for a human")
    await page.click("#pause")
    await expect(page.locator("#pause-status")).to_have_text(
        "Paused: asked for a human", timeout=WAIT
    )
    await expect(page.locator("#user-list .tag.paused")).to_be_visible(timeout=WAIT)
    replies = await page.locator(".bubble.bot").count()
    await send(page, "is anyone there?", ago=25)
    stored = page.locator(".bubble.user", has_text="is anyone there?")
    await expect(stored.locator(".badge")).to_contain_text("the bot is paused", timeout=WAIT)
    await expect(stored.locator(".time")).not_to_contain_text("waiting", timeout=WAIT)
    assert await page.locator(".bubble.bot").count() == replies  # the flow said nothing

    await page.fill("#operator-text", "Hi Ana, Carla here.")
    await page.click("#operator-send")
    await expect(page.locator("#refusal")).to_contain_text("window is closed", timeout=WAIT)
    offered = page.locator(".template-form[data-name=appointment_update]")
    await expect(offered).to_contain_text("appointment_update · APPOINTMENT_UPDATE · pt_BR")
    await page.screenshot(path=shots / "4-refused.png")

    await offered.locator(".param").nth(0).fill("Ana")
    await offered.locator(".param").nth(1).fill("Carla here, we moved you to 10:00")
    await offered.locator(".send-template").click()
    sent = page.locator(".bubble.bot[data-sent-as=template]", has_text="we moved you to 10:00")
    await expect(sent.locator(".badge.template")).to_contain_text(
        "business-initiated", timeout=WAIT
    )
    await expect(sent.locator(".status")).to_contain_text("read", timeout=WAIT)
    await page.screenshot(path=shots / "5-template-sent.png")

    await page.select_option("#handback-state", "welcome.menu")
    await page.click("#handback")
    await expect(page.locator("#pause-status")).to_have_text("The bot is answering.", timeout=WAIT)
    await send(page, "hours")
    hours = page.locator(".bubble.bot", has_text="We're open")
    await expect(hours.locator(".badge.session")).to_be_visible(timeout=WAIT)
    await expect(page.locator("#user-list li[data-user='5511999990000']")).to_contain_text(
        "welcome.hours"
    )
    await page.screenshot(path=shots / "6-handed-back.png")
    assert sorted(p.name for p in shots.iterdir()) == [
        "1-greeting.png",
        "2-button.png",
        "3-template.png",
        "4-refused.png",
        "5-template-sent.png",
        "6-handed-back.png",
    ]


async def test_live_console_behind_the_token(tmp_path: Path) -> None:
    """Outside sandbox mode the browser logs in with the token, sees the conversation live,
    pauses the bot and answers as the business inside the window."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    secret, meta, token, user = "live-secret", "live-meta-token", "live-console-token", ANOTHER
    process = BotProcess(
        {
            "WHATSAPP_TOKEN": meta,
            "WHATSAPP_PHONE_NUMBER_ID": PNID,
            "WHATSAPP_APP_SECRET": secret,
            "WHATSAPP_VERIFY_TOKEN": "live-verify-token",
            "BOT_CONSOLE_TOKEN": token,
            "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
            "BOT_FLOWS_DIR": str(ROOT / "flows"),
        },
        tmp_path / "bot.log",
    )
    async with FakeCloudAPI(
        token=meta,
        phone_number_id=PNID,
        webhook_url=f"{process.url}/webhook",
        app_secret=secret,
    ) as fake:
        process.env["WHATSAPP_API_URL"] = fake.url
        async with process, async_playwright() as playwright:
            fake.user_wrote(user)
            raw, headers = signed_request(text_message(user, "hi", name="Bob"), secret)
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{process.url}/webhook", data=raw, headers=headers) as resp,
            ):
                assert resp.status == 200
            await fake.wait_for(user, 1)
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 860})
                answer = await page.goto(f"{process.url}/console/")
                assert answer is not None and answer.status == 401
                await page.fill("input[name=operator]", "Carla")
                await page.fill("input[name=token]", token)
                await page.click("button[type=submit]")
                await expect(page.locator("#mode")).to_have_text("live", timeout=WAIT)
                await expect(page.locator("#operator")).to_have_text("Carla")
                await expect(page.locator("#who")).to_be_hidden()
                listed = page.locator(f"#user-list li[data-user='{user}']")
                await expect(listed).to_contain_text("welcome.menu", timeout=WAIT)
                await listed.click()
                greeting = page.locator(".bubble.bot", has_text="Welcome to Lumen Dental")
                await expect(greeting.locator(".status")).to_contain_text("delivered", timeout=WAIT)
                await page.click("#pause")
                await expect(page.locator("#pause-status")).to_have_text(
                    "Paused: taken over by Carla", timeout=WAIT
                )
                await page.fill("#operator-text", "Hi Bob, Carla here.")
                await page.click("#operator-send")
                await expect(
                    page.locator(".bubble.bot", has_text="Hi Bob, Carla here.").locator(".badge")
                ).to_contain_text("session", timeout=WAIT)
                await page.screenshot(path=tmp_path / "live.png")
            finally:
                await browser.close()
        [_, sent] = fake.messages_to(user)
        assert sent.body["text"]["body"] == "Hi Bob, Carla here."
    log = (tmp_path / "bot.log").read_text()
    assert "Traceback" not in log and token not in log and secret not in log
    events = log_events(log)
    assert any(e.get("operator") == "Carla" and e.get("action") == "reply" for e in events)
