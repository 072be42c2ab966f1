"""The web console under ``/console``: play the user in a sandbox, watch and take over.

``bot run`` mounts it as a sub-application (its own middleware; the webhook routes are not
touched). Plain HTML, JavaScript and CSS from ``bot/console/static``, no build step; a JSON
API under ``/console/api`` and a server-sent event stream for live updates.

* **Sandbox** (sandbox mode only): type as any user, press buttons, pick list rows, move the
  user's clock, deliver late messages, reset, fire due reminders — through the signed
  webhook and a fake Cloud API inside the process (see :mod:`bot.console.sandbox`).
* **Conversations**: users with their flow, state, window, opt-out and pause; a user's
  timeline with every reply's session/template badge, delivery status and failures.
* **Takeover**: pause the bot for a user (``UserRecord.paused``; the engine then records
  their messages and answers nothing), reply as the business through the outbox (free text
  only while the window is open, else an approved template), hand them back at a state.

Modules: ``routes`` (pages, reading, live stream), ``takeover``, ``phone`` (the sandbox's
API), ``sandbox`` (fake Cloud API, user clocks), ``views`` (what is shown), ``access``.
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from bot.app import Components
from bot.config import Config
from bot.console.core import Console
from bot.console.routes import build
from bot.console.sandbox import Sandbox

__all__ = ["mount_console"]


def mount_console(
    app: web.Application, config: Config, components: Components, *, token: str
) -> Components:
    """Add ``/console`` to ``app``; the components the dispatcher should use.

    In sandbox mode with ``components.sandbox_cloud`` the replies go to a fake Cloud API in
    the process and the dispatcher's clock becomes the console's per-user clock.
    """
    sandbox = None
    if config.sandbox and components.sandbox_cloud and components.transport is not None:
        sandbox = Sandbox(config, components.registry)
        components = replace(components, transport=sandbox.transport, clock=sandbox.clock)
    console = Console(config, components, sandbox, token=token)
    app.add_subapp("/console", build(console))
    return components
