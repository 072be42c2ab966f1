"""The ``bot templates pull | push | status`` and ``bot stats`` commands, and ``bot check``'s
live lines: configuration, the Graph API and the store around :mod:`bot.template_sync`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bot.config import Config, resolve
from bot.errors import BotError
from bot.graph_api import TemplatesAPI
from bot.live_templates import blocked_reason
from bot.store import store_from_url
from bot.store.base import TemplateView
from bot.template_sync import find_entry, pull, round_trip_yaml, status_lines, submission, to_push
from bot.templates import TEMPLATES_FILE, TemplateRegistry


def _api(config: Config) -> TemplatesAPI:
    wa = config.whatsapp
    return TemplatesAPI(
        waba_id=wa.waba_id, token=wa.token, base_url=wa.api_url, api_version=wa.api_version
    )


def _file(config: Config) -> Path:
    return resolve(config, config.flows.dir) / TEMPLATES_FILE


async def pull_command(config: Config, *, check: bool) -> int:
    """``bot templates pull [--check]``: 0 when in step (or updated), 1 when ``--check`` differs."""
    path = _file(config)
    async with _api(config) as api:
        remote = await api.list_templates()
    report = pull(path, remote, write=not check)
    for line in report.lines:
        print(line)
    if not report.changed:
        print(f"{path}: in step with Meta ({len(remote)} variant(s))")
        return 0
    if check:
        print(f"{path}: differs from Meta; run `bot templates pull` to update it")
        return 1
    print(f"{path}: updated from Meta ({len(remote)} variant(s)); review and commit it")
    return 0


async def push_command(config: Config, names: Sequence[str]) -> int:
    """``bot templates push [NAME...]``: submit what Meta lacks; 1 if something was refused."""
    path = _file(config)
    registry = TemplateRegistry.load(path)
    async with _api(config) as api:
        remote = await api.list_templates()
        variants, refused = to_push(registry, remote, names)
        for template, code in variants:
            examples = _examples(path, template.name)
            answer = await api.create_template(submission(template, code, examples))
            print(
                f"{template.name} ({code}): submitted, {answer.get('status', 'PENDING')}"
                f" (Meta id {answer.get('id', '?')}, {answer.get('category', template.category)})"
            )
    for line in refused:
        print(line)
    if variants:
        print("approval can take up to 4 business days; `bot templates pull` shows the verdict")
    elif not refused:
        print("nothing to push: Meta has every variant of the file")
    return 1 if refused else 0


def _examples(path: Path, name: str) -> Mapping[str, str]:
    """The ``examples:`` a template entry gives for review (parameter → sample text)."""
    data = round_trip_yaml().load(path.read_text(encoding="utf-8")) or {}
    entry = find_entry(data.get("templates") or {}, name) or {}
    examples = entry.get("examples") or {}
    return {str(k): str(v) for k, v in examples.items()} if isinstance(examples, dict) else {}


async def status_command(config: Config) -> int:
    """``bot templates status``: the file next to the live view the webhooks built."""
    path = _file(config)
    registry = TemplateRegistry.load(path) if path.is_file() else None
    store = store_from_url(config.store.url, base_dir=config.base_dir)
    await store.open()
    try:
        view = await store.template_view()
    finally:
        await store.close()
    for line in status_lines(registry, view):
        print(line)
    return 0


async def stats_command(config: Config) -> int:
    """``bot stats``: the inbox and the pricing ledger (what Meta said it bills)."""
    store = store_from_url(config.store.url, base_dir=config.base_dir)
    await store.open()
    try:
        counts = await store.inbox_counts()
        priced = await store.pricing_counts()
    finally:
        await store.close()
    print("inbox: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not priced:
        print("pricing: no status webhook with pricing yet")
    for p in priced:
        billable = "billable" if p.billable else "free"
        print(f"{p.day}  {p.category:<15} {p.type:<22} {billable:<8} {p.count}")
    return 0


def live_report(config: Config, registry: TemplateRegistry | None) -> list[str]:
    """For ``bot check``: the variants Meta's live word stops or is about to re-categorize.

    Reads the store only if it exists already (a SQLite file that is there, or a MongoDB
    URL); an unreachable store is one line saying so, never an error of the check.
    """
    url = config.store.url
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not resolve(config, path).is_file():
            return []
    return asyncio.run(_live_report(config, registry))


async def _live_report(config: Config, registry: TemplateRegistry | None) -> list[str]:
    store = store_from_url(config.store.url, base_dir=config.base_dir)
    try:
        await store.open()
        view = await store.template_view()
    except BotError as exc:
        return [f"live template view: not read ({exc})"]
    finally:
        await store.close()
    lines = []
    for line, live in zip(status_lines(registry, view), _lives(registry, view), strict=True):
        if live is not None and (blocked_reason(live) or live.notice_category):
            lines.append(f"live: {line}")
    return lines


def _lives(registry: TemplateRegistry | None, view: TemplateView) -> list[Any]:
    """The live state of each line of :func:`status_lines`, in the same order."""
    keys = [
        (name, code)
        for name, template in sorted((registry.templates if registry else {}).items())
        for code in template.variants
    ]
    keys += [key for key in sorted(view.variants) if key not in set(keys)]
    return [view.variants.get(key) for key in keys]
