"""The session-or-template decision: the window, the margin, fallbacks, languages, reasons."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.models import Outgoing, TemplateCall, UserRecord
from bot.templates import TemplateRegistry
from bot.window import (
    WINDOW_SECONDS,
    Decision,
    WindowPolicy,
    decide,
    decide_fallback,
    window_closes_at,
    window_open,
)
from tests.example_templates import EXAMPLE, registry_with_pending

NOW = 1_764_000_000.0
HOUR = 3600
POLICY = WindowPolicy(country_languages={"55": "pt_BR", "52": "es_MX", "1": "en_US"})
TEXT = {"type": "text", "text": {"body": "Your appointment moved.", "preview_url": False}}
CHANGE = "moved to Tue 10:00"
UPDATE = TemplateCall("appointment_update", ("Ana", CHANGE))


@pytest.fixture(scope="module")
def registry() -> TemplateRegistry:
    return TemplateRegistry.load(EXAMPLE)


def user(hours_ago: float, **fields: object) -> UserRecord:
    """A Brazilian user whose last inbound message was ``hours_ago`` hours before NOW."""
    values: dict[str, object] = {"key": "5511999990000", "wa_id": "5511999990000"}
    values.update(fields)
    return UserRecord(last_inbound_at=int(NOW - hours_ago * HOUR), **values)  # type: ignore[arg-type]


def run(
    record: UserRecord,
    outgoing: Outgoing,
    registry: TemplateRegistry | None,
    policy: WindowPolicy = POLICY,
    now: float = NOW,
) -> Decision:
    return decide(record, outgoing, now, registry=registry, policy=policy)


class TestWindow:
    def test_closes_24h_after_last_inbound(self) -> None:
        """The window closes exactly 24 h after the last inbound message."""
        record = user(0)
        assert window_closes_at(record) == NOW + WINDOW_SECONDS
        assert window_open(record, NOW + WINDOW_SECONDS - 1)
        assert not window_open(record, NOW + WINDOW_SECONDS)

    def test_never_wrote_means_closed(self) -> None:
        """A user with no inbound message has no open window."""
        assert not window_open(UserRecord(key="u"), NOW)
        assert window_closes_at(UserRecord(key="u")) == 0.0


class TestDecideSession:
    def test_inside_window_sends_session(self, registry: TemplateRegistry) -> None:
        """One hour after the user wrote, the session message goes out as is."""
        decision = run(user(1), Outgoing(TEXT, UPDATE), registry)
        assert decision.kind == "session"
        assert decision.message == TEXT
        assert decision.reason == "window open until 2025-11-25T15:00:00Z"

    def test_margin_counts_as_closed(self, registry: TemplateRegistry) -> None:
        """With 4 minutes left and a 5-minute margin, the template is used."""
        record = user(24 - 4 / 60)
        decision = run(record, Outgoing(TEXT, UPDATE), registry)
        assert decision.kind == "template"
        assert "inside the 5m safety margin" in decision.reason
        no_margin = WindowPolicy(margin_seconds=0, country_languages=POLICY.country_languages)
        assert run(record, Outgoing(TEXT, UPDATE), registry, no_margin).kind == "session"

    def test_template_only_send_uses_template_inside_window(
        self, registry: TemplateRegistry
    ) -> None:
        """A business-initiated send (no session message) is a template even when open."""
        decision = run(user(1), Outgoing(None, UPDATE), registry)
        assert decision.kind == "template"
        assert decision.reason.startswith("business-initiated: template fallback")

    @given(hours=st.floats(min_value=0, max_value=24 * 3))
    def test_session_only_when_open_less_margin(self, hours: float) -> None:
        """For any age, a session decision implies the window is open beyond the margin."""
        record = user(hours)
        decision = decide(record, Outgoing(TEXT), NOW, registry=None, policy=POLICY)
        open_ = record.last_inbound_at + WINDOW_SECONDS - POLICY.margin_seconds > NOW
        assert (decision.kind == "session") == open_
        assert decision.kind in ("session", "skip")


class TestDecideFallback:
    def test_closed_window_uses_fallback_in_country_language(
        self, registry: TemplateRegistry
    ) -> None:
        """25 h later a +55 user gets the pt_BR variant with the parameters."""
        decision = run(user(25), Outgoing(TEXT, UPDATE), registry)
        assert decision.kind == "template"
        assert decision.language == "pt_BR"
        assert decision.template == "appointment_update"
        assert (
            decision.reason == "window closed 1h ago: template fallback appointment_update (pt_BR)"
        )
        assert decision.message == {
            "type": "template",
            "template": {
                "name": "appointment_update",
                "language": {"code": "pt_BR"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": "Ana"},
                            {"type": "text", "text": CHANGE},
                        ],
                    }
                ],
            },
        }

    def test_stored_preference_wins(self, registry: TemplateRegistry) -> None:
        """A stored language beats the number's country."""
        decision = run(user(25, language="es_MX"), Outgoing(TEXT, UPDATE), registry)
        assert decision.language == "es_MX"

    def test_default_when_country_unknown(self, registry: TemplateRegistry) -> None:
        """A German number with no preference gets the default language."""
        record = user(25, wa_id="4915112345678", key="4915112345678")
        assert run(record, Outgoing(TEXT, UPDATE), registry).language == "en_US"

    def test_missing_variant_falls_down_the_chain(self, tmp_path: Path) -> None:
        """With no French variant the chain goes on to the country's language."""
        path = tmp_path / "t.yaml"
        path.write_text(
            textwrap.dedent(
                """\
                update:
                  category: APPOINTMENT_UPDATE
                  status: APPROVED
                  languages:
                    en_US: "Hi {{1}}"
                    pt_BR: {body: "Olá {{1}}", status: PENDING}
                    es_MX: "Hola {{1}}"
                """
            )
        )
        registry = TemplateRegistry.load(path)
        call = Outgoing(TEXT, TemplateCall("update", ("Ana",)))
        mexican = user(30, wa_id="5215512345678", language="fr_FR")
        assert run(mexican, call, registry).language == "es_MX"
        brazilian = user(30, language="fr_FR")
        decision = run(brazilian, call, registry)
        assert decision.language == "en_US", "a PENDING pt_BR variant is never chosen"

    def test_fixed_language_must_be_approved(self, registry: TemplateRegistry) -> None:
        """A call fixing its language gets exactly that variant or nothing."""
        fixed = Outgoing(
            TEXT, TemplateCall("appointment_update", ("Ana", CHANGE), language="es-MX")
        )
        assert run(user(25), fixed, registry).language == "es_MX"
        french = Outgoing(
            TEXT, TemplateCall("appointment_update", ("Ana", CHANGE), language="fr_FR")
        )
        decision = run(user(25), french, registry)
        assert decision.kind == "skip"
        assert decision.reason == "not sent: template appointment_update has no variant in fr_FR"

    def test_no_fallback_is_skipped_with_reason(self, registry: TemplateRegistry) -> None:
        """Without a fallback nothing is sent and the reason says so."""
        decision = run(user(25), Outgoing(TEXT), registry)
        assert decision.kind == "skip" and decision.message is None
        assert decision.reason.startswith(
            "not sent: window closed and the reply has no template fallback"
        )

    def test_pending_template_is_never_sent(self, tmp_path: Path) -> None:
        """A PENDING template is skipped, naming its status."""
        call = TemplateCall("spring_sale", ("Ana", "Mar 20"))
        decision = run(user(25), Outgoing(TEXT, call), registry_with_pending(tmp_path))
        assert decision.kind == "skip"
        assert decision.reason == "not sent: template spring_sale is PENDING"

    @pytest.mark.parametrize("status", ["REJECTED", "PAUSED", "DISABLED"])
    def test_unapproved_status_is_never_sent(self, tmp_path: Path, status: str) -> None:
        """REJECTED, PAUSED and DISABLED templates are skipped."""
        path = tmp_path / "t.yaml"
        path.write_text(f"t:\n  category: ALERT\n  status: {status}\n  languages: {{en_US: Hi}}\n")
        decision = run(user(25), Outgoing(TEXT, TemplateCall("t")), TemplateRegistry.load(path))
        assert decision.kind == "skip" and status in decision.reason

    def test_marketing_is_never_sent(self, registry: TemplateRegistry) -> None:
        """A MARKETING template that slipped into a registry is still refused."""
        from dataclasses import replace

        template = replace(registry.templates["appointment_update"], category="MARKETING")
        forged = replace(registry, templates={"appointment_update": template})
        decision = run(user(25), Outgoing(TEXT, UPDATE), forged)
        assert decision.kind == "skip" and "MARKETING" in decision.reason

    def test_opted_out_gets_no_template(self, registry: TemplateRegistry) -> None:
        """An opted-out user gets no business-initiated message, but session replies still go."""
        decision = run(user(25, opted_out=True), Outgoing(TEXT, UPDATE), registry)
        assert decision.kind == "skip"
        assert decision.reason == "not sent: user opted out of business-initiated messages"
        assert run(user(1, opted_out=True), Outgoing(TEXT, UPDATE), registry).kind == "session"
        assert run(user(1, opted_out=True), Outgoing(None, UPDATE), registry).kind == "skip"

    def test_unknown_template_and_no_registry(self, registry: TemplateRegistry) -> None:
        """An unknown template or a missing registry are skip reasons, not crashes."""
        unknown = Outgoing(TEXT, TemplateCall("nope"))
        assert run(user(25), unknown, registry).reason == (
            "not sent: template nope is not in the registry"
        )
        assert "no template registry" in run(user(25), Outgoing(TEXT, UPDATE), None).reason

    @pytest.mark.parametrize("position", [1, 2])
    @pytest.mark.parametrize("value", ["", "   ", "\n"])
    def test_empty_parameter_is_refused(
        self, registry: TemplateRegistry, value: str, position: int
    ) -> None:
        """An empty parameter skips the send, naming the parameter."""
        values = (value, CHANGE) if position == 1 else ("Ana", value)
        outgoing = Outgoing(TEXT, TemplateCall("appointment_update", values))
        decision = run(user(25), outgoing, registry)
        assert decision.kind == "skip"
        assert decision.reason.startswith(f"not sent: template parameter {position} is empty")

    @pytest.mark.parametrize("value", ["Ana\nMaria", "Ana\tMaria", "Ana     Maria"])
    def test_bad_whitespace_is_normalised(self, registry: TemplateRegistry, value: str) -> None:
        """Newlines, tabs and 5 spaces become one space instead of a 132000-style refusal."""
        outgoing = Outgoing(TEXT, TemplateCall("appointment_update", (value, CHANGE)))
        decision = run(user(25), outgoing, registry)
        assert decision.message is not None
        [component] = decision.message["template"]["components"]
        assert component["parameters"] == [
            {"type": "text", "text": "Ana Maria"},
            {"type": "text", "text": CHANGE},
        ]

    def test_parameter_count_mismatch_is_skipped(self, registry: TemplateRegistry) -> None:
        """Three values for a two-parameter template are refused before sending."""
        outgoing = Outgoing(TEXT, TemplateCall("appointment_update", ("Ana", CHANGE, "extra")))
        decision = run(user(25), outgoing, registry)
        assert decision.kind == "skip" and "takes 2 parameter(s), got 3" in decision.reason

    def test_after_131047_the_template_is_forced(self, registry: TemplateRegistry) -> None:
        """decide_fallback takes the template path even though the clock says open."""
        decision = decide_fallback(
            user(1), Outgoing(TEXT, UPDATE), NOW, registry=registry, policy=POLICY
        )
        assert decision.kind == "template"
        assert decision.reason.startswith("WhatsApp reported the window closed (131047)")

    def test_reason_names_days(self, registry: TemplateRegistry) -> None:
        """A window closed for days says so."""
        decision = run(user(24 + 51), Outgoing(TEXT, UPDATE), registry)
        assert decision.reason.startswith("window closed 2d 3h ago")
