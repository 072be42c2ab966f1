"""Problems found in flow and template files: what, where, and how bad."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in a flow or template file, at a 1-based line (0: the whole file)."""

    file: Path
    line: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity}: {self.message}"


def format_findings(findings: Iterable[Finding]) -> str:
    """One line per finding, ``file:line: severity: message``, in file and line order."""
    return "\n".join(str(f) for f in sort_findings(findings))


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Findings by file then line, errors before warnings on the same line, without repeats."""
    unique = dict.fromkeys(findings)
    return sorted(unique, key=lambda f: (str(f.file), f.line, f.severity != "error", f.message))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
