"""Reading and checking a template registry file (``flows/templates.yaml``).

The YAML is read by the flow files' reader (:mod:`bot._yaml`: node trees that keep the
line of every mapping and key, scalars as text), then each entry is checked: every problem
becomes a :class:`~bot.findings.Finding` with file and line, so one run reports them all.
:meth:`bot.templates.TemplateRegistry.load` and :func:`bot.templates.check_file` are the
public ways in; this module imports the model from :mod:`bot.templates`, which imports
this one lazily.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from bot._template_policy import wording_problems
from bot._yaml import Marked, error_line, parse, plain
from bot.findings import Finding
from bot.templates import (
    _PLACEHOLDER,
    BODY_LIMIT,
    CATEGORIES,
    CATEGORY_ALIASES,
    HEADER_LIMIT,
    LANGUAGE,
    META_CATEGORIES,
    STATUSES,
    USES,
    Button,
    ParameterFormat,
    RegistryFileError,
    Template,
    TemplateRegistry,
    Variant,
    _fill,
    placeholders,
    status_note,
)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TEMPLATE_KEYS = (
    "name",
    "category",
    "use",
    "status",
    "parameter_format",
    "languages",
    "description",
    "examples",
)
_VARIANT_KEYS = ("body", "header", "buttons", "status")
_BUTTON_KEYS = ("type", "text", "url")


class _Collector:
    """Gathers findings for one file so that every problem is reported at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.findings: list[Finding] = []

    def error(self, line: int, key: str, message: str) -> None:
        self.findings.append(Finding(self.path, line, f"{key}: {message}", "error"))

    def warning(self, line: int, key: str, message: str) -> None:
        self.findings.append(Finding(self.path, line, f"{key}: {message}", "warning"))


def check_file(path: Path) -> list[Finding]:
    """Every error and warning of a registry file, for ``bot check``."""
    return _load(path)[1]


def load_registry(path: Path) -> TemplateRegistry:
    """Load a registry file; raise :class:`RegistryFileError` listing every error in it."""
    registry, findings = _load(path)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        listing = "\n".join(str(f) for f in errors)
        raise RegistryFileError(f"{path}: {len(errors)} problem(s)\n{listing}", findings)
    return registry


def _load(path: Path) -> tuple[TemplateRegistry, list[Finding]]:
    out = _Collector(path)
    templates: dict[str, Template] = {}
    try:
        node = parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        out.error(0, "file", f"cannot read the template registry ({exc}); check the path")
        return TemplateRegistry({}, str(path)), out.findings
    except yaml.YAMLError as exc:
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
        out.error(error_line(exc), "file", f"not valid YAML: {problem}")
        return TemplateRegistry({}, str(path)), out.findings
    duplicates: list[tuple[int, str]] = []
    data = plain(node, duplicates) if node is not None else None
    for line, key in duplicates:
        out.error(line, key, "duplicate key; the second one would silently win, remove one")
    for name, line, entry in _entries(data, out):
        template = _template(name, line, entry, out)
        if template is not None:
            templates[name] = template
    warnings = tuple(f for f in out.findings if f.severity == "warning")
    return TemplateRegistry(templates, str(path), warnings), out.findings


def _entries(data: Any, out: _Collector) -> Iterable[tuple[str, int, Any]]:
    """(name, line, entry) for each template, from a list or a mapping, under ``templates:``."""
    if data is None:
        return []
    if isinstance(data, Marked) and "templates" in data:
        for key in set(data) - {"templates"}:
            out.error(data.line_of(key), key, "unknown top-level key; list templates under it")
        line, data = data.line_of("templates"), data["templates"]
        if data is None:
            return []
    else:
        line = getattr(data, "line", 1)
    entries: list[tuple[str, int, Any]] = []
    seen: set[str] = set()
    if isinstance(data, Marked):
        items = [(name, data.line_of(name), entry) for name, entry in data.items()]
    elif isinstance(data, list):
        items = []
        for i, entry in enumerate(data):
            where = entry.line if isinstance(entry, Marked) else line
            name = entry.get("name") if isinstance(entry, Marked) else None
            if not isinstance(name, str) or not name:
                out.error(where, f"templates[{i}]", "each template needs a 'name'")
                continue
            items.append((name, where, entry))
    else:
        out.error(line, "templates", "must be a list of templates or a mapping name → template")
        return []
    for name, where, entry in items:
        if name in seen:
            out.error(where, name, "declared twice; keep one")
        seen.add(name)
        entries.append((name, where, entry))
    return entries


