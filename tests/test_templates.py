"""The template registry: loading with line numbers, language choice, parameters, Meta JSON."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import TemplateError
from bot.findings import Finding
from bot.models import TemplateCall, UserRecord
from bot.templates import (
    RegistryFileError,
    Template,
    TemplateRegistry,
    build_template_message,
    check_file,
    choose_language,
    clean_parameter,
    country_language,
    normalize_language,
)
from tests.example_templates import EXAMPLE, registry_with_pending

COUNTRIES = {"55": "pt_BR", "52": "es_MX", "1": "en_US", "351": "pt_PT"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "templates.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(path: Path) -> list[Finding]:
    return [f for f in check_file(path) if f.severity == "error"]


@pytest.fixture
def registry() -> TemplateRegistry:
    return TemplateRegistry.load(EXAMPLE)


class TestLoad:
    def test_example_registry_loads(self, registry: TemplateRegistry) -> None:
        """The shipped example declares the templates the example flows use."""
        assert set(registry.templates) == {
            "business_hours",
            "appointment_confirmation",
            "appointment_update",
            "appointment_reminder",
            "message_not_processed",
        }
        assert registry.check() == [], "the shipped example must check clean"
        for template in registry.templates.values():
            assert set(template.variants) == {"en_US", "pt_BR", "es_MX"}

    def test_example_parameters_are_derived_from_the_body(self, registry: TemplateRegistry) -> None:
        """Positional and named parameters come from the body's placeholders."""
        assert registry.templates["business_hours"].parameters == ("1", "2")
        assert registry.templates["appointment_confirmation"].parameters == ("name", "slot")
        assert registry.templates["appointment_confirmation"].parameter_format == "named"
        reminder = registry.templates["appointment_reminder"]
        assert [b.kind for b in reminder.variants["en_US"].buttons] == ["quick_reply"]

    def test_pending_template_is_a_warning(self, tmp_path: Path) -> None:
        """spring_sale is PENDING: loading warns instead of failing."""
        registry = registry_with_pending(tmp_path)
        warnings = registry.check()
        assert warnings and all(f.severity == "warning" for f in warnings)
        assert all("spring_sale" in f.message and "4 business days" in f.message for f in warnings)
        assert registry.templates["spring_sale"].status("en_US") == "PENDING"

    def test_marketing_is_refused_with_the_reason(self, tmp_path: Path) -> None:
        """A MARKETING template is an error that explains why and what to use instead."""
        path = write(
            tmp_path,
            """\
            templates:
              promo:
                category: MARKETING
                status: APPROVED
                languages:
                  en_US: {body: "Sale! {{1}}"}
            """,
        )
        [finding] = errors_of(path)
        assert finding.line == 3
        assert "promo.category" in finding.message and "MARKETING" in finding.message
        assert "promotions" in finding.message
        with pytest.raises(RegistryFileError) as info:
            TemplateRegistry.load(path)
        assert isinstance(info.value, TemplateError)
        assert info.value.findings == [finding]

    def test_alert_update_is_the_api_spelling_of_alert(self, tmp_path: Path) -> None:
        """ALERT_UPDATE loads as ALERT; UTILITY and AUTHENTICATION are accepted."""
        path = write(
            tmp_path,
            """\
            - name: hours
              category: ALERT_UPDATE
              status: APPROVED
              languages: {en_US: "We open at 9."}
            - name: util
              category: UTILITY
              status: APPROVED
              languages: {en: "Done."}
            - name: otp
              category: AUTHENTICATION
              status: APPROVED
              languages: {en: "Your code is {{1}}."}
            """,
        )
        registry = TemplateRegistry.load(path)
        assert registry.templates["hours"].category == "ALERT"
        assert registry.templates["util"].category == "UTILITY"
        assert registry.templates["otp"].category == "AUTHENTICATION"

    def test_every_problem_is_reported_with_its_line(self, tmp_path: Path) -> None:
        """All errors come at once, each with the line and the key path."""
        path = write(
            tmp_path,
            """\
            templates:
              a:
                category: PROMO
                status: APPROVED
                languages:
                  en_US: {body: "Hi {{1}}"}
              b:
                category: ALERT
                status: MAYBE
                languages:
                  english: {body: "Hi"}
              c:
                category: ALERT
                status: APPROVED
                colour: red
                languages:
                  en_US: {body: "Hi {{1}} {{3}}"}
            """,
        )
        found = {(f.line, f.message.split(":")[0]) for f in errors_of(path)}
        assert (3, "a.category") in found
        assert (9, "b.status") in found
        assert (11, "b.languages.english") in found
        assert (15, "c.colour") in found
        assert (17, "c.languages.en_US.body") in found

    def test_finding_renders_like_a_compiler_message(self, tmp_path: Path) -> None:
        """str(finding) is 'path:line: severity: message'."""
        path = write(tmp_path, "templates: 3\n")
        [finding] = errors_of(path)
        assert str(finding) == f"{path}:1: error: templates: {finding.message.split(': ', 1)[1]}"

    def test_yaml_syntax_error_has_a_line(self, tmp_path: Path) -> None:
        """Broken YAML is one finding pointing at the line."""
        path = write(tmp_path, "templates:\n  a: [1, 2\n  b: 3\n")
        [finding] = errors_of(path)
        assert "not valid YAML" in finding.message and finding.line >= 2

    def test_duplicate_keys_are_errors(self, tmp_path: Path) -> None:
        """A key given twice is reported instead of silently overwritten."""
        path = write(
            tmp_path,
            """\
            templates:
              a:
                category: ALERT
                status: APPROVED
                status: PENDING
                languages: {en_US: "Hi"}
            """,
        )
        [finding] = errors_of(path)
        assert finding.line == 5 and "duplicate" in finding.message

    def test_variants_must_share_parameters(self, tmp_path: Path) -> None:
        """A variant with other placeholders than the first one is an error."""
        path = write(
            tmp_path,
            """\
            templates:
              a:
                category: ALERT
                status: APPROVED
                languages:
                  en_US: {body: "Hi {{name}}"}
                  pt_BR: {body: "Olá {{nome}}"}
            """,
        )
        [finding] = errors_of(path)
        assert finding.line == 7 and "differ from en_US" in finding.message

    def test_status_can_be_overridden_per_variant(self, tmp_path: Path) -> None:
        """A variant's own status wins over the template's."""
        path = write(
            tmp_path,
            """\
            templates:
              a:
                category: ALERT
                status: APPROVED
                languages:
                  en_US: "Hi"
                  pt_BR: {body: "Olá", status: REJECTED}
            """,
        )
        template = TemplateRegistry.load(path).templates["a"]
        assert template.approved("en_US") and not template.approved("pt_BR")

    def test_missing_status_is_an_error(self, tmp_path: Path) -> None:
        """Without a status anywhere the loader asks for one instead of assuming APPROVED."""
        path = write(tmp_path, "a:\n  category: ALERT\n  languages: {en: Hi}\n")
        [finding] = errors_of(path)
        assert "status: APPROVED" in finding.message

    def test_no_language_code_is_read_as_text(self, tmp_path: Path) -> None:
        """YAML's 'no' stays the Norwegian code, not False."""
        path = write(
            tmp_path, "a:\n  category: ALERT\n  status: APPROVED\n  languages: {no: Hei}\n"
        )
        assert "no" in TemplateRegistry.load(path).templates["a"].variants

    def test_unknown_top_level_key(self, tmp_path: Path) -> None:
        """Next to 'templates:' nothing else is allowed; the stray key is named."""
        path = write(tmp_path, "version: 2\ntemplates: {}\n")
        [finding] = errors_of(path)
        assert (finding.line, finding.message.split(":")[0]) == (1, "version")

    def test_missing_file_is_a_finding(self, tmp_path: Path) -> None:
        """An unreadable file is reported, not a traceback."""
        [finding] = errors_of(tmp_path / "absent.yaml")
        assert "cannot read" in finding.message


