"""``on_error:``: the replies a user gets when their message could not be handled."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from bot.engine import Engine, check_folder
from bot.engine.render import MESSAGE_FIELDS, blank_message_context
from bot.errors import FlowError
from bot.models import Outgoing, TemplateCall, UserRecord
from bot.runtime import fallback_checker, load_registry
from tests.engine.helpers import FLOWS, NOW, line, only, text, user, write

WELCOME = textwrap.dedent(
    """
    flow: welcome
    vars: {count: 0}
    states:
      start:
        say: "Hello"
        on:
          - text: go
            goto: other
          - else:
            to: start
"""
).lstrip()

OTHER = textwrap.dedent(
    """
    flow: other
    constants: {business: Lumen Bookings}
    states:
      start:
        say: "Other"
        on:
          - text: back
            goto: welcome
          - else:
            to: start
"""
).lstrip()

PROJECT = textwrap.dedent(
    """
    constants: {business: Lumen}
    on_error:
      - text: "Sorry {{ user.profile_name }}, {{ const.business }} hit a snag."
        fallback:
          template: message_not_processed
          params: [user.profile_name or "there"]
      - "Type *menu* to start over."
"""
).lstrip()


def folder(
    tmp_path: Path, project: str = PROJECT, other: str = OTHER, welcome: str = WELCOME
) -> Path:
    """A flows folder: welcome, other and the given ``_project.yaml``."""
    files = {"welcome.yaml": welcome, "other.yaml": other}
    if project:
        files["_project.yaml"] = project
    return write(tmp_path / "flows", files)


def in_flow(flow: str, **variables: Any) -> UserRecord:
    """A user in ``flow.start`` holding ``variables``."""
    return user(flow=flow, state="start", variables=variables)


def body(reply: Outgoing) -> str:
    """The text body of a text reply."""
    assert reply.message is not None and reply.message["type"] == "text"
    return str(reply.message["text"]["body"])


def shipped_copy(tmp_path: Path) -> Path:
    """A copy of the shipped flows folder to break."""
    return Path(shutil.copytree(FLOWS, tmp_path / "flows"))


class TestCheck:
    def test_declared_on_error_checks_clean(self, tmp_path: Path) -> None:
        """A project and a flow override in reply syntax give no findings."""
        other = OTHER + "on_error: {text: 'Booking trouble', buttons: [{id: menu, title: Menu}]}\n"
        project = PROJECT + "commands: [{reply: menu, goto: welcome}]\n"
        assert check_folder(folder(tmp_path, project=project, other=other)) == []

    def test_unknown_reply_key_in_project_on_error(self, tmp_path: Path) -> None:
        """An unknown key in a project on_error reply is an error at its line in _project.yaml."""
        flows = folder(tmp_path, project=PROJECT.replace("fallback:", "falback:"))
        finding = only(check_folder(flows), "unknown key 'falback'")
        assert (finding.file, finding.line) == (
            flows / "_project.yaml",
            line(flows, "_project.yaml", "falback:"),
        )
        assert "did you mean 'fallback'" in finding.message

    def test_unknown_key_in_flow_on_error(self, tmp_path: Path) -> None:
        """An unknown key in a flow's on_error is an error at its line in that flow's file."""
        flows = folder(tmp_path, other=OTHER + "on_error:\n  - txt: Oops\n")
        finding = only(check_folder(flows), "unknown key 'txt'")
        assert (finding.file, finding.line) == (
            flows / "other.yaml",
            line(flows, "other.yaml", "txt:"),
        )

    def test_unknown_variable_in_on_error(self, tmp_path: Path) -> None:
        """On_error texts are Jinja-checked like any reply: an undeclared variable is an error."""
        flows = folder(tmp_path, project=PROJECT.replace("const.business", "vars.cuont"))
        finding = only(check_folder(flows), "unknown variable 'vars.cuont'")
        assert finding.line == line(flows, "_project.yaml", "vars.cuont")
        assert "did you mean 'count'" in finding.message

    def test_unknown_template_is_reported_by_the_registry(self, tmp_path: Path) -> None:
        """The template registry (as bot check runs it) rejects an unknown on_error template."""
        flows = shipped_copy(tmp_path)
        project = flows / "_project.yaml"
        project.write_text(
            project.read_text().replace("template: message_not_processed", "template: oops")
        )
        registry, _ = load_registry(flows)
        found = check_folder(flows, fallback_checker=fallback_checker(registry))
        finding = only(found, "template 'oops' is not in")
        assert (finding.file, finding.line) == (project, line(flows, "_project.yaml", "fallback:"))

    def test_wrong_parameter_count_is_reported(self, tmp_path: Path) -> None:
        """A fallback passing two parameters to the one-parameter template is an error."""
        flows = shipped_copy(tmp_path)
        project = flows / "_project.yaml"
        project.write_text(
            project.read_text().replace(
                'params: [user.profile_name or "there"]', "params: [user.profile_name, const.hours]"
            )
        )
        registry, _ = load_registry(flows)
        found = check_folder(flows, fallback_checker=fallback_checker(registry))
        assert only(found, "message_not_processed").line == line(
            flows, "_project.yaml", "fallback:"
        )

    def test_shipped_on_error_passes_the_registry(self) -> None:
        """The shipped flows with their template registry have no error and no new warning."""
        registry, _ = load_registry(FLOWS)
        assert registry is not None
        template = registry.templates["message_not_processed"]
        assert (template.category, template.use) == ("UTILITY", "ISSUE_RESOLUTION")
        assert check_folder(FLOWS, fallback_checker=fallback_checker(registry)) == []

    def test_button_no_command_takes_is_a_warning(self, tmp_path: Path) -> None:
        """A button on an error reply with no reply: command to take it is a warning."""
        flows = folder(tmp_path, other=OTHER + "on_error: {text: Oops, buttons: [Retry]}\n")
        finding = only(check_folder(flows), "on_error button 'retry'")
        assert (finding.file, finding.line, finding.severity) == (
            flows / "other.yaml",
            line(flows, "other.yaml", "Retry"),
            "warning",
        )

    def test_load_refuses_a_broken_on_error(self, tmp_path: Path) -> None:
        """Engine.load raises for an on_error error, like for any other reply."""
        with pytest.raises(FlowError, match="unknown key 'falback'"):
            Engine.load(folder(tmp_path, project=PROJECT.replace("fallback:", "falback:")))


class TestRendering:
    def test_project_replies_render_with_user_and_flow_constants(self, tmp_path: Path) -> None:
        """The project's replies render with the user's name and their flow's constants."""
        engine = Engine.load(folder(tmp_path))
        replies = engine.error_replies(in_flow("welcome"), text("hi"), NOW, "boom")
        assert [body(r) for r in replies] == [
            "Sorry Ana, Lumen hit a snag.",
            "Type *menu* to start over.",
        ]
        assert {r.note for r in replies} == {"on_error"}
        [in_other, _] = engine.error_replies(in_flow("other"), text("hi"), NOW, "boom")
        assert body(in_other) == "Sorry Ana, Lumen Bookings hit a snag."

    def test_fallback_is_carried(self, tmp_path: Path) -> None:
        """The reply's template fallback is rendered into the Outgoing for a closed window."""
        engine = Engine.load(folder(tmp_path))
        first, second = engine.error_replies(in_flow("welcome"), None, NOW, "boom")
        assert first.fallback == TemplateCall("message_not_processed", ("Ana",))
        assert second.fallback is None

    def test_nothing_declared_gives_nothing(self, tmp_path: Path) -> None:
        """Without on_error (or without _project.yaml) the result is an empty tuple."""
        for project in ("", "constants: {business: Lumen}\n"):
            engine = Engine.load(folder(tmp_path / str(len(project)), project=project))
            assert engine.error_replies(in_flow("welcome"), text("hi"), NOW, "boom") == ()

    def test_flow_override(self, tmp_path: Path) -> None:
        """A flow's on_error replaces the project's for users in that flow only."""
        other = OTHER + 'on_error: "Booking is having trouble, {{ user.profile_name }}."\n'
        engine = Engine.load(folder(tmp_path, other=other))
        [reply] = engine.error_replies(in_flow("other"), text("hi"), NOW, "boom")
        assert body(reply) == "Booking is having trouble, Ana."
        assert reply.note == "on_error"
        assert len(engine.error_replies(in_flow("welcome"), text("hi"), NOW, "boom")) == 2

    def test_empty_flow_override_silences(self, tmp_path: Path) -> None:
        """``on_error: []`` in a flow means no error reply for users in it."""
        engine = Engine.load(folder(tmp_path, other=OTHER + "on_error: []\n"))
        assert engine.error_replies(in_flow("other"), text("hi"), NOW, "boom") == ()

    def test_new_or_stale_user_gets_the_project_replies(self, tmp_path: Path) -> None:
        """A user in no flow, or in a flow that no longer exists, gets the project's replies."""
        engine = Engine.load(folder(tmp_path, other=OTHER + "on_error: []\n"))
        for record in (user(), in_flow("gone")):
            replies = engine.error_replies(record, text("hi"), NOW, "boom")
            assert [body(r) for r in replies][1:] == ["Type *menu* to start over."]
            assert body(replies[0]) == "Sorry Ana, Lumen hit a snag."

    def test_message_fields_render_and_none_is_blank(self, tmp_path: Path) -> None:
        """``message`` is the failed message when given and blank when it is None."""
        project = 'on_error: "Could not handle [{{ message.text }}]"\n'
        engine = Engine.load(folder(tmp_path, project=project))
        record = in_flow("welcome")
        assert body(engine.error_replies(record, text("{{ 7*7 }}"), NOW, "x")[0]) == (
            "Could not handle [{{ 7*7 }}]"
        )
        assert body(engine.error_replies(record, None, NOW, "x")[0]) == "Could not handle []"

    def test_reason_is_never_shown(self, tmp_path: Path) -> None:
        """The failure reason goes to the logs, never into a reply."""
        engine = Engine.load(folder(tmp_path))
        reason = "KeyError: 'secret_internal_detail'"
        with structlog.testing.capture_logs() as logs:
            replies = engine.error_replies(in_flow("welcome"), text("hi"), NOW, reason)
        assert replies and "secret_internal_detail" not in repr(replies)
        assert any(e.get("reason") == reason for e in logs)


