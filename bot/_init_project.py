"""``bot init DIR``: a new bot project that passes ``bot check`` and its own test as created."""

from __future__ import annotations

from pathlib import Path

from bot.errors import ConfigError

FILES = {
    "windowbot.toml": """\
# windowbot configuration. Secrets (WHATSAPP_TOKEN, WHATSAPP_APP_SECRET,
# WHATSAPP_VERIFY_TOKEN) come from the environment only; without WHATSAPP_TOKEN
# `bot run` is in sandbox mode and logs replies instead of sending them.

[flows]
dir = "flows"

[store]
url = "sqlite:///windowbot.db"
""",
    "flows/welcome.yaml": """\
# The flow every new user starts in. `bot check` checks it, `bot chat` talks to it,
# `bot run --reload` picks up every edit while it serves.
flow: welcome
initial: menu

constants:
  business: My Business

states:
  menu:
    say:
      - text: "Hi {{ user.profile_name or 'there' }}! Welcome to {{ const.business }}."
        buttons: [Hours, Help]
        fallback:
          template: follow_up
          params: [user.profile_name or "there"]
    on:
      - reply: hours
        text: [hours]
        to: hours
      - reply: help
        do: [help_text]
        to: menu

  hours:
    say:
      - text: "We're open Monday to Friday, 9:00 to 18:00."
        buttons:
          - { id: menu, title: Back to menu }
    on:
      - reply: menu
        to: menu
""",
    "flows/templates.yaml": """\
# Templates approved in WhatsApp Manager: what a reply falls back to once the user's
# 24-hour window has closed. Keep this file in step with WhatsApp Manager.
templates:
  follow_up:
    category: ACCOUNT_UPDATE
    status: APPROVED
    languages:
      en_US:
        body: "Hi {{1}}, we have an answer to your message. Reply to continue."
""",
    "flows/hooks.py": '''\
"""Hooks of this bot's flows: plain functions that receive a HookContext."""

from __future__ import annotations

from bot import HookContext, Outgoing, text


def help_text(ctx: HookContext) -> Outgoing:
    """Action: explain what the bot can do."""
    return text("Tap Hours for our opening hours, or write to us any time.")
''',
    "tests/test_welcome.py": '''\
"""The welcome flow, turn by turn, without a server (run with `python -m pytest`)."""

import asyncio
from pathlib import Path

from bot.testing import FlowTester

FLOWS = Path(__file__).resolve().parent.parent / "flows"


def test_menu_hours_and_back() -> None:
    """A new user gets the menu; Hours answers and offers the way back."""

    async def talk() -> None:
        bot = FlowTester.load(FLOWS, name="Ana")
        first = await bot.send("hi")
        assert "Welcome" in first.texts[0] and first.choices == ["Hours", "Help"]
        hours = await bot.tap("hours")
        assert "9:00" in hours.texts[0] and bot.state == "welcome.hours"
        await bot.tap("menu")
        assert bot.state == "welcome.menu"

    asyncio.run(talk())
''',
    ".gitignore": "windowbot.db*\n__pycache__/\n",
}


def init_project(directory: Path) -> list[Path]:
    """Write a new bot project into ``directory`` (created if missing); the files written.

    Raises:
        ConfigError: ``directory`` exists and is not empty (nothing is overwritten).
    """
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file; give a new or empty folder to bot init")
    if directory.is_dir() and any(directory.iterdir()):
        raise ConfigError(
            f"{directory} is not empty; bot init writes only into a new or empty folder "
            "(nothing was changed)"
        )
    written = []
    for name, content in FILES.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written