class TestCheckCall:
    def test_good_call_has_no_problems(self, registry: TemplateRegistry) -> None:
        """An approved template called with its exact parameters is fine."""
        assert registry.check_call("business_hours", "", 2) == []
        assert registry.check_call("appointment_confirmation", "pt_BR", ["slot", "name"]) == []

    def test_unknown_template(self, registry: TemplateRegistry) -> None:
        """An unknown name is an error listing the known ones."""
        [problem] = registry.check_call("nope", "", 0)
        assert "'nope' is not in" in problem and "business_hours" in problem

    def test_pending_is_a_warning(self, tmp_path: Path) -> None:
        """PENDING warns that approval can take up to 4 business days."""
        [problem] = registry_with_pending(tmp_path).check_call("spring_sale", "", 2)
        assert problem.startswith("warning: ") and "4 business days" in problem

    def test_rejected_is_an_error(self, tmp_path: Path) -> None:
        """A template with no APPROVED or PENDING variant is an error."""
        path = write(tmp_path, "a:\n  category: ALERT\n  status: REJECTED\n  languages: {en: Hi}\n")
        [problem] = TemplateRegistry.load(path).check_call("a", "", 0)
        assert not problem.startswith("warning") and "REJECTED" in problem

    def test_fixed_language_must_exist(self, registry: TemplateRegistry) -> None:
        """A fixed language without a variant is an error."""
        [problem] = registry.check_call("business_hours", "fr_FR", 2)
        assert "no fr_FR variant" in problem

    def test_languages_in_use_without_variant_warn(self, registry: TemplateRegistry) -> None:
        """A served language the template lacks is a warning (the chain falls back)."""
        [problem] = registry.check_call("business_hours", ["en_US", "fr_FR"], 2)
        assert problem.startswith("warning: ") and "fr_FR" in problem

    def test_parameter_count_and_names_must_match(self, registry: TemplateRegistry) -> None:
        """Counts for positional, exact names for named templates."""
        assert "takes 2 parameter(s), 3 given" in registry.check_call("business_hours", "", 3)[0]
        problems = registry.check_call("appointment_confirmation", "", ["name", "when"])
        assert any("missing parameter(s) slot" in p for p in problems)
        assert any("unknown parameter(s) when" in p for p in problems)
        assert "named parameters" in registry.check_call("appointment_confirmation", "", 2)[0]

    def test_values_and_mappings_are_accepted(self, registry: TemplateRegistry) -> None:
        """A call's own values (tuple or name → value mapping) can be checked directly."""
        assert registry.check_call("business_hours", "user", ("Ana", "Mon–Fri 9–18")) == []
        assert (
            registry.check_call("appointment_confirmation", "auto", {"name": "A", "slot": "B"})
            == []
        )
        assert "is positional" in registry.check_call("business_hours", "", {"name": "A"})[0]
        assert "1 given" in registry.check_call("business_hours", "", ("A",))[0]

    def test_fixed_language_is_normalised(self, registry: TemplateRegistry) -> None:
        """'pt-br' names the pt_BR variant."""
        assert registry.check_call("business_hours", "pt-br", 2) == []