class TestRobustness:
    PROJECT = """
        on_error:
          - "You have {{ vars.count + 1 }} tries left."
          - "Still here."
    """

    def test_bad_stored_variable_falls_back_to_its_default(self, tmp_path: Path) -> None:
        """A stored value that breaks a reply is replaced by the variable's declared default."""
        engine = Engine.load(folder(tmp_path, project=self.PROJECT))
        with structlog.testing.capture_logs() as logs:
            replies = engine.error_replies(in_flow("welcome", count="x"), None, NOW, "boom")
        assert [body(r) for r in replies] == ["You have 1 tries left.", "Still here."]
        assert [e["event"] for e in logs if e["log_level"] != "info"] == ["error_reply_rerendered"]

    def test_reply_that_cannot_render_is_dropped_and_logged(self, tmp_path: Path) -> None:
        """A reply failing even with defaults is dropped, the others still sent, nothing raised."""
        welcome = WELCOME.replace("vars: {count: 0}", 'vars: {count: ""}')
        flows = folder(tmp_path, project=self.PROJECT, welcome=welcome)
        engine = Engine.load(flows)
        with structlog.testing.capture_logs() as logs:
            replies = engine.error_replies(in_flow("welcome", count="x"), None, NOW, "boom")
        assert [body(r) for r in replies] == ["Still here."]
        [failed] = [e for e in logs if e["event"] == "error_reply_failed"]
        assert failed["reply"] == f"{flows / '_project.yaml'}:2"
        assert failed["reason"] == "boom" and len(failed["errors"]) == 2

    def test_broken_record_variables_do_not_break_the_reply(self, tmp_path: Path) -> None:
        """A record whose variables are not a mapping still gets the error replies."""
        engine = Engine.load(folder(tmp_path, project=self.PROJECT))
        record = in_flow("welcome")
        object.__setattr__(record, "variables", None)
        assert len(engine.error_replies(record, text("hi"), NOW, "boom")) == 2

    def test_never_raises(self, tmp_path: Path) -> None:
        """Even a record that is not a record gives an empty tuple and a log line."""
        engine = Engine.load(folder(tmp_path))
        with structlog.testing.capture_logs() as logs:
            assert engine.error_replies(cast(UserRecord, None), None, NOW, "boom") == ()
        assert [e["event"] for e in logs] == ["error_reply_failed"]

    def test_blank_message_has_every_field(self) -> None:
        """The blank message context offers every field templates may name."""
        assert set(blank_message_context()) == MESSAGE_FIELDS
