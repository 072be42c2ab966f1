"""The shipped template registry, and the same with a PENDING template for the tests.

The example in ``flows/`` stays clean (``bot check`` prints no warning on a fresh clone);
the PENDING case lives in ``tests/data/pending_template.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from bot.templates import TemplateRegistry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "flows" / "templates.yaml"
PENDING = Path(__file__).resolve().parent / "data" / "pending_template.yaml"


def with_pending(folder: Path) -> Path:
    """Write the example registry plus ``spring_sale`` (PENDING) to ``folder``; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "templates.yaml"
    extra = PENDING.read_text(encoding="utf-8").split("templates:\n", 1)[1]
    path.write_text(EXAMPLE.read_text(encoding="utf-8") + "\n" + extra, encoding="utf-8")
    return path


def registry_with_pending(folder: Path) -> TemplateRegistry:
    """The example registry plus ``spring_sale`` (PENDING), loaded."""
    return TemplateRegistry.load(with_pending(folder))
