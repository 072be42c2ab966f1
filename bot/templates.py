"""The template registry: what Meta approved, which language variant to use, parameter rules.

A registry file (``flows/templates.yaml``) mirrors what WhatsApp Manager shows: each template's
category, status per language variant and text with ``{{1}}`` or ``{{name}}`` placeholders.
The framework only ever sends an APPROVED variant of a non-MARKETING template, with exactly the
parameters its body declares. Pure: no clock, no aiohttp, and no I/O here: reading and
checking the file lives in :mod:`bot._template_file`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
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
        from bot._template_file import load_registry  # lazy: that module imports this one

        return load_registry(path)

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


def check_file(path: Path) -> list[Finding]:
    """Every error and warning of a registry file, for ``bot check``."""
    from bot._template_file import check_file as check  # lazy: that module imports this one

    return check(path)


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
            return [f"template {name} takes {len(want)} parameter(s), {count} given"]
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