class TestLanguage:
    def test_normalize(self) -> None:
        """Codes are normalised to Meta's 'xx_YY' spelling."""
        assert normalize_language("pt-br") == "pt_BR"
        assert normalize_language(" EN ") == "en"

    def test_country_code_longest_prefix(self) -> None:
        """351 (Portugal) wins over a shorter matching prefix."""
        assert country_language("351912345678", {"3": "xx", "351": "pt_PT"}) == "pt_PT"
        assert country_language("+5511999990000", COUNTRIES) == "pt_BR"
        assert country_language("4930000000", COUNTRIES) is None

    def test_chain_order(self, registry: TemplateRegistry) -> None:
        """Stored preference, then the number's country, then the default."""
        template = registry.templates["business_hours"]

        def pick(record: UserRecord) -> str | None:
            return choose_language(record, template, country_languages=COUNTRIES, default="en_US")

        assert pick(UserRecord(key="u", wa_id="5511999990000", language="es_MX")) == "es_MX"
        assert pick(UserRecord(key="u", wa_id="5511999990000")) == "pt_BR"
        assert pick(UserRecord(key="u", wa_id="4930000000")) == "en_US"
        assert pick(UserRecord(key="u", user_id="BR.123")) == "en_US"

    def test_same_language_other_country_before_the_default(self, tmp_path: Path) -> None:
        """pt_PT finds pt_BR (same language) before falling to the default."""
        path = write(
            tmp_path,
            """\
            a:
              category: ALERT
              status: APPROVED
              languages: {en_US: Hi, pt_BR: Olá, es: Hola}
            """,
        )
        template = TemplateRegistry.load(path).templates["a"]
        record = UserRecord(key="u", wa_id="351912345678")
        assert choose_language(record, template, country_languages=COUNTRIES, default="en_US") == (
            "pt_BR"
        )
        record = UserRecord(key="u", wa_id="5215512345678")
        assert choose_language(record, template, country_languages=COUNTRIES, default="en_US") == (
            "es"
        )

    def test_never_an_unapproved_variant(self, tmp_path: Path) -> None:
        """A PENDING variant is skipped; with nothing approved the answer is None."""
        path = write(
            tmp_path,
            """\
            a:
              category: ALERT
              status: APPROVED
              languages:
                en_US: Hi
                pt_BR: {body: Olá, status: PENDING}
            b:
              category: ALERT
              status: PAUSED
              languages: {en_US: Hi}
            """,
        )
        registry = TemplateRegistry.load(path)
        record = UserRecord(key="u", wa_id="5511999990000", language="pt_BR")
        a, b = registry.templates["a"], registry.templates["b"]
        assert choose_language(record, a, country_languages=COUNTRIES, default="en_US") == "en_US"
        assert choose_language(record, b, country_languages=COUNTRIES, default="en_US") is None


