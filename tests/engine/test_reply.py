"""Replies render to exact Cloud API bodies and template calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from bot.engine import Engine
from bot.models import Outgoing, TemplateCall
from tests.engine.helpers import NOW, text, user, write

REPLIES = """
    constants: {shop: Lumen, lat: "-23.56"}
    vars: {title: ""}
    states:
      start:
        say:
          - text: "Visit https://x.example"
            preview_url: true
          - image: https://cdn.example/a.png
            caption: "{{ const.shop }}"
          - document: https://cdn.example/menu.pdf
            filename: menu.pdf
          - audio: https://cdn.example/hi.ogg
          - location:
              {latitude: "{{ const.lat }}", longitude: -46.64, name: Lumen, address: Av. Paulista}
          - text: Pick one
            header: Menu
            footer: Reply any time
            list:
              button: Options
              rows:
                - Opening hours
                - id: far
                  title: "{{ user.profile_name }} is a very long name indeed"
                  description: Far
          - text: Sure?
            buttons: [{id: "y", title: "{{ user.profile_name * 10 }}"}]
            fallback:
              template: confirm_it
              language: pt_BR
              params: [user.profile_name, "'line one\\n\\tline   two'", "{{ const.shop }}!"]
              header: [const.shop]
              buttons: [YES, "{{ user.key }}"]
        on: [{else: true, to: end}]
      end: {final: true}
"""


@pytest.fixture
async def replies(tmp_path: Path) -> tuple[Outgoing, ...]:
    engine = Engine.load(write(tmp_path / "flows", {"welcome.yaml": REPLIES}))
    return (await engine.handle(user(name="Ana"), text("x"), NOW)).outgoing


def body(reply: Outgoing) -> dict[str, Any]:
    assert reply.message is not None
    return reply.message


class TestShapes:
    async def test_text_and_media(self, replies: tuple[Outgoing, ...]) -> None:
        """Text keeps preview_url; media carry link, caption or filename as their type allows."""
        assert body(replies[0]) == {
            "type": "text",
            "text": {"body": "Visit https://x.example", "preview_url": True},
        }
        assert body(replies[1]) == {
            "type": "image",
            "image": {"link": "https://cdn.example/a.png", "caption": "Lumen"},
        }
        assert body(replies[2]) == {
            "type": "document",
            "document": {"link": "https://cdn.example/menu.pdf", "filename": "menu.pdf"},
        }
        assert body(replies[3]) == {
            "type": "audio",
            "audio": {"link": "https://cdn.example/hi.ogg"},
        }

    async def test_location(self, replies: tuple[Outgoing, ...]) -> None:
        """Coordinates become numbers, even when rendered from a template."""
        assert body(replies[4]) == {
            "type": "location",
            "location": {
                "latitude": -23.56,
                "longitude": -46.64,
                "name": "Lumen",
                "address": "Av. Paulista",
            },
        }

    async def test_list_with_header_footer_and_derived_ids(
        self, replies: tuple[Outgoing, ...]
    ) -> None:
        """A list gets one untitled section; a plain title gives a slug id; long titles are cut."""
        assert body(replies[5]) == {
            "type": "interactive",
            "interactive": {
                "type": "list",
                "header": {"type": "text", "text": "Menu"},
                "body": {"text": "Pick one"},
                "footer": {"text": "Reply any time"},
                "action": {
                    "button": "Options",
                    "sections": [
                        {
                            "rows": [
                                {"id": "opening_hours", "title": "Opening hours"},
                                {
                                    "id": "far",
                                    "title": "Ana is a very long name…",
                                    "description": "Far",
                                },
                            ]
                        }
                    ],
                },
            },
        }

    async def test_rendered_button_title_is_cut_to_twenty(
        self, replies: tuple[Outgoing, ...]
    ) -> None:
        """A title that only becomes too long at render time is cut to WhatsApp's 20."""
        title = body(replies[6])["interactive"]["action"]["buttons"][0]["reply"]["title"]
        assert title == "AnaAnaAnaAnaAnaAnaA…" and len(title) == 20

    async def test_fallback_params_are_one_line_strings(
        self, replies: tuple[Outgoing, ...]
    ) -> None:
        """Params are expressions (or templates) rendered to text without newlines or tabs."""
        assert replies[6].fallback == TemplateCall(
            name="confirm_it",
            parameters=("Ana", "line one line two", "Lumen!"),
            language="pt_BR",
            header=("Lumen",),
            buttons=("YES", "5511999990000"),
        )
        assert replies[0].fallback is None


class TestWholePathTemplates:
    """``{{ message.text }}`` and the like skip Jinja's machinery: same result, same errors."""

    CTX: ClassVar[dict[str, Any]] = {
        "user": {"profile_name": "Ana", "key": "5511"},
        "message": {"text": "olá <b>", "type": "text"},
        "vars": {"count": 3, "nothing": None, "items": "vars.items is the dict's method"},
        "const": {"nested": {"deep": 1.5}},
    }

    @pytest.mark.parametrize(
        "source",
        [
            "{{ message.text }}",
            "{{message.text}}",
            "{{- user.profile_name -}}",
            "{{ vars.count }}",
            "{{ vars.nothing }}",
            "{{ vars.items }}",
            "{{ const.nested.deep }}",
            "{{ const.nested }}",
        ],
    )
    def test_renders_what_jinja_renders(self, source: str) -> None:
        from bot.engine.render import Renderer

        renderer = Renderer()
        assert renderer.text(source, "t")(self.CTX) == renderer.template(source).render(self.CTX)

    def test_a_missing_key_is_jinjas_error(self) -> None:
        from bot.engine.render import Renderer
        from bot.errors import RenderError

        with pytest.raises(RenderError, match="missing"):
            Renderer().text("{{ vars.missing }}", "where")(self.CTX)