def _template(name: str, line: int, entry: Any, out: _Collector) -> Template | None:
    if not isinstance(entry, Marked):
        out.error(line, name, "must be a mapping with category, status and languages")
        return None
    before = len(out.findings)
    for key in entry:
        if key not in _TEMPLATE_KEYS:
            out.error(
                entry.line_of(key),
                f"{name}.{key}",
                f"unknown key; expected one of {', '.join(_TEMPLATE_KEYS)}",
            )
    if not re.fullmatch(r"[a-z0-9_]{1,512}", name):
        out.error(line, name, "template names are lowercase letters, digits and underscores")
    if "name" in entry and entry["name"] != name:
        out.error(entry.line_of("name"), f"{name}.name", "differs from the key it is filed under")
    category, use = _category(name, entry, out)
    status = entry.get("status")
    if status is not None and status not in STATUSES:
        out.error(
            entry.line_of("status"),
            f"{name}.status",
            f"{status!r} is not a template status; use one of {', '.join(sorted(STATUSES))}",
        )
    fmt = entry.get("parameter_format")
    if fmt is not None and fmt not in ("positional", "named"):
        out.error(
            entry.line_of("parameter_format"),
            f"{name}.parameter_format",
            "must be 'positional' ({{1}}) or 'named' ({{first_name}})",
        )
    languages = entry.get("languages")
    if not isinstance(languages, Marked) or not languages:
        out.error(
            entry.line_of("languages"),
            f"{name}.languages",
            "declare at least one language variant, e.g. 'en_US: {body: ...}'",
        )
        return None
    variants: dict[str, Variant] = {}
    shapes: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {}
    for code, raw in languages.items():
        key, vline = f"{name}.languages.{code}", languages.line_of(code)
        variant = _variant(code, raw, key, vline, status, out)
        if variant is not None:
            variants[code] = variant
            shapes[code] = (
                tuple(placeholders(variant.body)),
                tuple(placeholders(variant.header)),
                tuple(b.kind + ("+" if b.dynamic else "") for b in variant.buttons),
            )
    if not variants:
        return None
    first = next(iter(variants))
    body_params, header_params, _ = shapes[first]
    if fmt is None:
        fmt = "positional" if all(p.isdigit() for p in body_params + header_params) else "named"
    for code, (body, header, buttons) in shapes.items():
        vline, key = languages.line_of(code), f"{name}.languages.{code}"
        for part, params in (("body", body), ("header", header)):
            _check_placeholders(params, fmt, f"{key}.{part}", vline, out)
        if set(body) != set(body_params) or len(body) != len(body_params):
            out.error(
                vline,
                f"{key}.body",
                f"parameters {', '.join(body) or 'none'} differ from"
                f" {first}'s ({', '.join(body_params) or 'none'}); every variant takes"
                " the same parameters",
            )
        if set(header) != set(header_params):
            out.error(vline, f"{key}.header", f"header parameters differ from {first}'s")
        if buttons != shapes[first][2]:
            out.error(
                vline,
                f"{key}.buttons",
                f"buttons differ from {first}'s; every variant"
                " has the same buttons in the same order",
            )
    for code, variant in variants.items():
        if variant.status != "APPROVED":
            out.warning(
                languages.line_of(code),
                f"{name}.languages.{code}",
                status_note(name, variant.status, [code]),
            )
    if category is None or any(f.severity == "error" for f in out.findings[before:]):
        return None
    if fmt == "positional":
        body_params = tuple(sorted(body_params, key=int))
        header_params = tuple(sorted(header_params, key=int))
    parameter_format: ParameterFormat = "named" if fmt == "named" else "positional"
    template = Template(
        name, category, parameter_format, body_params, variants, header_params, line, use
    )
    for code, part, message in wording_problems(template):
        out.warning(languages.line_of(code), f"{name}.languages.{code}.{part}", message)
    return template


def _category(name: str, entry: Marked, out: _Collector) -> tuple[str | None, str]:
    """Meta's category and the declared use; a legacy ``category: ALERT`` is UTILITY + ALERT."""
    raw, raw_use = entry.get("category"), entry.get("use")
    line, key = entry.line_of("category"), f"{name}.category"
    if not isinstance(raw, str) or not raw:
        out.error(line, key, f"missing; use one of {', '.join(sorted(META_CATEGORIES))}")
        return None, ""
    category = CATEGORY_ALIASES.get(raw.upper(), raw.upper())
    if category not in CATEGORIES:
        out.error(
            line,
            key,
            f"{raw!r} is not a template category; use UTILITY (with 'use: ' one of"
            f" {', '.join(sorted(USES))}) or AUTHENTICATION (ALERT_UPDATE means ALERT)",
        )
        return None, ""
    use = ""
    if category in USES:
        category, use = "UTILITY", category
    if raw_use is not None:
        ukey, uline = f"{name}.use", entry.line_of("use")
        declared = CATEGORY_ALIASES.get(str(raw_use).upper(), str(raw_use).upper())
        if declared not in USES:
            uses = ", ".join(sorted(USES))
            out.error(uline, ukey, f"{raw_use!r} is not a use; use one of {uses}")
            return None, ""
        if category != "UTILITY":
            out.error(uline, ukey, f"only a UTILITY template has a use; this one is {category}")
            return None, ""
        if use and declared != use:
            out.error(uline, ukey, f"differs from the category {use}; give the use once")
            return None, ""
        use = declared
    if category == "MARKETING":
        out.warning(
            line,
            key,
            "MARKETING: windowbot never sends it. Templates go out only to follow up on"
            " something the user started, and promotions, surveys, rating requests and"
            " subscriptions are not allowed there; a flow that names it as a fallback is an"
            " error. Use a UTILITY template (e.g. use: ALERT) instead",
        )
    return category, use