class TestParameters:
    def test_whitespace_is_collapsed(self) -> None:
        """Newlines, tabs and runs of spaces become one space; the ends are stripped."""
        assert clean_parameter("  Ana\n\tMaria     Silva ", limit=60) == "Ana Maria Silva"

    @pytest.mark.parametrize("value", ["", "   ", "\n\t", "     "])
    def test_empty_is_refused_naming_the_parameter(self, value: str) -> None:
        """An empty (or blank) parameter raises TemplateError naming it."""
        with pytest.raises(TemplateError, match="template parameter first_name is empty"):
            clean_parameter(value, limit=60, name="first_name")

    def test_limit(self) -> None:
        """A parameter over its limit is refused."""
        with pytest.raises(TemplateError, match="over the limit of 5"):
            clean_parameter("abcdef", limit=5)

    @given(st.text(max_size=80))
    def test_cleaned_text_is_always_acceptable(self, value: str) -> None:
        """Any text either cleans to something WhatsApp accepts or is refused as empty."""
        try:
            text = clean_parameter(value, limit=1024)
        except TemplateError:
            assert not value.strip()
            return
        assert text == text.strip() and text
        assert "\n" not in text and "\t" not in text and "     " not in text


class TestBuild:
    def test_positional_exact_json(self, registry: TemplateRegistry) -> None:
        """A positional body parameter has no parameter_name."""
        call = TemplateCall("business_hours", ("Ana", "seg–sex 9h–18h"))
        assert build_template_message(registry, call, "pt_BR") == {
            "type": "template",
            "template": {
                "name": "business_hours",
                "language": {"code": "pt_BR"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": "Ana"},
                            {"type": "text", "text": "seg–sex 9h–18h"},
                        ],
                    }
                ],
            },
        }

    def test_named_with_quick_reply_exact_json(self, registry: TemplateRegistry) -> None:
        """Named parameters carry parameter_name, in the template's order; payload by index."""
        call = TemplateCall(
            "appointment_reminder", {"slot": "Tue\n10:00", "name": "Ana"}, buttons=("CONFIRM",)
        )
        assert build_template_message(registry, call, "en_US") == {
            "type": "template",
            "template": {
                "name": "appointment_reminder",
                "language": {"code": "en_US"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": "Ana", "parameter_name": "name"},
                            {"type": "text", "text": "Tue 10:00", "parameter_name": "slot"},
                        ],
                    },
                    {
                        "type": "button",
                        "sub_type": "quick_reply",
                        "index": "0",
                        "parameters": [{"type": "payload", "payload": "CONFIRM"}],
                    },
                ],
            },
        }

    def test_header_and_url_button(self, tmp_path: Path) -> None:
        """A text header parameter and a dynamic url suffix get their components."""
        path = write(
            tmp_path,
            """\
            a:
              category: SHIPPING_UPDATE
              status: APPROVED
              languages:
                en_US:
                  header: "Order {{1}}"
                  body: "Hi {{1}}, it shipped."
                  buttons:
                    - {type: url, text: Track, url: "https://example.com/t/{{1}}"}
            """,
        )
        registry = TemplateRegistry.load(path)
        call = TemplateCall("a", ("Ana",), header=("#42",), buttons=("X42",))
        components = build_template_message(registry, call, "en_US")["template"]["components"]
        assert components == [
            {"type": "header", "parameters": [{"type": "text", "text": "#42"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},
            {
                "type": "button",
                "sub_type": "url",
                "index": "0",
                "parameters": [{"type": "text", "text": "X42"}],
            },
        ]

    @pytest.mark.parametrize(
        ("call", "message"),
        [
            (TemplateCall("business_hours", ()), "takes 2 parameter"),
            (TemplateCall("business_hours", ("a",)), "takes 2 parameter"),
            (TemplateCall("business_hours", ("a", "b", "c")), "takes 2 parameter"),
            (TemplateCall("business_hours", {"1": "Ana"}), "is positional"),
            (TemplateCall("appointment_confirmation", ("Ana", "Tue")), "named parameters"),
            (TemplateCall("appointment_confirmation", {"name": "Ana"}), "missing: slot"),
            (TemplateCall("business_hours", (" \n ", "9–18")), "parameter 1 is empty"),
            (TemplateCall("business_hours", ("Ana", " \t ")), "parameter 2 is empty"),
            (TemplateCall("nope", ()), "not in the registry"),
            (TemplateCall("business_hours", ("x" * 1100, "9–18")), "over"),
        ],
    )
    def test_mismatch_raises_before_sending(
        self, registry: TemplateRegistry, call: TemplateCall, message: str
    ) -> None:
        """Wrong counts, names, empty or long values raise TemplateError."""
        with pytest.raises(TemplateError, match=message):
            build_template_message(registry, call, "en_US")

    def test_missing_variant_raises(self, registry: TemplateRegistry) -> None:
        """Building for a language the template lacks raises."""
        with pytest.raises(TemplateError, match="no fr_FR variant"):
            build_template_message(registry, TemplateCall("business_hours", ("A", "B")), "fr_FR")

    def test_render_preview(self, registry: TemplateRegistry) -> None:
        """render() shows the text the user would read."""
        template: Template = registry.templates["appointment_update"]
        call = TemplateCall("appointment_update", ("Ana", "ahora es el martes a las 10:00"))
        assert template.render("es_MX", call) == (
            "Hola Ana, una novedad sobre tu cita: ahora es el martes a las 10:00"
        )
