"""The ``bot check``, ``bot graph`` and ``bot send`` commands (``bot chat`` is in bot.chat)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from bot.config import Config, resolve
from bot.engine import Engine, check_folder, mermaid
from bot.errors import ConfigError
from bot.findings import format_findings
from bot.models import Outgoing, TemplateCall
from bot.outbound import Outbound
from bot.runtime import fallback_checker, load_registry


def check(config: Config) -> int:
    """Check every flow and the template registry; print all findings; 0 if no error."""
    flows_dir = resolve(config, config.flows.dir)
    if not flows_dir.is_dir():
        print(f"bot: flows folder {flows_dir} does not exist (set [flows] dir or BOT_FLOWS_DIR)")
        return 1
    registry, template_findings = load_registry(flows_dir)
    findings = [
        *template_findings,
        *check_folder(flows_dir, fallback_checker=fallback_checker(registry)),
    ]
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    if findings:
        print(format_findings(findings))
    from bot.template_commands import live_report  # reads the store only if there is one

    for line in live_report(config, registry):
        print(line)
    flows = len([p for p in flows_dir.glob("*.yaml") if not p.name.startswith(("_", "templates"))])
    print(f"{flows_dir}: {flows} flow file(s), {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def graph(config: Config, flow: str, output: Path | None) -> int:
    """Print (or write as Markdown) a flow's Mermaid state diagram."""
    flows_dir = resolve(config, config.flows.dir)
    registry, _ = load_registry(flows_dir)
    engine = Engine.load(flows_dir, fallback_checker=fallback_checker(registry))
    if flow not in engine.flows:
        known = ", ".join(sorted(engine.flows))
        raise ConfigError(f"no flow named {flow!r} in {flows_dir} (flows: {known})")
    diagram = mermaid(engine, flow)
    if output is None:
        sys.stdout.write(diagram if diagram.endswith("\n") else diagram + "\n")
    else:
        output.write_text(f"# Flow `{flow}`\n\n```mermaid\n{diagram}\n```\n", encoding="utf-8")
        print(f"wrote {output}")
    return 0


def parse_params(values: Sequence[str]) -> tuple[str, ...] | dict[str, str]:
    """``--param`` values: all ``NAME=VALUE`` (named template) or all plain (positional)."""
    named = [v for v in values if "=" in v]
    if named and len(named) != len(values):
        raise ConfigError("--param: use NAME=VALUE for every parameter or for none")
    if named:
        return dict(v.split("=", 1) for v in values)
    return tuple(values)


async def send(
    config: Config,
    user: str,
    text: str | None,
    template: str | None,
    params: Sequence[str],
    language: str,
) -> int:
    """Queue a business-initiated message for ``user`` and send it now if nobody holds them."""
    fallback = None
    if template:
        fallback = TemplateCall(name=template, parameters=parse_params(params), language=language)
    message = {"type": "text", "text": {"body": text, "preview_url": False}} if text else None
    outgoing = Outgoing(message=message, fallback=fallback, note="bot send")
    async with Outbound.open(config) as outbound:
        decisions = await outbound.send(user, outgoing)
    if not decisions:
        print(f"queued for {user}; a running bot holds this user and will send it")
    for decision in decisions:
        print(f"{decision.kind}: {decision.reason}")
    return 0
