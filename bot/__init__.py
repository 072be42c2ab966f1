"""windowbot: WhatsApp Business bots as flow files.

The public API is re-exported here; everything else is an implementation detail.
"""

from bot.errors import BotError, ConfigError, FlowError, StoreError, TemplateError
from bot.models import InboundMessage, Outgoing, StatusUpdate, TemplateCall, UserRecord

__all__ = [
    "BotError",
    "ConfigError",
    "FlowError",
    "InboundMessage",
    "Outgoing",
    "StatusUpdate",
    "StoreError",
    "TemplateCall",
    "TemplateError",
    "UserRecord",
]
