"""The template registry: what Meta approved, which language variant to use, parameter rules.

A registry file (``flows/templates.yaml``) mirrors what WhatsApp Manager shows: each template's
category, status per language variant and text with ``{{1}}`` or ``{{name}}`` placeholders.
The framework only ever sends an APPROVED variant of a non-MARKETING template, with exactly the
parameters its body declares. Pure: no I/O beyond reading the file, no clock, no aiohttp.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bot.errors import TemplateError
from bot.findings import Finding
from bot.models import JSON, TemplateCall, UserRecord

#: The ten categories this product allows (see WHATSAPP.md); all are utility-type.
CATEGORIES = frozenset(
    {
        "ACCOUNT_UPDATE",
        "PAYMENT_UPDATE",
        "PERSONAL_FINANCE_UPDATE",
        "SHIPPING_UPDATE",
        "RESERVATION_UPDATE",
        "APPOINTMENT_UPDATE",
        "TRANSPORTATION_UPDATE",
        "TICKET_UPDATE",
        "ISSUE_RESOLUTION",
        "ALERT",
        "UTILITY",
        "AUTHENTICATION",
    }
)
#: Older API spellings, mapped to the name the registry keeps.
CATEGORY_ALIASES = {"ALERT_UPDATE": "ALERT"}
STATUSES = frozenset(
    {
        "APPROVED",
        "PENDING",
        "REJECTED",
        "PAUSED",
        "DISABLED",
        "IN_APPEAL",
        "FLAGGED",
        "REINSTATED",
        "PENDING_DELETION",
        "DELETED",
        "LIMIT_EXCEEDED",
        "ARCHIVED",
        "LOCKED",
    }
)
_CHAIN_POLICIES = frozenset({"", "auto", "user", "chain"})  # "pick per user", for check_call
BODY_LIMIT = 1024  # characters of the rendered body
HEADER_LIMIT = 60  # characters of the rendered text header

_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")  # "en", "pt_BR"; Meta also has "fil"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_WHITESPACE = re.compile(r"\s+")

ParameterFormat = Literal["positional", "named"]


@dataclass(frozen=True, slots=True)
class Button:
    """A template button: ``quick_reply`` (payload given at send time) or ``url``."""

    kind: Literal["quick_reply", "url"]
    text: str
    url: str = ""

    @property
    def dynamic(self) -> bool:
        """Whether a send must supply a parameter (a url button with ``{{1}}`` in its url)."""
        return self.kind == "url" and "{{" in self.url


@dataclass(frozen=True, slots=True)
class Variant:
    """One language variant of a template; Meta approves each separately."""

    language: str
    body: str
    status: str
    header: str = ""
    buttons: tuple[Button, ...] = ()


@dataclass(frozen=True, slots=True)
class Template:
    """A template as declared in the registry.

    ``parameters`` are the body's placeholders in order (``"1", "2"`` or names);
    ``header_parameters`` likewise for a text header.
    """

    name: str
    category: str
    parameter_format: ParameterFormat
    parameters: tuple[str, ...]
    variants: Mapping[str, Variant]
    header_parameters: tuple[str, ...] = ()
    line: int = 0

    def status(self, language: str) -> str | None:
        """The status of the ``language`` variant, ``None`` if there is no such variant."""
        variant = self.variants.get(language)
        return variant.status if variant else None

    def approved(self, language: str) -> bool:
        """Whether the ``language`` variant exists and is APPROVED."""
        return self.status(language) == "APPROVED"

    def render(self, language: str, call: TemplateCall) -> str:
        """The body text the user would read (for ``bot chat`` and logs)."""
        values = _values(self, call, self.parameters, call.parameters, "body", BODY_LIMIT)
        return _fill(self.variants[language].body, values)


@dataclass(frozen=True, slots=True)
class TemplateRegistry:
    """Every declared template by name, plus the warnings found while loading."""

    templates: Mapping[str, Template]
    path: str = ""
    findings: tuple[Finding, ...] = field(default=())

    def __contains__(self, name: object) -> bool:
        return name in self.templates

    def get(self, name: str) -> Template | None:
        """The template called ``name``, or ``None``."""
        return self.templates.get(name)

    @classmethod
    def load(cls, path: Path) -> TemplateRegistry:
        """Load a registry file; raise :class:`RegistryFileError` listing every error in it."""
        registry, findings = _load(path)
        errors = [f for f in findings if f.severity == "error"]
        if errors:
            listing = "\n".join(str(f) for f in errors)
            raise RegistryFileError(f"{path}: {len(errors)} problem(s)\n{listing}", findings)
        return registry

    def check(self) -> list[Finding]:
        """The warnings found at load (unapproved variants); errors make :meth:`load` raise."""
        return list(self.findings)

    def check_call(
        self,
        name: str,
        language_policy: str | Sequence[str] = "",
        params: int | Sequence[str] | Mapping[str, str] | None = None,
    ) -> list[str]:
        """Problems with a flow's fallback declaration, as readable strings.

        Args:
            name: the template name.
            language_policy: a fixed language code; or ``""``/``"auto"``/``"user"`` when the
                variant is chosen per user; or the languages in use (a missing one warns).
            params: the count or the values (positional), the names or a name → value
                mapping (named); ``None`` skips the parameter check.

        Returns:
            Errors, and warnings prefixed ``"warning: "``; empty when all is well.
        """
        template = self.templates.get(name)
        if template is None:
            known = ", ".join(sorted(self.templates)) or "none"
            return [f"template {name!r} is not in {self.path or 'the registry'} (known: {known})"]
        out: list[str] = []
        if isinstance(language_policy, str) and language_policy not in _CHAIN_POLICIES:
            language_policy = normalize_language(language_policy)
            status = template.status(language_policy)
            if status is None:
                have = ", ".join(sorted(template.variants))
                out.append(f"template {name} has no {language_policy} variant (it has {have})")
            elif status != "APPROVED":
                note = status_note(name, status, [language_policy])
                out.append(f"warning: {note}" if status == "PENDING" else note)
        else:
            by_status: dict[str, list[str]] = {}
            for language, variant in sorted(template.variants.items()):
                by_status.setdefault(variant.status, []).append(language)
            for status, languages in sorted(by_status.items()):
                if status == "APPROVED":
                    continue
                note = status_note(name, status, languages)
                if status == "PENDING" or "APPROVED" in by_status:
                    out.append(f"warning: {note}")
                else:
                    out.append(note)
            for language in [] if isinstance(language_policy, str) else language_policy:
                if language not in template.variants:
                    out.append(
                        f"warning: template {name} has no {language} variant; those users get"
                        " the next language of their chain"
                    )
        if params is not None:
            out.extend(_param_problems(template, params))
        return out


class RegistryFileError(TemplateError):
    """A registry file has errors; ``findings`` lists them all with file and line."""

    def __init__(self, message: str, findings: Sequence[Finding]) -> None:
        super().__init__(message)
        self.findings = list(findings)


def status_note(name: str, status: str, languages: Sequence[str]) -> str:
    """Why a template in ``status`` is not sent, and what to do about it."""
    where = f"template {name} ({', '.join(languages)}) is {status}"
    if status == "PENDING":
        return f"{where}: approval can take up to 4 business days; it is not sent until then"
    return f"{where}: it is never sent; fix it in WhatsApp Manager or use another template"


def _param_problems(
    template: Template, params: int | Sequence[str] | Mapping[str, str]
) -> list[str]:
    want, name = template.parameters, template.name
    if template.parameter_format == "positional":
        if isinstance(params, Mapping):
            return [f"template {name} is positional: give {len(want)} value(s) in order, not names"]
        count = params if isinstance(params, int) else len(params)
        if count != len(want):
            return [f"template {name} takes {len(want)} parameter(s), the flow gives {count}"]
        return []
    if isinstance(params, int):
        return [f"template {name} takes named parameters {', '.join(want)}; give them by name"]
    missing, extra = set(want) - set(params), set(params) - set(want)
    out = []
    if missing:
        out.append(f"template {name}: missing parameter(s) {', '.join(sorted(missing))}")
    if extra:
        out.append(
            f"template {name}: unknown parameter(s) {', '.join(sorted(extra))}"
            f" (it takes {', '.join(want)})"
        )
    return out


# --- language choice -----------------------------------------------------------------------


def normalize_language(code: str) -> str:
    """``"pt-br"``, ``"PT_BR"`` → ``"pt_BR"``; ``"EN"`` → ``"en"``."""
    lang, _, country = code.strip().replace("-", "_").partition("_")
    return f"{lang.lower()}_{country.upper()}" if country else lang.lower()


def country_language(wa_id: str, country_languages: Mapping[str, str]) -> str | None:
    """The language mapped to the longest calling-code prefix of ``wa_id``, if any."""
    digits = wa_id.lstrip("+")
    for size in range(min(len(digits), 4), 0, -1):
        language = country_languages.get(digits[:size])
        if language:
            return language
    return None


def language_chain(
    record: UserRecord, *, country_languages: Mapping[str, str], default: str
) -> list[str]:
    """The candidates in order: stored preference, country of the number, default."""
    chain = [record.language, country_language(record.wa_id, country_languages) or "", default]
    out: list[str] = []
    for code in chain:
        if code and normalize_language(code) not in out:
            out.append(normalize_language(code))
    return out


def choose_language(
    record: UserRecord,
    template: Template,
    *,
    country_languages: Mapping[str, str],
    default: str,
) -> str | None:
    """The first APPROVED variant along the user's language chain, ``None`` if none fits.

    For each candidate the exact code is tried first, then the same language without or with
    another country: ``pt_PT`` → ``pt`` → ``pt_BR``, ``pt`` → ``pt_BR`` (other countries in
    alphabetical order). Only then does the chain move to the next candidate: a Brazilian
    text serves a Portuguese reader better than the default language does. An unapproved
    variant is never chosen.
    """
    for code in language_chain(record, country_languages=country_languages, default=default):
        base = code.partition("_")[0]
        siblings = sorted(v for v in template.variants if v.partition("_")[0] == base)
        for candidate in [code, base, *siblings]:
            if template.approved(candidate):
                return candidate
    return None


# --- parameters and the Cloud API body -----------------------------------------------------


def clean_parameter(value: str, *, limit: int, name: str = "") -> str:
    """Normalise one parameter text the way WhatsApp accepts it, or refuse it.

    WhatsApp refuses parameters holding newlines, tabs or more than four consecutive spaces,
    so every run of whitespace becomes one space and the ends are stripped.

    Raises:
        TemplateError: the text is empty after that, or longer than ``limit``.
    """
    label = f"template parameter {name}" if name else "template parameter"
    text = _WHITESPACE.sub(" ", str(value)).strip()
    if not text:
        raise TemplateError(
            f"{label} is empty: WhatsApp refuses empty parameters; give it a"
            " value or a default in the flow"
        )
    if len(text) > limit:
        raise TemplateError(f"{label} is {len(text)} characters, over the limit of {limit}")
    return text


def build_template_message(registry: TemplateRegistry, call: TemplateCall, language: str) -> JSON:
    """Meta's ``{"type": "template", ...}`` body for ``call`` in the ``language`` variant.

    Raises:
        TemplateError: unknown template or variant, parameters that do not match the
            template exactly, empty or too long parameters. Nothing has been sent then.
    """
    template = registry.get(call.name)
    if template is None:
        raise TemplateError(f"template {call.name!r} is not in the registry")
    variant = template.variants.get(language)
    if variant is None:
        raise TemplateError(f"template {call.name} has no {language} variant")
    named = template.parameter_format == "named"
    components: list[JSON] = []
    header = _values(
        template, call, template.header_parameters, call.header, "header", HEADER_LIMIT
    )
    body = _values(template, call, template.parameters, call.parameters, "body", BODY_LIMIT)
    if len(_fill(variant.header, header)) > HEADER_LIMIT:
        raise TemplateError(f"template {call.name}: header over {HEADER_LIMIT} characters")
    if len(_fill(variant.body, body)) > BODY_LIMIT:
        raise TemplateError(
            f"template {call.name}: body over {BODY_LIMIT} characters; shorten the parameters"
        )
    for kind, values in (("header", header), ("body", body)):
        if values:
            params = [_text_param(k, v, named) for k, v in values.items()]
            components.append({"type": kind, "parameters": params})
    if len(call.buttons) > len(variant.buttons):
        raise TemplateError(
            f"template {call.name} has {len(variant.buttons)} button(s), the"
            f" call gives {len(call.buttons)} button parameter(s)"
        )
    for index, button in enumerate(variant.buttons):
        given = call.buttons[index] if index < len(call.buttons) else ""
        if button.kind == "quick_reply" and given:
            payload: JSON = {"type": "payload", "payload": given}
            components.append(
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": str(index),
                    "parameters": [payload],
                }
            )
        elif button.dynamic:
            text = clean_parameter(given, limit=2000, name=f"of url button {index}")
            components.append(
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": str(index),
                    "parameters": [{"type": "text", "text": text}],
                }
            )
        elif given:
            raise TemplateError(f"template {call.name}: button {index} takes no parameter")
    message: JSON = {"name": call.name, "language": {"code": language}}
    if components:
        message["components"] = components
    return {"type": "template", "template": message}


def _text_param(name: str, value: str, named: bool) -> JSON:
    param: JSON = {"type": "text", "text": value}
    if named:
        param["parameter_name"] = name
    return param


def _values(
    template: Template,
    call: TemplateCall,
    want: tuple[str, ...],
    given: Sequence[str] | Mapping[str, str],
    part: str,
    limit: int,
) -> dict[str, str]:
    """Map placeholder → cleaned text, insisting on exactly the declared parameters."""
    where = f"template {template.name} {part}"
    if isinstance(given, Mapping):
        if template.parameter_format != "named" and given:
            raise TemplateError(f"{where} is positional: pass {len(want)} value(s) in order")
        missing, extra = set(want) - set(given), set(given) - set(want)
        if missing or extra:
            raise TemplateError(
                f"{where} takes {', '.join(want) or 'no parameters'}; missing:"
                f" {', '.join(sorted(missing)) or '-'}, unknown:"
                f" {', '.join(sorted(extra)) or '-'}"
            )
        pairs = [(name, given[name]) for name in want]
    else:
        if template.parameter_format == "named" and given:
            raise TemplateError(f"{where} takes named parameters {', '.join(want)}")
        if len(given) != len(want):
            raise TemplateError(f"{where} takes {len(want)} parameter(s), got {len(given)}")
        pairs = list(zip(want, given, strict=True))
    return {name: clean_parameter(value, limit=limit, name=name) for name, value in pairs}


def _fill(text: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def placeholders(text: str) -> list[str]:
    """The placeholder names of ``text`` in order of first appearance."""
    out: list[str] = []
    for match in _PLACEHOLDER.finditer(text):
        if match.group(1) not in out:
            out.append(match.group(1))
    return out


# --- loading the registry file -------------------------------------------------------------

_TEMPLATE_KEYS = ("name", "category", "status", "parameter_format", "languages", "description")
_VARIANT_KEYS = ("body", "header", "buttons", "status")
_BUTTON_KEYS = ("type", "text", "url")


class _Marked(dict[str, Any]):
    """A YAML mapping that remembers its own line and the line of each key."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _LineLoader(yaml.SafeLoader):
    """Safe YAML with line marks; keys and scalars stay text (``no`` is Norwegian, not False)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Marked:
    loader.flatten_mapping(node)
    out = _Marked()
    out.line, out.key_lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else str(key_node)
        if key in out:
            loader.duplicates.append((key_node.start_mark.line + 1, key))
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_text(loader: _LineLoader, node: yaml.ScalarNode) -> str:
    return str(node.value)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
for _tag in ("bool", "int", "float", "timestamp"):
    _LineLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _construct_text)


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


def _load(path: Path) -> tuple[TemplateRegistry, list[Finding]]:
    out = _Collector(path)
    templates: dict[str, Template] = {}
    try:
        loader = _LineLoader(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        out.error(0, "file", f"cannot read the template registry ({exc}); check the path")
        return TemplateRegistry({}, str(path)), out.findings
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        out.error(mark.line + 1 if mark else 0, "file", f"not valid YAML: {exc.problem}")
        return TemplateRegistry({}, str(path)), out.findings
    finally:
        loader.dispose()
    for line, key in loader.duplicates:
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
    if isinstance(data, _Marked) and "templates" in data:
        for key in set(data) - {"templates"}:
            out.error(data.line_of(key), key, "unknown top-level key; list templates under it")
        line, data = data.line_of("templates"), data["templates"]
        if data is None:
            return []
    else:
        line = getattr(data, "line", 1)
    entries: list[tuple[str, int, Any]] = []
    seen: set[str] = set()
    if isinstance(data, _Marked):
        items = [(name, data.line_of(name), entry) for name, entry in data.items()]
    elif isinstance(data, list):
        items = []
        for i, entry in enumerate(data):
            where = entry.line if isinstance(entry, _Marked) else line
            name = entry.get("name") if isinstance(entry, _Marked) else None
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
    if not isinstance(entry, _Marked):
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
    category = _category(name, entry, out)
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
    if not isinstance(languages, _Marked) or not languages:
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
    return Template(name, category, parameter_format, body_params, variants, header_params, line)


def _category(name: str, entry: _Marked, out: _Collector) -> str | None:
    raw = entry.get("category")
    line, key = entry.line_of("category"), f"{name}.category"
    if not isinstance(raw, str) or not raw:
        out.error(line, key, f"missing; use one of {', '.join(sorted(CATEGORIES))}")
        return None
    category = CATEGORY_ALIASES.get(raw.upper(), raw.upper())
    if category == "MARKETING":
        out.error(
            line,
            key,
            "MARKETING templates are refused: windowbot sends templates only to"
            " follow up on something the user started, and promotions, surveys, rating"
            " requests and subscriptions are not allowed there; pick one of the utility"
            " categories (e.g. ALERT, APPOINTMENT_UPDATE) or remove it",
        )
        return None
    if category not in CATEGORIES:
        out.error(
            line,
            key,
            f"{raw!r} is not a template category; use one of"
            f" {', '.join(sorted(CATEGORIES))} (ALERT_UPDATE means ALERT)",
        )
        return None
    return category


def _variant(
    code: str, raw: Any, key: str, line: int, status: Any, out: _Collector
) -> Variant | None:
    if not _LANGUAGE.match(code):
        out.error(
            line,
            key,
            "a language code looks like 'en' or 'pt_BR' (language, underscore,"
            " country), as in WhatsApp Manager",
        )
        return None
    if isinstance(raw, str):
        raw = _Marked(body=raw)
        raw.line, raw.key_lines = line, {}
    if not isinstance(raw, _Marked):
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
        if not isinstance(item, _Marked):
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
