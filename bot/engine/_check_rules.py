"""Which rules of one state can never fire because an earlier rule takes their messages."""

from __future__ import annotations

from bot.engine.spec import ANY, RuleSpec, TriggerSpec

_TEXT_KINDS = ("text", "keywords", "regex")
_EXACT_KINDS = ("text", "reply", "payload", "media")

#: (line, message, severity)
Problem = tuple[int, str, str]


def _key(trigger: TriggerSpec, value: str) -> str:
    """Values compared the way matching compares them (text is case- and space-insensitive)."""
    if trigger.kind in ("text", "keywords") and value != ANY:
        return " ".join(value.split()).casefold()
    return value


def shadowed(rules: tuple[RuleSpec, ...]) -> list[Problem]:
    """Dead rules (errors) and values an earlier rule already takes (warnings).

    Only rules without ``if:``/``unless:`` take messages away from later rules, since a
    guarded rule may decline. Regular expressions and keywords are not compared with each
    other (that would need regex containment); ``else`` and ``"*"`` are.
    """
    problems: list[Problem] = []
    covered: dict[str, dict[str, int]] = {}  # kind → value (or "*") → line of the taker
    for rule in rules:
        takers: list[int] = []
        for t in rule.triggers:
            taken = covered.get(t.kind, {})
            whole = (
                covered.get("else", {}).get(ANY)
                or taken.get(ANY)
                or (covered.get("text", {}).get(ANY) if t.kind in _TEXT_KINDS else None)
            )
            keys = [_key(t, v) for v in t.values]
            if whole:
                takers.append(whole)
            elif t.kind != "regex" and keys and all(k in taken for k in keys):
                takers.append(taken[keys[0]])
            elif t.kind in _EXACT_KINDS:
                for value, key in zip(t.values, keys, strict=True):
                    if key in taken:
                        problems.append(
                            (
                                t.line,
                                f"'{value}' is already handled by the rule at line {taken[key]}",
                                "warning",
                            )
                        )
        if len(takers) == len(rule.triggers):
            problems.append(
                (
                    rule.line,
                    f"this rule can never fire: the rule at line {takers[0]} above "
                    f"already catches '{rule.label}'",
                    "error",
                )
            )
        if not rule.guarded:
            for t in rule.triggers:
                if t.kind != "regex":
                    for v in t.values:
                        covered.setdefault(t.kind, {}).setdefault(_key(t, v), rule.line)
    return problems
