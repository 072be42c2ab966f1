"""Meta's error answers, as the fake Cloud API gives them: titles, default statuses, payloads.

``_Problem`` is raised by the checks and the fake's routes; ``_error`` turns it into the
``{"error": ...}`` JSON Meta answers with.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from aiohttp import web

from bot.models import JSON

RE_ENGAGEMENT = (
    "Message failed to send because more than 24 hours have passed since the customer last"
    " replied to this number."
)
_TITLES = {
    1: "An unknown error occurred",
    2: "Service temporarily unavailable",
    100: "Invalid parameter",
    190: "Invalid OAuth access token - Cannot parse access token",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131026: "Message Undeliverable",
    131047: "Re-engagement message",
    131048: "Spam rate limit hit",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    132000: "Number of parameters does not match the expected number of params",
    132001: "Template name does not exist in the translation",
    132015: "Template is Paused",
    132016: "Template is Disabled",
}
_DEFAULT_STATUS = {190: 401, 131000: 500, 1: 500, 2: 503}


@dataclass
class _Problem(Exception):
    code: int
    details: str
    status: int = 400
    extra: JSON = field(default_factory=dict)


def _error(problem: _Problem) -> web.Response:
    title = _TITLES.get(problem.code, "Invalid parameter")
    error: JSON = {
        "message": f"(#{problem.code}) {title}",
        "type": "OAuthException",
        "code": problem.code,
        "error_data": {"messaging_product": "whatsapp", "details": problem.details or title},
        "fbtrace_id": f"AFake{uuid.uuid4().hex[:16]}",
    }
    return web.json_response({"error": error}, status=problem.status)
