"""Reply builders: their bodies are what the Cloud API accepts, and bad parts fail early."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import CloudAPI, TemplateRegistry, buttons, image, list_, template, text
from bot.templates import build_template_message
from bot.testing import FakeCloudAPI, FlowTester
from tests.server import ROOT

USER = "5511999990000"


class TestBuilders:
    async def test_every_builder_is_accepted_by_the_fake_cloud_api(self) -> None:
        """text, buttons, list_ and image bodies go through the real client and Meta's checks."""
        replies = [
            text("hi there"),
            buttons("Pick one", {"a": "Alpha", "b": "Beta"}, header="Menu", footer="any time"),
            list_("Slots", [("d1", "Monday", "9:00"), ("d2", "Tuesday")], button="See slots"),
            list_("Slots", sections={"This week": {"d1": "Monday"}, "Next": {"d8": "Monday"}}),
            image("https://example.com/cat.jpg", caption="a cat"),
        ]
        async with (
            FakeCloudAPI(token="t", phone_number_id="1") as fake,
            CloudAPI(phone_number_id="1", token="t", base_url=fake.url) as api,
        ):
            fake.user_wrote(USER)
            for reply in replies:
                assert reply.message is not None
                await api.send(USER, reply.message)
            sent = [m.body["type"] for m in fake.messages_to(USER)]
        assert sent == ["text", "interactive", "interactive", "interactive", "image"]

    def test_template_call_builds_the_registry_message(self) -> None:
        """template() with named parameters and a button payload renders as Meta's template."""
        registry = TemplateRegistry.load(ROOT / "flows" / "templates.yaml")
        call = template("appointment_reminder", name="Ana\n Souza", slot="Mon 9:00", buttons=["OK"])
        assert call.parameters == {"name": "Ana Souza", "slot": "Mon 9:00"}
        body = build_template_message(registry, call, "en_US")
        assert body["template"]["name"] == "appointment_reminder"

    @pytest.mark.parametrize(
        ("build", "needle"),
        [
            (lambda: buttons("x", {"1": "a", "2": "b", "3": "c", "4": "d"}), "1 to 3 choices"),
            (lambda: buttons("x", {"1": "a title far too long to fit"}), "button title"),
            (lambda: text(""), "text is empty"),
            (lambda: text("x" * 5000), "WhatsApp allows 4096"),
            (lambda: list_("x", {str(i): "r" for i in range(11)}), "at most 10 rows"),
            (lambda: list_("x", {"a": "b"}, sections={"s": {"c": "d"}}), "not both"),
            (lambda: image("/tmp/cat.jpg"), "http(s) link"),
            (lambda: template("t", "a", slot="b"), "not both"),
        ],
    )
    def test_what_whatsapp_refuses_fails_in_the_builder(self, build: object, needle: str) -> None:
        """Too many choices, too long or empty parts, bad links raise ValueError saying what."""
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            build()  # type: ignore[operator]


class TestHooksReturningBuilders:
    async def test_a_hook_returns_buttons_and_a_template(self, tmp_path: Path) -> None:
        """What a do: hook returns from the builders becomes the turn's replies, in order."""
        (tmp_path / "welcome.yaml").write_text(
            "flow: welcome\nstates:\n  start:\n    say: hi\n    on:\n"
            "      - text: bye\n        to: done\n      - else:\n        do: [offer]\n"
            "  done:\n    final: true\n"
        )
        (tmp_path / "hooks.py").write_text(
            "from bot import buttons, template\n\n"
            "def offer(ctx):\n"
            "    return [buttons('Pick', {'a': 'Alpha'}), template('follow_up', 'Ana')]\n"
        )
        bot = FlowTester.load(tmp_path)
        await bot.send("x")
        answer = await bot.send("y")
        assert answer.choices == ["Alpha"]
        assert [r.message is None for r in answer.replies] == [False, True]
        assert answer.replies[1].fallback == template("follow_up", "Ana")
