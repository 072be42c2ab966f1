"""The repository's own tooling gates: ruff (lint + format) and mypy --strict are clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


@pytest.mark.slow
def test_ruff_check_is_clean() -> None:
    """ruff check finds nothing in bot/, tests/ and bench/."""
    result = run("ruff", "check", "bot", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_ruff_format_is_clean() -> None:
    """ruff format would change no file."""
    result = run("ruff", "format", "--check", "bot", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) reports no error on bot/ and tests/."""
    result = run("mypy")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr
