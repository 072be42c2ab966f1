"""What a utility template may not say: Meta's rules, checked against the template's wording.

A utility template follows up on something the user started (its *use*, one of the ten in
:data:`bot.templates.USES`). Meta never allows promotions, product or marketing surveys,
recurring content or subscriptions, or requests to rate or review in one, and re-categorizes
such a template as MARKETING, which windowbot never sends. The check here reads the text for
words that usually mean one of those; it cannot know intent, so each finding is a warning
that names the rule and the words it matched, never a verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.templates import Template


@dataclass(frozen=True, slots=True)
class Rule:
    """One of Meta's rules for utility templates and the words that usually break it."""

    what: str
    rule: str
    words: re.Pattern[str]


def _words(*alternatives: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


RULES = (
    Rule(
        "a promotion",
        "utility templates must not promote products, offers or sales",
        _words(
            r"\d+\s?% off",
            "discount",
            "sale",
            "special offer",
            "promo",
            "promo code",
            "promotion",
            "coupon",
            "buy now",
            "shop now",
            "limited time",
            "free gift",
            "desconto",
            "promoção",
            "cupom",
            "descuento",
            "promoción",
            "cupón",
            "oferta especial",
        ),
    ),
    Rule(
        "a survey",
        "utility templates must not carry product or marketing surveys",
        _words("survey", "questionnaire", "pesquisa de satisfação", "encuesta"),
    ),
    Rule(
        "a subscription",
        "utility templates must not carry recurring content or subscription messaging",
        _words(
            "subscribe",
            "subscription",
            "newsletter",
            "weekly tips",
            "daily tips",
            "assine",
            "assinatura",
            "suscríbete",
            "suscripción",
            "boletín",
        ),
    ),
    Rule(
        "a rating request",
        "utility templates must not ask the user to rate or review",
        _words(
            "rate us",
            "rate your",
            "how would you rate",
            "leave a review",
            "write a review",
            "review us",
            "avalie",
            "califícanos",
            "califica tu",
            "deja una reseña",
        ),
    ),
)


def wording_problems(template: Template) -> list[tuple[str, str, str]]:
    """``(language, part, message)`` for each rule a utility template's text seems to break."""
    if template.category != "UTILITY":
        return []
    kind = f"UTILITY, use {template.use}" if template.use else "UTILITY"
    out: list[tuple[str, str, str]] = []
    for code, variant in template.variants.items():
        parts = [("body", variant.body), ("header", variant.header)]
        parts += [(f"buttons[{i}]", b.text) for i, b in enumerate(variant.buttons)]
        for part, text in parts:
            for rule in RULES:
                found = sorted({m.group(0).lower() for m in rule.words.finditer(text)})
                if found:
                    out.append(
                        (
                            code,
                            part,
                            f"{', '.join(repr(w) for w in found)} reads like {rule.what}"
                            f" ({kind}); Meta's rule: {rule.rule}. Meta may re-categorize"
                            " it as MARKETING, which windowbot never sends; reword it if the"
                            " words mean what they seem to",
                        )
                    )
    return out