def _variant(
    code: str, raw: Any, key: str, line: int, status: Any, out: _Collector
) -> Variant | None:
    if not LANGUAGE.match(code):
        out.error(
            line,
            key,
            "a language code looks like 'en' or 'pt_BR' (language, underscore,"
            " country), as in WhatsApp Manager",
        )
        return None
    if isinstance(raw, str):
        raw = Marked(body=raw)
        raw.line, raw.key_lines = line, {}
    if not isinstance(raw, Marked):
        out.error(line, key, "must be the body text or a mapping with body/header/buttons")
        return None
    for k in raw:
        if k not in _VARIANT_KEYS:
            out.error(
                raw.line_of(k),
                f"{key}.{k}",
                f"unknown key; expected one of {', '.join(_VARIANT_KEYS)}",
            )
    body, header = raw.get("body"), raw.get("header") or ""
    if not isinstance(body, str) or not body.strip():
        out.error(raw.line_of("body"), f"{key}.body", "every variant needs its body text")
        return None
    if not isinstance(header, str):
        out.error(raw.line_of("header"), f"{key}.header", "only a text header is supported")
        header = ""
    if len(_fill(body, {})) > BODY_LIMIT:
        out.error(raw.line_of("body"), f"{key}.body", f"over {BODY_LIMIT} characters")
    if len(_PLACEHOLDER.sub("", header)) > HEADER_LIMIT:
        out.error(raw.line_of("header"), f"{key}.header", f"over {HEADER_LIMIT} characters")
    if len(placeholders(header)) > 1:
        out.error(raw.line_of("header"), f"{key}.header", "a text header takes one parameter")
    own_status = raw.get("status", status)
    if own_status is None:
        out.error(
            line,
            key,
            "no status: set 'status: APPROVED' (or PENDING...) on the template"
            " or the variant, as WhatsApp Manager shows it",
        )
        return None
    if own_status not in STATUSES:
        if "status" in raw:
            out.error(raw.line_of("status"), f"{key}.status", f"{own_status!r} is not a status")
        return None
    buttons = _buttons(raw.get("buttons"), f"{key}.buttons", raw.line_of("buttons"), out)
    return Variant(code, body, own_status, header, buttons)


def _buttons(raw: Any, key: str, line: int, out: _Collector) -> tuple[Button, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > 10:
        out.error(line, key, "must be a list of at most 10 buttons")
        return ()
    buttons: list[Button] = []
    for i, item in enumerate(raw):
        bkey = f"{key}[{i}]"
        if not isinstance(item, Marked):
            out.error(line, bkey, "must be a mapping with type and text")
            continue
        bline = item.line
        for k in item:
            if k not in _BUTTON_KEYS:
                out.error(item.line_of(k), f"{bkey}.{k}", "unknown key; expected type, text, url")
        kind, text, url = item.get("type"), item.get("text"), item.get("url") or ""
        if not isinstance(text, str) or not 0 < len(text) <= 25:
            out.error(bline, f"{bkey}.text", "a button needs a text of 1 to 25 characters")
        if kind == "quick_reply":
            buttons.append(Button("quick_reply", str(text)))
        elif kind == "url":
            if not isinstance(url, str) or not re.match(r"https?://", url):
                out.error(bline, f"{bkey}.url", "a url button needs an http(s) url")
            elif "{{" in url and not url.endswith("{{1}}"):
                out.error(bline, f"{bkey}.url", "only a {{1}} suffix may be variable")
            buttons.append(Button("url", str(text), str(url)))
        else:
            out.error(bline, f"{bkey}.type", "must be quick_reply or url")
    return tuple(buttons)


def _check_placeholders(
    params: tuple[str, ...], fmt: str, key: str, line: int, out: _Collector
) -> None:
    if fmt == "positional":
        if not all(p.isdigit() for p in params):
            out.error(
                line,
                key,
                "positional templates use {{1}}, {{2}}...; set 'parameter_format: named' for names",
            )
        elif sorted(int(p) for p in params) != list(range(1, len(params) + 1)):
            out.error(line, key, "placeholders must be {{1}}..{{n}} without gaps")
    elif not all(_NAME.match(p) for p in params):
        out.error(
            line,
            key,
            "named parameters are lowercase letters, digits and underscores,"
            " starting with a letter",
        )
