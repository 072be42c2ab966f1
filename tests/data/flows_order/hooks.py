"""Hooks of the ordering test flow."""

from __future__ import annotations

from bot.engine import HookContext


def remember(ctx: HookContext) -> None:
    """Append the message text to vars.seen (a read-modify-write that must never be lost)."""
    ctx.vars["seen"] = [*ctx.vars.get("seen", []), ctx.message.text]
