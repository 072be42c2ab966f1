"""Assembling a running bot from its config: store, flows, templates, sender, app."""

from __future__ import annotations

import structlog
from aiohttp import web

from bot.app import Components, create_app
from bot.config import Config, resolve
from bot.store import store_from_url

log = structlog.get_logger("windowbot")


def build_app(config: Config) -> web.Application:
    """The application ``bot run`` serves, with everything the config names."""
    store = store_from_url(config.store.url, base_dir=config.base_dir)
    if config.sandbox:
        log.warning(
            "sandbox_mode",
            reason="no WHATSAPP_TOKEN" if not config.whatsapp.token else "server.sandbox = true",
            effect="replies are logged, not sent to Meta",
            store=store.description,
            flows=str(resolve(config, config.flows.dir)),
        )
    if not config.whatsapp.app_secret and config.sandbox:
        log.warning(
            "signature_check_disabled",
            reason="sandbox mode and no WHATSAPP_APP_SECRET",
            effect="ANY caller can post webhooks: set WHATSAPP_APP_SECRET before going live",
        )
    return create_app(config, Components(store=store))
