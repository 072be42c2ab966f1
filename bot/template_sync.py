"""``bot templates pull | push | status``: keep ``templates.yaml`` in step with Meta.

``pull`` reads the account's templates and updates the file in place with ruamel.yaml's
round-trip mode, so comments, key order and quoting survive; it adds what Meta has and the
file lacks (never a MARKETING template windowbot would not send), updates statuses and
categories, and lists what only the file has. ``push`` submits the variants Meta lacks, with
the ``example`` values review needs, after the policy checks of ``bot check``. ``status`` shows
the live view the webhooks built next to the file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from bot._template_policy import wording_problems
from bot.live_templates import blocked_reason
from bot.models import JSON
from bot.store.base import TemplateView
from bot.templates import USES, Template, TemplateRegistry, placeholders


@dataclass(slots=True)
class PullReport:
    """What a pull found; ``lines`` read like a diff (``+`` new, ``~`` changed, ``!`` local)."""

    lines: list[str] = field(default_factory=list)
    changed: bool = False  # the file and Meta disagree (so ``--check`` fails)


def round_trip_yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, order and quotes are kept
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long body
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def variant_of(item: Mapping[str, Any]) -> CommentedMap:
    """A file variant (body, header, buttons) from one of Meta's template items."""
    out = CommentedMap()
    buttons = []
    for component in item.get("components") or []:
        kind = str(component.get("type", "")).upper()
        if kind == "BODY":
            out["body"] = str(component.get("text", ""))
        elif kind == "HEADER" and str(component.get("format", "TEXT")).upper() == "TEXT":
            out["header"] = str(component.get("text", ""))
        elif kind == "BUTTONS":
            for button in component.get("buttons") or []:
                btype = str(button.get("type", "")).lower()
                entry = {"type": btype, "text": str(button.get("text", ""))}
                if btype == "url":
                    entry["url"] = str(button.get("url", ""))
                buttons.append(entry)
    if buttons:
        out["buttons"] = buttons
    return out


def pull(path: Path, remote: Sequence[JSON], *, write: bool = True) -> PullReport:
    """Bring ``path`` in step with ``remote`` (Meta's items); write it unless ``write`` is off."""
    yaml = round_trip_yaml()
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    data = yaml.load(text) if text.strip() else None
    if data is None:
        data = CommentedMap(templates=CommentedMap())
    if data.get("templates") is None:
        data["templates"] = CommentedMap()
    entries = data["templates"]
    report = PullReport()
    by_name: dict[str, list[JSON]] = {}
    for item in remote:
        by_name.setdefault(str(item.get("name", "")), []).append(item)
    for name, items in by_name.items():
        entry = find_entry(entries, name)
        category = str(items[0].get("category", "")).upper()
        if entry is None:
            if category == "MARKETING":
                report.lines.append(f"  {name}: MARKETING at Meta, not added (never sent)")
                continue
            entry = _new_entry(name, items)
            if isinstance(entries, list):
                entries.append(entry)
            else:
                entries[name] = entry
            langs = ", ".join(str(i.get("language")) for i in items)
            report.lines.append(f"+ {name} ({langs}): new, {category}")
            report.changed = True
            continue
        _update(entry, name, items, report)
    for name, entry in _entries(entries):
        remote_codes = {str(i.get("language")) for i in by_name.get(name, [])}
        for code in entry.get("languages") or {}:
            if code not in remote_codes:
                report.lines.append(
                    f"! {name} ({code}): only in the file; submit it with `bot templates push`"
                )
                report.changed = True
    if write and report.changed:
        buffer = io.StringIO()
        yaml.dump(data, buffer)
        path.write_text(buffer.getvalue(), encoding="utf-8")
    return report


def _entries(entries: Any) -> list[tuple[str, Any]]:
    if isinstance(entries, list):
        return [(str(e.get("name")), e) for e in entries if isinstance(e, dict)]
    return [(str(k), v) for k, v in entries.items() if isinstance(v, dict)]


def find_entry(entries: Any, name: str) -> Any:
    return next((e for n, e in _entries(entries) if n == name), None)


def _new_entry(name: str, items: Sequence[JSON]) -> CommentedMap:
    entry = CommentedMap()
    entry["category"] = str(items[0].get("category", "UTILITY")).upper()
    statuses = {str(i.get("status", "")).upper() for i in items}
    if len(statuses) == 1:
        entry["status"] = statuses.pop()
    entry["parameter_format"] = str(items[0].get("parameter_format") or "positional").lower()
    languages = CommentedMap()
    for item in items:
        variant = variant_of(item)
        if "status" not in entry:
            variant["status"] = str(item.get("status", "")).upper()
        languages[str(item.get("language"))] = variant
    entry["languages"] = languages
    return entry


