"""The fake Cloud API's template account: its list, submissions, and Meta's verdicts.

``TemplateAccount`` is the part of :class:`~bot.testing.FakeCloudAPI` that answers Meta's
``/{waba_id}/message_templates`` routes and posts the template webhooks
(``message_template_status_update``, ``template_category_update``) through the fake's signed,
retried webhook post (:class:`~bot._fake_webhooks.StatusWebhooks`); the fake inherits it.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from aiohttp import web

from bot._fake_checks import _need
from bot._fake_errors import _error, _Problem
from bot._fake_webhooks import StatusWebhooks
from bot.models import JSON


class TemplateAccount(StatusWebhooks):
    """The WhatsApp Business Account's templates, as :class:`~bot.testing.FakeCloudAPI` keeps them.

    The attributes below are set by ``FakeCloudAPI.__init__``.
    """

    page_size: int
    token: str
    waba_id: str
    requests: list[Any]
    _seq: itertools.count[int]

    def add_template(
        self,
        name: str,
        language: str,
        body: str,
        *,
        category: str = "UTILITY",
        status: str = "APPROVED",
        header: str = "",
        parameter_format: str = "POSITIONAL",
    ) -> JSON:
        """Put a template variant in the account, as WhatsApp Manager would; return it."""
        components: list[JSON] = []
        if header:
            components.append({"type": "HEADER", "format": "TEXT", "text": header})
        components.append({"type": "BODY", "text": body})
        template: JSON = {
            "id": str(next(self._seq) + 900_000_000_000),
            "name": name,
            "language": language,
            "status": status,
            "category": category,
            "parameter_format": parameter_format,
            "components": components,
            "quality_score": {"score": "UNKNOWN"},
        }
        self.templates.append(template)
        return template

    def template(self, name: str, language: str) -> JSON:
        """The account's template variant ``name``/``language`` (``KeyError`` if none)."""
        for template in self.templates:
            if (template["name"], template["language"]) == (name, language):
                return template
        raise KeyError(f"{name} ({language}) is not in the fake account")

    async def set_template_status(
        self, name: str, language: str, event: str, reason: str = ""
    ) -> int:
        """Approve, reject, pause, disable or reinstate a variant, and post Meta's webhook.

        Returns the bot's HTTP status for the signed ``message_template_status_update``.
        """
        template = self.template(name, language)
        template["status"] = "APPROVED" if event == "REINSTATED" else event
        if reason:
            template["rejected_reason"] = reason
        value = {
            "event": event,
            "message_template_id": int(template["id"]),
            "message_template_name": name,
            "message_template_language": language,
            "reason": reason or "NONE",
            "message_template_category": template["category"],
        }
        return await self._post_change("message_template_status_update", value)

    async def recategorize(
        self, name: str, language: str, category: str, *, notice_for: float | None = None
    ) -> int:
        """Re-categorize a variant (``template_category_update``) and post Meta's webhook.

        With ``notice_for`` (unix seconds), only announce the change for that time: the
        category stays as it is, as with Meta's 24-hour advance notice.
        """
        template = self.template(name, language)
        value: JSON = {
            "message_template_id": int(template["id"]),
            "message_template_name": name,
            "message_template_language": language,
        }
        if notice_for is not None:
            value |= {
                "correct_category": category,
                "new_category": template["category"],
                "category_update_timestamp": int(notice_for),
            }
        else:
            value |= {"previous_category": template["category"], "new_category": category}
            template["category"] = category
        return await self._post_change("template_category_update", value)

    async def _post_change(self, field_name: str, value: JSON) -> int:
        """Post one account-level webhook (one change of ``field_name``); the bot's status."""
        body = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": self.waba_id,
                    "time": int(self.clock()),
                    "changes": [{"field": field_name, "value": value}],
                }
            ],
        }
        return await self._post_webhook(body)

    def _check_account_template(self, content: JSON) -> None:
        """A variant the account lists must be APPROVED now (paused → 132015...)."""
        code = content.get("language", {}).get("code")
        found = [t for t in self.templates if (t["name"], t["language"]) == (content["name"], code)]
        if found and found[0]["status"] != "APPROVED":
            number = {"PAUSED": 132015, "DISABLED": 132016}.get(found[0]["status"], 132001)
            raise _Problem(number, f"template {content['name']} ({code}) is {found[0]['status']}")

    def _check_account(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise _Problem(190, "Invalid or missing access token", 401)
        if request.match_info["waba_id"] != self.waba_id:
            raise _Problem(100, f"Object with ID '{request.match_info['waba_id']}' does not exist")

    async def _list_templates(self, request: web.Request) -> web.Response:
        try:
            self._check_account(request)
        except _Problem as problem:
            return _error(problem)
        start = int(request.query.get("after") or 0)
        limit = int(request.query.get("limit") or self.page_size)
        fields = request.query.get("fields", "")
        wanted = set(fields.split(",")) if fields else None
        page = self.templates[start : start + limit]
        data = [
            {k: v for k, v in t.items() if wanted is None or k in wanted or k == "id"} for t in page
        ]
        answer: JSON = {"data": data, "paging": {"cursors": {"before": str(start)}}}
        if start + limit < len(self.templates):
            after = str(start + limit)
            answer["paging"]["cursors"]["after"] = after
            query = {**request.query, "after": after}
            answer["paging"]["next"] = str(request.url.with_query(query))
        return web.json_response(answer)

    async def _create_template(self, request: web.Request) -> web.Response:
        try:
            self._check_account(request)
            try:
                body = await request.json()
            except ValueError:
                body = None
            self.requests.append(body)
            _need(isinstance(body, dict), "The request body must be a JSON object")
            name, language, category = body.get("name"), body.get("language"), body.get("category")
            _need(isinstance(name, str) and bool(re.fullmatch(r"[a-z0-9_]{1,512}", name)), "name")
            _need(isinstance(language, str) and bool(language), "Param language is required")
            _need(category in ("UTILITY", "MARKETING", "AUTHENTICATION"), "Param category")
            components = body.get("components")
            _need(isinstance(components, list) and bool(components), "Param components")
            for component in components:
                text = str(component.get("text", "")) if isinstance(component, dict) else ""
                params = re.findall(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}", text)
                if params:
                    _need(
                        isinstance(component.get("example"), dict),
                        f"{component.get('type')} has variables: give example values",
                    )
            if any((t["name"], t["language"]) == (name, language) for t in self.templates):
                raise _Problem(100, f"Content in this language already exists for {name}")
        except _Problem as problem:
            return _error(problem)
        template = {
            "id": str(next(self._seq) + 900_000_000_000),
            "name": name,
            "language": language,
            "status": "PENDING",
            "category": category,
            "parameter_format": body.get("parameter_format", "POSITIONAL"),
            "components": components,
        }
        self.templates.append(template)
        return web.json_response({"id": template["id"], "status": "PENDING", "category": category})
