"""Meta's rules for utility templates, checked against the wording, and the declared use."""

from __future__ import annotations

import textwrap
from pathlib import Path

from bot.templates import TemplateRegistry, check_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "templates.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


class TestWording:
    def test_each_rule_is_named_with_the_words_it_matched(self, tmp_path: Path) -> None:
        """Promotion, survey, subscription and rating wording each give a warning with the rule."""
        path = write(
            tmp_path,
            """\
            templates:
              update:
                category: UTILITY
                use: SHIPPING_UPDATE
                status: APPROVED
                languages:
                  en_US: {body: "Shipped! Take our survey, rate us, and subscribe: 10% off."}
            """,
        )
        findings = check_file(path)
        assert {f.severity for f in findings} == {"warning"}
        messages = " | ".join(f.message for f in findings)
        for rule in ("must not promote", "surveys", "subscription", "rate or review"):
            assert rule in messages
        assert "'10% off'" in messages and "use SHIPPING_UPDATE" in messages
        assert all(f.line == 7 for f in findings)
        assert TemplateRegistry.load(path).templates["update"].use == "SHIPPING_UPDATE"

    def test_plain_utility_wording_has_no_finding(self, tmp_path: Path) -> None:
        """A shipping update that says what happened is clean (a 'salesperson' is no sale)."""
        path = write(
            tmp_path,
            """\
            templates:
              update:
                category: SHIPPING_UPDATE
                status: APPROVED
                languages:
                  en_US: "Hi {{1}}, your order shipped; your salesperson is {{2}}."
            """,
        )
        assert check_file(path) == []

    def test_authentication_is_not_read_as_utility(self, tmp_path: Path) -> None:
        """The utility rules do not apply to AUTHENTICATION templates."""
        path = write(
            tmp_path,
            """\
            templates:
              otp:
                category: AUTHENTICATION
                status: APPROVED
                languages: {en: "Your code is {{1}}. Do not share it; no discount applies."}
            """,
        )
        assert check_file(path) == []


class TestUse:
    def test_use_must_be_one_of_the_ten(self, tmp_path: Path) -> None:
        """An unknown use is an error listing the allowed ones."""
        path = write(
            tmp_path,
            """\
            templates:
              update:
                category: UTILITY
                use: NEWSLETTER
                status: APPROVED
                languages: {en: "Hi."}
            """,
        )
        [finding] = check_file(path)
        assert finding.severity == "error" and finding.line == 4
        assert "update.use" in finding.message and "SHIPPING_UPDATE" in finding.message

    def test_use_only_for_utility(self, tmp_path: Path) -> None:
        """An AUTHENTICATION template with a use is an error."""
        path = write(
            tmp_path,
            """\
            templates:
              otp:
                category: AUTHENTICATION
                use: ALERT
                status: APPROVED
                languages: {en: "Code {{1}}."}
            """,
        )
        [finding] = check_file(path)
        assert finding.severity == "error" and "only a UTILITY template" in finding.message