def _update(entry: Any, name: str, items: Sequence[JSON], report: PullReport) -> None:
    meta_category = str(items[0].get("category", "")).upper()
    file_category = str(entry.get("category", "")).upper()
    if file_category in USES or file_category == "ALERT_UPDATE":  # a legacy file: keep the use
        if meta_category != "UTILITY":
            entry.insert(list(entry).index("category") + 1, "use", file_category)
            entry["category"] = meta_category
            report.lines.append(f"~ {name}: category UTILITY → {meta_category}")
            report.changed = True
    elif meta_category and file_category != meta_category:
        entry["category"] = meta_category
        report.lines.append(f"~ {name}: category {file_category} → {meta_category}")
        report.changed = True
    languages = entry.get("languages")
    if languages is None:
        languages = entry["languages"] = CommentedMap()
    for item in items:
        code, status = str(item.get("language")), str(item.get("status", "")).upper()
        variant = languages.get(code)
        if variant is None:
            new = variant_of(item)
            new["status"] = status
            languages[code] = new
            report.lines.append(f"+ {name} ({code}): new variant, {status}")
            report.changed = True
            continue
        own = variant.get("status") if isinstance(variant, dict) else None
        current = str(own or entry.get("status", "")).upper()
        if current == status:
            continue
        if own is not None or entry.get("status") is None:
            variant["status"] = status
        elif isinstance(variant, str):
            languages[code] = CommentedMap(body=variant, status=status)
        else:
            variant["status"] = status
        reason = str(item.get("rejected_reason") or "")
        why = f" ({reason})" if reason and reason != "NONE" else ""
        report.lines.append(f"~ {name} ({code}): status {current} → {status}{why}")
        report.changed = True


# --- push -----------------------------------------------------------------------------------


def submission(template: Template, language: str, examples: Mapping[str, str]) -> JSON:
    """The ``POST /{waba_id}/message_templates`` body for one variant, with examples."""
    variant = template.variants[language]
    named = template.parameter_format == "named"

    def sample(name: str) -> str:
        return examples.get(name) or (name.replace("_", " ") if named else f"sample {name}")

    components: list[JSON] = []
    if variant.header:
        header: JSON = {"type": "HEADER", "format": "TEXT", "text": variant.header}
        params = placeholders(variant.header)
        if params and named:
            header["example"] = {
                "header_text_named_params": [
                    {"param_name": p, "example": sample(p)} for p in params
                ]
            }
        elif params:
            header["example"] = {"header_text": [sample(p) for p in params]}
        components.append(header)
    body: JSON = {"type": "BODY", "text": variant.body}
    params = placeholders(variant.body)
    if params and named:
        body["example"] = {
            "body_text_named_params": [{"param_name": p, "example": sample(p)} for p in params]
        }
    elif params:
        ordered = sorted(params, key=int)
        body["example"] = {"body_text": [[sample(p) for p in ordered]]}
    components.append(body)
    if variant.buttons:
        buttons: list[JSON] = []
        for button in variant.buttons:
            if button.kind == "url":
                item: JSON = {"type": "URL", "text": button.text, "url": button.url}
                if button.dynamic:
                    item["example"] = [button.url.replace("{{1}}", "example")]
                buttons.append(item)
            else:
                buttons.append({"type": "QUICK_REPLY", "text": button.text})
        components.append({"type": "BUTTONS", "buttons": buttons})
    return {
        "name": template.name,
        "language": language,
        "category": template.category,
        "parameter_format": template.parameter_format.upper(),
        "components": components,
    }


def to_push(
    registry: TemplateRegistry, remote: Sequence[JSON], names: Sequence[str]
) -> tuple[list[tuple[Template, str]], list[str]]:
    """The variants to submit, and why others are not (unknown name, MARKETING, wording)."""
    have = {(str(i.get("name")), str(i.get("language"))) for i in remote}
    refused: list[str] = []
    for name in names:
        if name not in registry:
            refused.append(f"{name}: not in {registry.path or 'the registry'}")
    chosen = [registry.templates[n] for n in (names or registry.templates) if n in registry]
    out: list[tuple[Template, str]] = []
    for template in chosen:
        missing = [code for code in template.variants if (template.name, code) not in have]
        if not missing:
            continue
        if template.category == "MARKETING":
            refused.append(f"{template.name}: MARKETING, never pushed (windowbot never sends it)")
            continue
        problems = {code: msg for code, _, msg in wording_problems(template)}
        for code in missing:
            if code in problems:
                refused.append(f"{template.name} ({code}): not pushed: {problems[code]}")
            else:
                out.append((template, code))
    return out, refused


# --- status ---------------------------------------------------------------------------------


def status_lines(registry: TemplateRegistry | None, view: TemplateView) -> list[str]:
    """One line per variant: the file's status and category next to Meta's live word."""
    lines = []
    seen: set[tuple[str, str]] = set()
    for name, template in sorted((registry.templates if registry else {}).items()):
        for code, variant in template.variants.items():
            seen.add((name, code))
            live = view.variants.get((name, code))
            lines.append(
                f"{name} ({code}): file {variant.status} {template.category}"
                f"{'/' + template.use if template.use else ''}; {_live(live)}"
            )
    for (name, code), live in sorted(view.variants.items()):
        if (name, code) not in seen:
            lines.append(f"{name} ({code}): not in the file; {_live(live)}")
    return lines


def _live(live: Any) -> str:
    if live is None:
        return "Meta: no webhook yet"
    parts = [f"Meta: {live.status or '-'}", live.category or ""]
    blocked = blocked_reason(live)
    if blocked:
        parts.append(f"(not sent: {blocked})")
    if live.notice_category:
        parts.append(f"(becomes {live.notice_category} at {live.notice_effective_at})")
    return " ".join(p for p in parts if p)
