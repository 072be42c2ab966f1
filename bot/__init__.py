"""windowbot: WhatsApp Business bots as flow files.

The public API is re-exported here; modules whose names start with ``_`` are private.
Hooks need :class:`HookContext` and the reply builders (:func:`text`, :func:`buttons`,
:func:`list_`, :func:`image`, :func:`template`); the test kit (flow tester, fake Cloud API,
webhook builders) is :mod:`bot.testing`. Importing ``bot`` does not load the web server.
"""

from bot.config import Config, load_config
from bot.engine import Engine, HookContext, Reminder, Turn
from bot.errors import (
    BotError,
    CloudAPIError,
    ConfigError,
    FlowError,
    ScheduleError,
    StoreError,
    StoreUnavailable,
    TemplateError,
    WebhookError,
)
from bot.models import InboundMessage, Job, Outgoing, StatusUpdate, TemplateCall, UserRecord
from bot.outbound import Outbound
from bot.replies import buttons, image, list_, template, text
from bot.scheduling import Scheduler
from bot.store import Store, store_from_url
from bot.templates import TemplateRegistry
from bot.whatsapp import CloudAPI
from bot.window import Decision, WindowPolicy, decide

__all__ = [
    "BotError",
    "CloudAPI",
    "CloudAPIError",
    "Config",
    "ConfigError",
    "Decision",
    "Engine",
    "FlowError",
    "HookContext",
    "InboundMessage",
    "Job",
    "Outbound",
    "Outgoing",
    "Reminder",
    "ScheduleError",
    "Scheduler",
    "StatusUpdate",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TemplateCall",
    "TemplateError",
    "TemplateRegistry",
    "Turn",
    "UserRecord",
    "WebhookError",
    "WindowPolicy",
    "buttons",
    "decide",
    "image",
    "list_",
    "load_config",
    "store_from_url",
    "template",
    "text",
]
