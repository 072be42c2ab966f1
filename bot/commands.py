"""The ``bot check``, ``bot graph`` and ``bot send`` commands (``bot chat`` is in bot.chat)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.config import Config
from bot.engine import Engine, check_folder, mermaid
from bot.engine.loader import flow_files
from bot.errors import ConfigError, FlowError
from bot.findings import sort_findings
from bot.models import Outgoing, TemplateCall
from bot.outbound import Outbound
from bot.runtime import TEMPLATES_FILE, fallback_checker, flows_folder, load_registry


def check(config: Config) -> int:
    """Check every flow and the template registry; print all findings; 0 if no error.

    The template file's findings come first: when it does not load, the fallbacks that name
    its templates are not checked against it (each would only repeat that cause).
    """
    try:
        flows_dir = flows_folder(config)
    except ConfigError as exc:
        print(f"bot: {exc}")
        return 1
    registry, template_findings = load_registry(flows_dir)
    broken = registry is None and (flows_dir / TEMPLATES_FILE).is_file()
    flow_findings = check_folder(
        flows_dir, fallback_checker=fallback_checker(registry, broken=broken)
    )
    findings = [*sort_findings(template_findings), *sort_findings(flow_findings)]
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    if findings:
        print("\n".join(str(f) for f in findings))
    if broken:
        print(f"(template fallbacks are checked against {TEMPLATES_FILE} once it loads)")
    flows = len(flow_files(flows_dir))
    print(f"{flows_dir}: {flows} flow file(s), {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def graph(config: Config, flow: str, output: Path | None) -> int:
    """Print (or write as Markdown) a flow's Mermaid state diagram."""
    flows_dir = flows_folder(config)
    registry, template_findings = load_registry(flows_dir)
    if registry is None and template_findings:
        raise FlowError(
            f"{TEMPLATES_FILE} has errors; run `bot check` for the report", list(template_findings)
        )
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


_RECIPIENT = re.compile(r"\+?[0-9]{7,15}")


def recipient(user: str) -> str:
    """The wa_id ``bot send`` sends to: a phone number in international format, digits only."""
    wa_id = user.strip()
    if not _RECIPIENT.fullmatch(wa_id):
        raise ConfigError(
            f"recipient {user!r} is not a WhatsApp number: give it in international format, "
            "digits only, country code first (e.g. 5511999990000)"
        )
    return wa_id.removeprefix("+")


async def send(
    config: Config,
    user: str,
    text: str | None,
    template: str | None,
    params: Sequence[str],
    language: str,
) -> int:
    """Queue a business-initiated message for ``user`` and send it now if nobody holds them.

    Returns 0 when it went out (or a running bot holds the user and will send it), 1 when
    nothing was sent (the window is closed and there is no usable template, say).
    """
    wa_id = recipient(user)
    fallback = None
    if template:
        fallback = TemplateCall(name=template, parameters=parse_params(params), language=language)
    message = {"type": "text", "text": {"body": text, "preview_url": False}} if text else None
    outgoing = Outgoing(message=message, fallback=fallback, note="bot send")
    async with Outbound.open(config) as outbound:
        decisions = await outbound.send(wa_id, outgoing)
    if not decisions:
        print(f"queued for {wa_id}; a running bot holds this user and will send it")
        return 0
    for decision in decisions:
        print(decision.reason if decision.kind == "skip" else f"{decision.kind}: {decision.reason}")
    return 1 if decisions[-1].kind == "skip" else 0
