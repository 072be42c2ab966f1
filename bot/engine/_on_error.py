"""``on_error:`` replies: what a user gets when their message could not be handled.

They are compiled at load like every ``say:`` item and rendered when the dispatcher has
given up on a message. Rendering them must survive the state that broke the turn: each
reply is rendered with the user's context and, if that fails, once more with a context
that trusts nothing the user or a hook supplied (declared variable defaults, an empty
message); a reply that fails both times is dropped and logged, never raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import structlog

from bot.engine.render import Renderer, blank_message_context, message_context, user_context
from bot.engine.reply import CompiledReply, compile_reply
from bot.engine.spec import ProjectSpec, ReplySpec
from bot.models import InboundMessage, Outgoing, UserRecord

log = structlog.get_logger("windowbot.engine")

#: The ``note`` of every error reply, so logs and ``bot chat`` show why it was sent.
ERROR_NOTE = "on_error"

Context = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Declared:
    """The compiled replies of one ``on_error:`` and where they were declared."""

    replies: tuple[tuple[str, CompiledReply], ...]  # (file:line, reply)
    source: str  # "project" or "flow <name>", for logs


class ErrorReplies:
    """The project's ``on_error:`` replies and those of flows that override them."""

    __slots__ = ("_constants", "_flows", "_project")

    def __init__(
        self,
        project: _Declared,
        flows: Mapping[str, _Declared],
        constants: Mapping[str, Any],
    ) -> None:
        self._project = project
        self._flows = MappingProxyType(dict(flows))
        self._constants = constants

    @classmethod
    def compile(cls, project: ProjectSpec, renderer: Renderer) -> ErrorReplies:
        """Compile the ``on_error:`` replies of a checked project."""

        def declared(specs: tuple[ReplySpec, ...], file: object, source: str) -> _Declared:
            replies = []
            for spec in specs:
                where = f"{file}:{spec.line}"
                replies.append((where, compile_reply(renderer, spec, where, ERROR_NOTE)))
            return _Declared(tuple(replies), source)

        flows = {
            name: declared(flow.on_error, flow.file, f"flow {name}")
            for name, flow in project.flows.items()
            if flow.on_error is not None
        }
        own = declared(project.on_error, project.file, "project")
        return cls(own, flows, MappingProxyType(dict(project.constants)))

    def render(
        self,
        record: UserRecord,
        message: InboundMessage | None,
        reason: str,
        *,
        constants: Mapping[str, Mapping[str, Any]],
        defaults: Mapping[str, Any],
    ) -> tuple[Outgoing, ...]:
        """The error replies for a user in ``record.flow``; drops (and logs) any that fail.

        Args:
            record: the user's record as it was before the failed message.
            message: the message that failed, if known.
            reason: why handling failed; logged, never rendered.
            constants: each flow's constants (project constants merged in).
            defaults: every declared variable's default.
        """
        declared = self._flows.get(record.flow, self._project)
        if not declared.replies:
            return ()
        const = constants.get(record.flow, self._constants)
        builders: tuple[Callable[[], Context], ...] = (
            lambda: _user_context(record, message, const, defaults),
            lambda: _safe_context(record, const, defaults),
        )
        out = []
        for where, reply in declared.replies:
            rendered = _render(reply, builders, where, reason)
            if rendered is not None:
                out.append(rendered)
        log.info(
            "error_replies_rendered",
            declared_in=declared.source,
            count=len(out),
            dropped=len(declared.replies) - len(out),
            reason=reason,
        )
        return tuple(out)


def _render(
    reply: CompiledReply,
    builders: tuple[Callable[[], Context], ...],
    where: str,
    reason: str,
) -> Outgoing | None:
    errors: list[str] = []
    for build in builders:
        try:
            return reply.render(build())
        except Exception as exc:  # anything a template or a stored value can raise
            errors.append(f"{type(exc).__name__}: {exc}")
            if len(errors) < len(builders):
                log.warning(
                    "error_reply_rerendered",
                    reply=where,
                    error=errors[-1],
                    effect="rendered again with variable defaults and an empty message",
                )
    log.error("error_reply_failed", reply=where, errors=errors, reason=reason, effect="dropped")
    return None


def _user_context(
    record: UserRecord,
    message: InboundMessage | None,
    const: Mapping[str, Any],
    defaults: Mapping[str, Any],
) -> Context:
    """The context a ``say:`` reply of this user's turn would have seen."""
    return {
        "user": user_context(record),
        "message": blank_message_context() if message is None else message_context(message),
        "vars": {**defaults, **record.variables},
        "const": const,
    }


def _safe_context(
    record: UserRecord, const: Mapping[str, Any], defaults: Mapping[str, Any]
) -> Context:
    """A context with nothing the user or a hook stored: only the record's own fields."""
    return {
        "user": user_context(record),
        "message": blank_message_context(),
        "vars": dict(defaults),
        "const": const,
    }
