"""The Graph API's template management endpoints: list the account's templates, submit one.

``GET /{waba_id}/message_templates`` (paged: the client follows ``paging.next``) and ``POST
/{waba_id}/message_templates``. Errors are mapped like the send endpoint's
(:func:`bot.whatsapp.error_from_response`).
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import aiohttp

from bot.errors import ConfigError, TransientError
from bot.models import JSON
from bot.whatsapp import DEFAULT_API_VERSION, DEFAULT_BASE_URL, error_from_response

#: What ``bot templates pull`` asks Meta for.
FIELDS = "name,language,status,category,components,parameter_format,rejected_reason,quality_score"


class TemplatesAPI:
    """``async with TemplatesAPI(waba_id=..., token=...) as api:`` then list or create.

    Args:
        waba_id: the WhatsApp Business Account id (``WHATSAPP_WABA_ID``).
        token: the access token; never logged.
        base_url, api_version: as for :class:`bot.whatsapp.CloudAPI`.
        timeout: seconds for one request.
    """

    def __init__(
        self,
        *,
        waba_id: str,
        token: str,
        base_url: str = DEFAULT_BASE_URL,
        api_version: str = DEFAULT_API_VERSION,
        timeout: float = 30.0,
    ) -> None:
        if not waba_id:
            raise ConfigError(
                "WHATSAPP_WABA_ID is not set: the templates live in the WhatsApp Business"
                " Account (WhatsApp Manager → Account tools → business account id); set it in"
                " the environment or as [whatsapp] waba_id"
            )
        if not token:
            raise ConfigError("WHATSAPP_TOKEN is not set: the Graph API needs the access token")
        self.url = f"{base_url.rstrip('/')}/{api_version}/{waba_id}/message_templates"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TemplatesAPI:
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def list_templates(self, *, limit: int = 100) -> list[JSON]:
        """Every template variant of the account, all pages followed."""
        out: list[JSON] = []
        url: str | None = self.url
        params: dict[str, Any] | None = {"fields": FIELDS, "limit": limit}
        while url:
            page = await self._request("GET", url, params=params)
            data = page.get("data")
            if isinstance(data, list):
                out.extend(item for item in data if isinstance(item, dict))
            paging = page.get("paging")
            url = paging.get("next") if isinstance(paging, dict) else None
            params = None  # ``next`` carries the query
        return out

    async def create_template(self, body: JSON) -> JSON:
        """Submit a template variant for review; Meta answers ``{id, status, category}``."""
        return await self._request("POST", self.url, json=body)

    async def _request(self, method: str, url: str, **kwargs: Any) -> JSON:
        if self._session is None:
            raise RuntimeError("TemplatesAPI is not started: use 'async with TemplatesAPI(...)'")
        try:
            async with self._session.request(method, url, **kwargs) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"cannot reach the Graph API at {self.url}: {exc}") from None
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if 200 <= status < 300 and isinstance(data, dict):
            return data
        raise error_from_response(status, data)
