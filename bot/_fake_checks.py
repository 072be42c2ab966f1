"""The fake Cloud API's request checks: malformed sends and templates, worded like Meta's errors.

Message shape (100), interactive and media shape, template shape, and templates against a
:class:`~bot.templates.TemplateRegistry` (unknown → 132001, wrong parameter count → 132000).
"""

from __future__ import annotations

import re
from typing import Any

from bot._fake_errors import _Problem
from bot.models import JSON, MEDIA_TYPES
from bot.templates import TemplateRegistry

_TYPES = MEDIA_TYPES | {"text", "interactive", "location", "contacts", "reaction", "template"}
_BAD_SPACING = re.compile(r"[\n\t]| {5,}")


def _need(condition: bool, details: str) -> None:
    if not condition:
        raise _Problem(100, details)


def _text(value: Any, name: str, limit: int, *, required: bool = True) -> None:
    if value is None and not required:
        return
    _need(isinstance(value, str) and bool(value), f"Param {name} is required")
    _need(len(value) <= limit, f"Param {name} must be at most {limit} characters long")


def _check_message(body: JSON) -> None:
    """Raise a 100 problem, worded like Meta's, for a malformed send request."""
    _need(
        body.get("messaging_product") == "whatsapp", "The parameter messaging_product is required"
    )
    address = body.get("to", body.get("recipient"))  # when both are given, ``to`` wins
    _need(
        isinstance(address, str) and bool(address),
        "The parameter to (a phone number) or recipient (a business-scoped user id) is required",
    )
    _need(body.get("recipient_type", "individual") == "individual", "Invalid recipient_type")
    kind = body.get("type", "text")
    _need(kind in _TYPES, f"Param type must be one of {', '.join(sorted(_TYPES))}")
    content = body.get(kind)
    if kind == "contacts":
        _need(isinstance(content, list) and bool(content), "Param contacts is required")
        return
    _need(isinstance(content, dict), f"Param {kind} must be an object")
    assert isinstance(content, dict)
    if kind == "text":
        _text(content.get("body"), "text['body']", 4096)
    elif kind == "interactive":
        _check_interactive(content)
    elif kind in MEDIA_TYPES:
        _need(bool(content.get("link") or content.get("id")), f"Param {kind} needs link or id")
        _text(content.get("caption"), f"{kind}['caption']", 1024, required=False)
    elif kind == "location":
        for key in ("latitude", "longitude"):
            _need(isinstance(content.get(key), int | float), f"Param location['{key}'] is required")
    elif kind == "reaction":
        _need(
            isinstance(content.get("message_id"), str), "Param reaction['message_id'] is required"
        )
        _need(isinstance(content.get("emoji"), str), "Param reaction['emoji'] is required")
    elif kind == "template":
        _check_template_shape(content)


def _check_interactive(content: JSON) -> None:
    kind = content.get("type")
    action = content.get("action")
    _need(isinstance(action, dict), "Param interactive['action'] is required")
    assert isinstance(action, dict)
    body = content.get("body")
    _text(body.get("text") if isinstance(body, dict) else None, "interactive['body']['text']", 1024)
    if kind == "button":
        buttons = action.get("buttons")
        _need(isinstance(buttons, list) and 1 <= len(buttons) <= 3, "Param buttons: 1 to 3 buttons")
        assert isinstance(buttons, list)
        ids, titles = set(), set()
        for i, button in enumerate(buttons):
            reply = button.get("reply") if isinstance(button, dict) else None
            _need(isinstance(reply, dict) and button.get("type") == "reply", f"Param buttons[{i}]")
            assert isinstance(reply, dict)
            _text(reply.get("id"), f"buttons[{i}]['reply']['id']", 256)
            _text(reply.get("title"), f"buttons[{i}]['reply']['title']", 20)
            ids.add(reply["id"])
            titles.add(reply["title"])
        _need(len(ids) == len(titles) == len(buttons), "Button ids and titles must be unique")
    elif kind == "list":
        _text(action.get("button"), "action['button']", 20)
        sections = action.get("sections")
        _need(isinstance(sections, list) and 1 <= len(sections) <= 10, "Param sections: 1 to 10")
        assert isinstance(sections, list)
        rows = [r for s in sections if isinstance(s, dict) for r in s.get("rows") or []]
        _need(1 <= len(rows) <= 10, "Total row count exceed max allowed count: 10")
        for i, row in enumerate(rows):
            _need(isinstance(row, dict), f"Param rows[{i}] must be an object")
            _text(row.get("id"), f"rows[{i}]['id']", 200)
            _text(row.get("title"), f"rows[{i}]['title']", 24)
            _text(row.get("description"), f"rows[{i}]['description']", 72, required=False)
    else:
        _need(
            kind
            in (
                "cta_url",
                "flow",
                "product",
                "product_list",
                "location_request_message",
                "address_message",
            ),
            f"Param interactive['type'] {kind!r} is invalid",
        )


def _check_template_shape(content: JSON) -> None:
    _need(isinstance(content.get("name"), str) and bool(content["name"]), "Param template['name']")
    language = content.get("language")
    _need(
        isinstance(language, dict) and isinstance(language.get("code"), str),
        "Param template['language']['code'] is required",
    )
    components = content.get("components", [])
    _need(isinstance(components, list), "Param template['components'] must be a list")
    for i, component in enumerate(components):
        _need(
            isinstance(component, dict)
            and component.get("type") in ("header", "body", "button", "footer"),
            f"Param components[{i}]['type']",
        )
        for j, param in enumerate(component.get("parameters") or []):
            where = f"components[{i}]['parameters'][{j}]"
            _need(isinstance(param, dict) and isinstance(param.get("type"), str), f"Param {where}")
            if param["type"] == "text":
                _text(param.get("text"), f"{where}['text']", 1024)
                _need(
                    not _BAD_SPACING.search(param["text"]),
                    "Param text cannot have new-line/"
                    "tab characters or more than 4 consecutive spaces",
                )


def _check_template(content: JSON, registry: TemplateRegistry, *, by_phone: bool = True) -> None:
    name, code = content["name"], content["language"]["code"]
    template = registry.get(name)
    variant = template.variants.get(code) if template else None
    if template is None or variant is None:
        raise _Problem(132001, f"template name ({name}) does not exist in {code}")
    if template.category == "AUTHENTICATION" and not by_phone:
        raise _Problem(100, f"authentication template {name} needs a phone number in 'to'")
    if variant.status != "APPROVED":
        number = {"PAUSED": 132015, "DISABLED": 132016}.get(variant.status, 132001)
        raise _Problem(number, f"template {name} ({code}) is {variant.status}")
    for part, want in (("body", template.parameters), ("header", template.header_parameters)):
        given = [
            p
            for c in content.get("components", [])
            if c.get("type") == part
            for p in c.get("parameters") or []
        ]
        if len(given) != len(want):
            raise _Problem(
                132000,
                f"{part}: number of localizable_params ({len(given)}) does not"
                f" match the expected number of params ({len(want)})",
            )
        if template.parameter_format == "named":
            names = {p.get("parameter_name") for p in given}
            if names != set(want):
                raise _Problem(132000, f"{part}: parameter names must be {', '.join(want)}")
