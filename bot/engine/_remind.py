"""The ``remind:`` and ``cancel_reminder:`` actions of a rule: read, checked, compiled.

```yaml
- reply: "yes"
  do: [book_slot]
  remind:
    at: "{{ vars.slot_at }} - 1h"      # when (see bot._when.parse_time)
    key: appointment                   # per user: the same key again replaces it
    expires_after: 1h                  # not sent later than this after `at`
    resume: booking.reminded           # where a tap on its buttons lands
    say:                               # a reply with its fallback...
      text: "Reminder: your appointment is at {{ vars.slot }}."
      fallback: {template: appointment_reminder, params: {name: vars.name, slot: vars.slot}}
    # ...or a template alone: template: / params: / buttons: / language: here
- text: cancel
  cancel_reminder: appointment
```

Both compile into hooks run after the rule's ``do:`` hooks; they call
:meth:`~bot.engine.hooks.HookContext.schedule` and ``cancel`` like a Python hook would.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node

from bot._when import parse_duration, parse_quiet, parse_time, refuse_recurring
from bot._yaml import line_of
from bot.engine._check_replies import ReplyChecker
from bot.engine._replies import FALLBACK_KEYS, ReplyReader
from bot.engine.hooks import Hook, HookContext
from bot.engine.render import Renderer, message_context, user_context
from bot.engine.reply import CompiledFallback, compile_reply
from bot.engine.spec import ProjectSpec, RemindSpec
from bot.errors import ScheduleError

REMIND_KEYS = frozenset({"at", "key", "expires_after", "resume", "quiet_hours", "say"})


def read_reminders(replies: ReplyReader, node: Node, state: str) -> tuple[RemindSpec, ...]:
    """``remind:`` (one mapping or a list of them) as specs; problems become findings."""
    r = replies.r
    out = []
    for item in r.items(node):
        m = r.mapping(item, "remind", REMIND_KEYS | FALLBACK_KEYS)
        if m is None:
            continue
        if "at" not in m:
            r.report(item, 'remind: needs at: (when to send it, like "{{ vars.slot_at }} - 1h")')
            continue
        if ("say" in m) == ("template" in m):
            r.report(item, "remind: needs either say: (a reply) or template: (a template alone)")
            continue
        reply = template = None
        if "say" in m:
            reply = replies.reply(m["say"][1], state)
        else:
            only = [(k, v) for k, v in item.value if k.value in FALLBACK_KEYS]
            alone = MappingNode(item.tag, only, item.start_mark, item.end_mark)
            template = replies.fallback(alone, state, line_of(item))
        text = {k: r.text(m[k][1], k) or "" for k in REMIND_KEYS - {"say"} if k in m}
        out.append(
            RemindSpec(
                at=text.get("at", ""),
                line=line_of(item),
                key=text.get("key", ""),
                expires_after=text.get("expires_after", ""),
                resume=text.get("resume", ""),
                resume_line=line_of(m["resume"][1]) if "resume" in m else 0,
                quiet_hours=text.get("quiet_hours", ""),
                reply=reply,
                template=template,
            )
        )
    return tuple(out)


def check_reminders(
    project: ProjectSpec, spec: RemindSpec, file: Path, replies: ReplyChecker
) -> None:
    """Errors for a reminder that could never be scheduled as written."""
    replies.jinja(spec.at, spec.line)
    replies.jinja(spec.key, spec.line)
    for check, value in (
        (refuse_recurring, spec.at),
        (parse_duration, spec.expires_after),
        (parse_quiet, spec.quiet_hours),
    ):
        if value:
            try:
                check(value)
            except ScheduleError as exc:
                replies.error(spec.line, f"remind: {exc}")
    if spec.resume:
        flow, _, state = spec.resume.partition(".")
        target = project.flows.get(flow)
        if target is None or state not in target.states:
            replies.error(
                spec.resume_line or spec.line,
                f"remind: resume: {spec.resume!r} is not a state (give it as flow.state)",
            )
    if spec.reply is not None:
        replies.reply(spec.reply)
    if spec.template is not None:
        replies.fallback(spec.template)


def compile_reminder(renderer: Renderer, spec: RemindSpec, where: str, note: str) -> Hook:
    """The hook that schedules the reminder with the turn's values."""
    at = renderer.text(spec.at, where)
    key = renderer.text(spec.key, where)
    expires = parse_duration(spec.expires_after) if spec.expires_after else 0.0
    reply = compile_reply(renderer, spec.reply, where, note) if spec.reply else None
    template = CompiledFallback(renderer, spec.template) if spec.template else None

    def remind(ctx: HookContext) -> None:
        values = _context(ctx)
        what: Any = reply.render(values) if reply else template.render(values)  # type: ignore[union-attr]
        try:
            when = parse_time(str(at(values)), ctx.now)
        except ScheduleError as exc:
            raise ScheduleError(f"{where}: remind: {exc}") from None
        ctx.schedule(
            what,
            at=when,
            note=note,
            key=str(key(values)),
            expires_after=expires,
            resume=spec.resume,
            quiet_hours=spec.quiet_hours,
        )

    return remind


def compile_cancel(renderer: Renderer, source: str, where: str) -> Hook:
    """The hook that cancels the user's reminder with this key."""
    key = renderer.text(source, where)

    def cancel(ctx: HookContext) -> None:
        ctx.cancel(str(key(_context(ctx))))

    return cancel


def _context(ctx: HookContext) -> Mapping[str, Any]:
    """What a reply's Jinja sees, from a hook's context."""
    return {
        "user": user_context(ctx.user),
        "message": {**message_context(ctx.message), "match": dict(ctx.match)},
        "vars": ctx.vars,
        "const": ctx.const,
    }
