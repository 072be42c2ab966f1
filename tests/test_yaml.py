"""The one YAML reader (bot._yaml) that flow files and the template file share."""

from __future__ import annotations

from pathlib import Path

from bot._yaml import Marked, parse, plain
from bot.templates import check_file


class TestPlain:
    def test_mappings_keep_lines_scalars_stay_text_and_repeats_are_noted(self) -> None:
        """Keys and mappings know their lines; yes/1/2024-01-01 stay text; a repeat is noted."""
        node = parse("a:\n  b: yes\n  c: 1\n  d: 2024-01-01\n  e:\n  b: no\nlist: [x, 2]\n")
        assert node is not None
        duplicates: list[tuple[int, str]] = []
        data = plain(node, duplicates)
        assert isinstance(data, Marked) and isinstance(data["a"], Marked)
        assert data["a"] == {"b": "no", "c": "1", "d": "2024-01-01", "e": None}
        assert (data["a"].line, data["a"].line_of("c"), data.line_of("list")) == (2, 3, 7)
        assert data["list"] == ["x", "2"] and duplicates == [(6, "b")]


class TestTemplateFile:
    def test_a_character_yaml_cannot_read_is_a_finding(self, tmp_path: Path) -> None:
        """A control character in templates.yaml is one finding, not a traceback."""
        path = tmp_path / "templates.yaml"
        path.write_text("templates:\n  x\x07: {}\n", encoding="utf-8")
        [finding] = check_file(path)
        assert "not valid YAML" in finding.message and finding.severity == "error"
