"""Read receipts and the typing indicator: best effort, never in a reply's way.

A flow with ``typing_indicator: true`` marks each inbound message read and shows "typing…"
while its turn runs. The request is a task of its own with a short timeout: the turn never
waits for it, and a failed or slow request only logs a line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from bot.dispatcher import Handler, TurnResult
from bot.models import InboundMessage, UserRecord

log = structlog.get_logger("windowbot.typing_indicator")


def with_typing(
    handler: Handler,
    transport: object,
    wants: Callable[[UserRecord], bool],
    *,
    timeout: float = 3.0,
) -> Handler:
    """``handler``, firing a read receipt with typing indicator first where ``wants`` says.

    A transport without ``mark_read`` (the sandbox's) leaves ``handler`` as it is.
    """
    mark = getattr(transport, "mark_read", None)
    if mark is None:
        return handler
    tasks: set[asyncio.Task[None]] = set()

    async def fire(message_id: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                await mark(message_id, typing=True)
        except Exception as exc:  # best effort: never more than a log line
            log.info("typing_indicator_failed", message_id=message_id, error=str(exc))

    async def handle(record: UserRecord, message: InboundMessage, now: float) -> TurnResult:
        if wants(record):
            task = asyncio.get_running_loop().create_task(fire(message.id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return await handler(record, message, now)

    return handle
