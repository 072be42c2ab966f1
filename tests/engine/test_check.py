"""``check_folder``: every problem of a flows folder at once, each with its file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bot.engine import Engine, FallbackSpec, check_folder, format_findings
from bot.errors import FlowError
from tests.engine.helpers import FLOWS, line, only, write

BASE = textwrap.dedent(
    """
    flow: welcome
    states:
      start:
        say: "Hello"
        on:
          - text: go
            to: done
          - else:
            to: start
      done:
        final: true
        say: "Bye"
    """
).lstrip()


def flows(tmp_path: Path, welcome: str = BASE, **more: str) -> Path:
    """A flows folder with ``welcome.yaml`` and any other ``name_yaml=...`` files."""
    files = {"welcome.yaml": welcome}
    files.update({k.replace("_yaml", ".yaml").replace("_py", ".py"): v for k, v in more.items()})
    return write(tmp_path / "flows", files)


def errors_of(folder: Path) -> list[str]:
    return [str(f) for f in check_folder(folder) if f.severity == "error"]


class TestExampleFlows:
    def test_example_flows_check_clean(self) -> None:
        """The shipped example flows have no errors and no warnings."""
        assert check_folder(FLOWS) == []

    def test_base_fixture_is_clean(self, tmp_path: Path) -> None:
        """The minimal flow the other tests break is clean, so each test isolates one fault."""
        assert check_folder(flows(tmp_path)) == []


class TestSandboxRules:
    @pytest.mark.parametrize(
        ("expression", "reason"),
        [
            ("''.__class__.__mro__", "'.__class__' is refused by the sandbox"),
            ("vars.name | attr('upper')", "attr filter"),
            ("'{0.__class__}'.format(vars.name)", "str.format is refused"),
            ("(vars.name | int) // 0", "divides by zero"),
            ("'x' * 20000000", "at most"),
            ("vars.name.append(1)", "changes a value"),
        ],
    )
    def test_what_the_sandbox_refuses_is_an_error_at_its_line(
        self, tmp_path: Path, expression: str, reason: str
    ) -> None:
        """Expressions the sandbox refuses at run time used to pass bot check with 0 errors."""
        text = BASE.replace('say: "Hello"', 'say: "Hi {{ ' + expression + ' }}"')
        text = text.replace("states:", "vars: {name: ''}\nstates:")
        folder = flows(tmp_path, text)
        [error] = errors_of(folder)
        assert f"welcome.yaml:{line(folder, 'welcome.yaml', 'say: ')}: error:" in error
        assert reason in error

    def test_a_plain_format_call_is_fine(self, tmp_path: Path) -> None:
        """str.format without underscored fields is allowed, as the sandbox allows it."""
        text = BASE.replace('say: "Hello"', "say: \"{{ 'Hi {0}'.format(user.profile_name) }}\"")
        assert errors_of(flows(tmp_path, text)) == []


class TestReadmeExample:
    def test_the_documented_example_checks_clean(self, tmp_path: Path) -> None:
        """The first YAML example of flows/README.md is a valid flow."""
        readme = (FLOWS / "README.md").read_text(encoding="utf-8")
        example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
        hooks = "def slot_available(ctx):\n    return True\n\ndef hold_slot(ctx):\n    pass\n"
        folder = write(tmp_path / "flows", {"booking.yaml": example, "hooks.py": hooks})
        assert check_folder(folder) == []


class TestYamlSyntax:
    def test_syntax_error_reports_its_line(self, tmp_path: Path) -> None:
        """A YAML syntax error is one finding at the offending line."""
        folder = flows(tmp_path, BASE.replace('say: "Hello"', "say: Hello: there"))
        finding = only(check_folder(folder), "YAML syntax error")
        assert finding.file == folder / "welcome.yaml"
        assert finding.line == line(folder, "welcome.yaml", "Hello: there")

    def test_broken_file_does_not_hide_other_files(self, tmp_path: Path) -> None:
        """A file that does not parse still lets the other files be checked."""
        other = BASE.replace("flow: welcome", "flow: other").replace("to: done", "to: dnoe")
        folder = flows(tmp_path, BASE.replace('say: "Hello"', "say: [oops"), other_yaml=other)
        assert only(check_folder(folder), "YAML syntax error").file.name == "welcome.yaml"
        finding = only(check_folder(folder), "unknown state 'dnoe'")
        assert (finding.file.name, finding.line) == (
            "other.yaml",
            line(folder, "other.yaml", "dnoe"),
        )


class TestUnknownKeys:
    def test_unknown_state_key_suggests_the_closest(self, tmp_path: Path) -> None:
        """A misspelt key is reported with the valid key it most resembles."""
        folder = flows(tmp_path, BASE.replace("final: true", "finall: true"))
        finding = only(check_folder(folder), "unknown key 'finall'")
        assert "did you mean 'final'?" in finding.message
        assert finding.line == line(folder, "welcome.yaml", "finall")

    def test_unknown_reply_key(self, tmp_path: Path) -> None:
        """Keys inside a reply are checked too."""
        flow = BASE.replace('say: "Hello"', "say:\n          - text: Hi\n            buttns: [A]")
        folder = flows(tmp_path, flow)
        finding = only(check_folder(folder), "unknown key 'buttns'")
        assert "did you mean 'buttons'?" in finding.message
        assert finding.line == line(folder, "welcome.yaml", "buttns")

    def test_duplicate_state_is_reported_at_the_second(self, tmp_path: Path) -> None:
        """Two states of the same name are an error at the second, naming the first line."""
        folder = flows(tmp_path, BASE + '  start:\n    say: "again"\n')
        finding = only(check_folder(folder), "duplicate key 'start'")
        assert finding.line == line(folder, "welcome.yaml", "start:", nth=2)
        assert f"first at line {line(folder, 'welcome.yaml', 'start:')}" in finding.message


class TestTargets:
    def test_unknown_state_suggests_the_closest(self, tmp_path: Path) -> None:
        """``to:`` naming no state is an error with a suggestion, at the ``to:`` line."""
        folder = flows(tmp_path, BASE.replace("to: done", "to: dnoe"))
        finding = only(check_folder(folder), "unknown state 'dnoe'")
        assert finding.message.endswith("(did you mean 'done'?)")
        assert finding.line == line(folder, "welcome.yaml", "to: dnoe")

    def test_unknown_flow_and_unknown_state_of_another_flow(self, tmp_path: Path) -> None:
        """``goto:`` is checked against flow names and the target flow's states."""
        other = BASE.replace("flow: welcome", "flow: shop").replace("to: done", "goto: welcom")
        flow = BASE.replace("to: done", "goto: shop.strat")
        folder = flows(tmp_path, flow, shop_yaml=other)
        found = check_folder(folder)
        assert only(found, "unknown flow 'welcom'").line == line(folder, "shop.yaml", "goto:")
        state = only(found, "unknown state 'strat' in flow 'shop'")
        assert state.line == line(folder, "welcome.yaml", "goto: shop.strat")
        assert "did you mean 'start'?" in state.message

    def test_unknown_initial_state(self, tmp_path: Path) -> None:
        """``initial:`` must name a state."""
        folder = flows(tmp_path, BASE.replace("flow: welcome", "flow: welcome\ninitial: begin"))
        finding = only(check_folder(folder), "initial state 'begin'")
        assert finding.line == line(folder, "welcome.yaml", "initial: begin")


class TestReachability:
    def test_unreachable_state_is_a_warning(self, tmp_path: Path) -> None:
        """A state no rule leads to is reported (as a warning) at its own line."""
        folder = flows(tmp_path, BASE + '  lost:\n    final: true\n    say: "?"\n')
        finding = only(check_folder(folder), "unreachable")
        assert (finding.severity, finding.line) == (
            "warning",
            line(folder, "welcome.yaml", "lost:"),
        )

    def test_state_without_way_out_must_be_final(self, tmp_path: Path) -> None:
        """A non-final state whose rules never leave it is an error."""
        flow = BASE.replace("      - text: go\n        to: done\n", "")
        folder = flows(
            tmp_path, flow.replace("done:\n", "done:\n    on: [{else: true, to: start}]\n")
        )
        finding = only(check_folder(folder), "has no way out")
        assert "'start'" in finding.message
        assert finding.line == line(folder, "welcome.yaml", "start:")

    def test_final_state_with_rules(self, tmp_path: Path) -> None:
        """A final state may not declare rules."""
        folder = flows(
            tmp_path, BASE.replace("final: true", "final: true\n    on: [{text: x, to: start}]")
        )
        finding = only(check_folder(folder), "final state 'done' cannot have on: rules")
        assert finding.line == line(folder, "welcome.yaml", "text: x")

    def test_flow_never_entered(self, tmp_path: Path) -> None:
        """A flow nothing leads to is reported once, at its top."""
        folder = flows(tmp_path, other_yaml=BASE.replace("flow: welcome", "flow: other"))
        finding = only(check_folder(folder), "flow 'other' is never entered")
        assert (finding.file.name, finding.line, finding.severity) == ("other.yaml", 1, "warning")


class TestShadowing:
    def test_rule_after_else_can_never_fire(self, tmp_path: Path) -> None:
        """A rule below an unconditional ``else`` is an error at the dead rule."""
        flow = BASE.replace("      - text: go\n        to: done\n", "") + "    "
        flow = flow.replace(
            "        to: start\n", "        to: start\n      - text: go\n        to: done\n"
        )
        folder = flows(tmp_path, flow)
        finding = only(check_folder(folder), "can never fire")
        assert finding.line == line(folder, "welcome.yaml", "- text: go")
        assert f"line {line(folder, 'welcome.yaml', '- else:')}" in finding.message

    def test_duplicate_text_trigger(self, tmp_path: Path) -> None:
        """The same exact text twice: the second rule is dead."""
        flow = BASE.replace("      - else:", "      - text: GO\n        to: start\n      - else:")
        folder = flows(tmp_path, flow)
        assert only(check_folder(folder), "can never fire").line == line(
            folder, "welcome.yaml", "text: GO"
        )

    def test_partial_overlap_is_a_warning(self, tmp_path: Path) -> None:
        """One value of a later rule already taken is a warning, not an error."""
        flow = BASE.replace(
            "      - else:", "      - text: [go, run]\n        to: start\n      - else:"
        )
        folder = flows(tmp_path, flow)
        finding = only(check_folder(folder), "'go' is already handled")
        assert finding.severity == "warning"

    def test_guarded_rule_does_not_shadow(self, tmp_path: Path) -> None:
        """A rule with ``if:`` may fail, so the same trigger below it is fine."""
        flow = BASE.replace(
            "        to: done\n",
            "        if: ready\n        to: done\n      - text: go\n        to: start\n",
            1,
        )
        folder = flows(tmp_path, flow, hooks_py="def ready(ctx):\n    return True\n")
        assert check_folder(folder) == []


class TestJinja:
    def test_syntax_error_points_inside_block_text(self, tmp_path: Path) -> None:
        """A Jinja syntax error on the third line of a ``|`` text is reported on that line."""
        flow = BASE.replace(
            'say: "Hello"', "say: |\n      one\n      two\n      {{ user.profile_name }\n"
        )
        folder = flows(tmp_path, flow)
        finding = only(check_folder(folder), "Jinja syntax error")
        assert finding.line == line(folder, "welcome.yaml", "{{ user.profile_name }")

    def test_bare_name_suggests_the_root(self, tmp_path: Path) -> None:
        """``{{ name }}`` where ``name`` is a saved variable suggests ``vars.name``."""
        flow = BASE.replace("        to: done\n", "        save: name\n        to: done\n", 1)
        flow = flow.replace('say: "Bye"', 'say: "Bye {{ name }}"')
        folder = flows(tmp_path, flow)
        finding = only(check_folder(folder), "unknown name 'name'")
        assert "did you mean 'vars.name'?" in finding.message
        assert finding.line == line(folder, "welcome.yaml", "Bye {{")

    def test_unknown_variable_constant_and_field(self, tmp_path: Path) -> None:
        """Attributes of vars/const/user are checked against what the project declares."""
        flow = BASE.replace(
            "flow: welcome", "flow: welcome\nconstants: {shop: Lumen}\nvars: {name: ''}"
        )
        flow = flow.replace(
            'say: "Hello"', 'say: "{{ vars.nmae }} {{ const.shp }} {{ user.profil_name }}"'
        )
        folder = flows(tmp_path, flow)
        found = check_folder(folder)
        at = line(folder, "welcome.yaml", "vars.nmae")
        assert only(found, "'vars.nmae'").line == at
        assert "did you mean 'name'?" in only(found, "'vars.nmae'").message
        assert only(found, "'const.shp'").line == at
        assert "did you mean 'profile_name'?" in only(found, "'user.profil_name'").message

    def test_unknown_filter_and_bad_fallback_expression(self, tmp_path: Path) -> None:
        """Unknown filters and broken fallback parameter expressions are syntax errors."""
        flow = BASE.replace(
            'say: "Hello"',
            'say:\n      - text: "{{ user.profile_name | shout }}"\n'
            '        fallback: {template: hello, params: ["user.profile_name +"]}',
        )
        folder = flows(tmp_path, flow)
        found = [f for f in check_folder(folder) if "Jinja syntax error" in f.message]
        assert [f.line for f in found] == [
            line(folder, "welcome.yaml", "shout"),
            line(folder, "welcome.yaml", "fallback:"),
        ]


class TestHooks:
    def test_unknown_hook_suggests_the_closest(self, tmp_path: Path) -> None:
        """A hook name missing from hooks.py is an error with a suggestion."""
        flow = BASE.replace("        to: done\n", "        if: is_redy\n        to: done\n", 1)
        folder = flows(tmp_path, flow, hooks_py="def is_ready(ctx):\n    return True\n")
        finding = only(check_folder(folder), "unknown hook 'is_redy'")
        assert "did you mean 'is_ready'?" in finding.message
        assert finding.line == line(folder, "welcome.yaml", "is_redy")

    def test_missing_hooks_module(self, tmp_path: Path) -> None:
        """Naming a hook without a hooks module is reported at the hook."""
        folder = flows(
            tmp_path,
            BASE.replace("        to: done\n", "        do: [log_it]\n        to: done\n", 1),
        )
        finding = only(check_folder(folder), "hooks module")
        assert finding.line == line(folder, "welcome.yaml", "log_it")

    def test_named_hooks_module_must_exist(self, tmp_path: Path) -> None:
        """``hooks: name`` pointing at no file is an error at that line, even if unused."""
        folder = flows(tmp_path, BASE.replace("flow: welcome", "flow: welcome\nhooks: shop_hooks"))
        finding = only(check_folder(folder), "shop_hooks.py not found")
        assert finding.line == line(folder, "welcome.yaml", "hooks: shop_hooks")

    def test_syntax_error_in_hooks_file(self, tmp_path: Path) -> None:
        """A hooks file that does not import is reported in that file, at its line."""
        flow = BASE.replace("        to: done\n", "        do: [log_it]\n        to: done\n", 1)
        folder = flows(tmp_path, flow, hooks_py="import os\n\ndef log_it(ctx:\n    pass\n")
        finding = only(check_folder(folder), "syntax error in hooks")
        assert finding.file.name == "hooks.py" and finding.line == 3

    def test_hook_with_wrong_signature(self, tmp_path: Path) -> None:
        """A hook must take exactly the context."""
        flow = BASE.replace("        to: done\n", "        do: [log_it]\n        to: done\n", 1)
        folder = flows(tmp_path, flow, hooks_py="def log_it(ctx, extra):\n    pass\n")
        assert only(check_folder(folder), "exactly one argument").line == line(
            folder, "welcome.yaml", "log_it"
        )


class TestWhatsAppLimits:
    def test_too_many_buttons_and_long_title(self, tmp_path: Path) -> None:
        """More than 3 buttons, or a title over 20 characters, are errors at the button."""
        reply = (
            "say:\n      - text: Pick\n        buttons: [A, B, C, D]\n"
            '      - text: Pick\n        buttons: ["A title far too long to fit"]'
        )
        folder = flows(tmp_path, BASE.replace('say: "Hello"', reply))
        found = check_folder(folder)
        assert only(found, "4 buttons").line == line(folder, "welcome.yaml", "[A, B, C, D]")
        assert only(found, "button title is 27").line == line(
            folder, "welcome.yaml", "far too long"
        )

    def test_list_limits(self, tmp_path: Path) -> None:
        """Rows beyond 10, and over-long row titles, descriptions and button labels."""
        rows = "\n".join(f"            - Row {i}" for i in range(1, 11))
        reply = (
            "say:\n      - text: Pick\n        list:\n          button: A label of twenty-one\n"
            "          rows:\n" + rows + "\n"
            "            - {id: x, title: A row title of 25 chars!!, description: "
            + "d" * 73
            + "}\n"
        )
        folder = flows(tmp_path, BASE.replace('say: "Hello"', reply))
        found = check_folder(folder)
        assert only(found, "11 list rows").line == line(folder, "welcome.yaml", "id: x")
        assert only(found, "row title is 25").line == line(folder, "welcome.yaml", "id: x")
        assert only(found, "row description is 73").line == line(folder, "welcome.yaml", "id: x")
        assert only(found, "list button label is 21").line == line(
            folder, "welcome.yaml", "twenty-one"
        )

    def test_duplicate_button_ids(self, tmp_path: Path) -> None:
        """Two buttons with one id in the same message are an error."""
        reply = "say:\n      - text: Pick\n        buttons: [Yes, 'yes!']"
        folder = flows(tmp_path, BASE.replace('say: "Hello"', reply))
        assert only(check_folder(folder), "button id 'yes' is used twice").severity == "error"


class TestFallbackChecker:
    def test_checker_sees_specs_and_its_strings_become_errors(self, tmp_path: Path) -> None:
        """Each fallback is passed to the checker; what it returns is an error at that line."""
        reply = (
            "say:\n      - text: Hi\n        fallback:\n          template: greet\n"
            "          language: pt_BR\n          params: {name: user.profile_name}"
        )
        folder = flows(tmp_path, BASE.replace('say: "Hello"', reply))
        seen: list[FallbackSpec] = []

        def checker(spec: FallbackSpec) -> list[str]:
            seen.append(spec)
            return [f"template '{spec.template}' is not declared"]

        found = check_folder(folder, fallback_checker=checker)
        assert [
            (s.template, s.language, s.names, s.param_count, s.named, s.state) for s in seen
        ] == [("greet", "pt_BR", ("name",), 1, True, "start")]
        finding = only(found, "is not declared")
        assert (finding.file, finding.line) == (
            folder / "welcome.yaml",
            line(folder, "welcome.yaml", "fallback:"),
        )
        assert seen[0].line == finding.line

    def test_checker_crash_is_a_finding(self, tmp_path: Path) -> None:
        """A checker that raises becomes an error instead of hiding the other findings."""
        reply = "say:\n      - text: Hi\n        fallback: {template: greet}"
        folder = flows(
            tmp_path, BASE.replace('say: "Hello"', reply).replace("to: done", "to: dnoe")
        )

        def checker(spec: FallbackSpec) -> list[str]:
            raise KeyError(spec.template)

        found = check_folder(folder, fallback_checker=checker)
        assert only(found, "fallback checker failed").line == line(
            folder, "welcome.yaml", "fallback:"
        )
        assert only(found, "unknown state 'dnoe'")


class TestFormOfRules:
    def test_invalid_regex_and_unknown_save_source(self, tmp_path: Path) -> None:
        """A broken regular expression and an unknown ``from:`` are errors at their lines."""
        flow = BASE.replace("      - text: go\n", "      - regex: '(unclosed'\n      - text: go\n")
        flow = flow.replace(
            "        to: done\n", "        save: {var: x, from: txet}\n        to: done\n", 1
        )
        folder = flows(tmp_path, flow)
        found = check_folder(folder)
        assert only(found, "invalid regular expression").line == line(
            folder, "welcome.yaml", "unclosed"
        )
        source = only(found, "unknown source 'txet'")
        assert (
            source.line == line(folder, "welcome.yaml", "txet")
            and "did you mean 'text'?" in source.message
        )

    def test_rule_without_trigger_and_to_with_flow(self, tmp_path: Path) -> None:
        """A rule needs a trigger; ``to:`` cannot leave the flow."""
        flow = BASE.replace(
            "      - else:",
            "      - say: lost\n      - text: x\n        to: other.s\n      - else:",
        )
        folder = flows(tmp_path, flow)
        found = check_folder(folder)
        assert only(found, "a rule needs a trigger").line == line(
            folder, "welcome.yaml", "say: lost"
        )
        assert only(found, "use goto:").line == line(folder, "welcome.yaml", "other.s")


class TestReporting:
    def test_all_problems_at_once_in_order(self, tmp_path: Path) -> None:
        """Several files with several problems: one call reports them all, sorted."""
        other = BASE.replace("flow: welcome", "flow: other").replace("final: true", "fnal: true")
        flow = BASE.replace("to: done", "to: dnoe").replace('say: "Hello"', 'say: "{{ oops }}"')
        flow = flow.replace("      - text: go\n", "      - text: go\n        goto: other\n", 1)
        flow = flow.replace("        goto: other\n        to: dnoe\n", "        goto: other\n")
        folder = flows(
            tmp_path,
            flow.replace("- else:", "- text: z\n        to: dnoe\n      - else:"),
            other_yaml=other,
        )
        found = check_folder(folder)
        errors = [f for f in found if f.severity == "error"]
        assert {f.file.name for f in errors} == {"welcome.yaml", "other.yaml"}
        assert len(errors) >= 3
        assert found == sorted(
            found, key=lambda f: (str(f.file), f.line, f.severity != "error", f.message)
        )

    def test_format_findings_lines(self, tmp_path: Path) -> None:
        """``format_findings`` prints ``file:line: severity: message``, one per line."""
        folder = flows(tmp_path, BASE.replace("to: done", "to: dnoe"))
        text = format_findings(f for f in check_folder(folder) if f.severity == "error")
        at = line(folder, "welcome.yaml", "dnoe")
        assert (
            text
            == f"{folder / 'welcome.yaml'}:{at}: error: unknown state 'dnoe' (did you mean 'done'?)"
        )


class TestEngineLoad:
    def test_load_raises_with_every_error(self, tmp_path: Path) -> None:
        """``Engine.load`` refuses a folder with errors and carries all findings."""
        folder = flows(
            tmp_path, BASE.replace("to: done", "to: dnoe").replace("final: true", "fnal: true")
        )
        with pytest.raises(FlowError) as info:
            Engine.load(folder)
        assert len(info.value.findings) >= 2
        assert "unknown state 'dnoe'" in str(info.value)

    def test_load_keeps_warnings(self, tmp_path: Path) -> None:
        """Warnings do not stop a load and stay available on the engine."""
        folder = flows(tmp_path, BASE + '  lost:\n    final: true\n    say: "?"\n')
        engine = Engine.load(folder)
        assert [w.severity for w in engine.warnings] == ["warning"]
        assert engine.default_flow == "welcome"

    def test_default_flow_is_required_without_welcome(self, tmp_path: Path) -> None:
        """Two flows and no ``welcome``: the project must say where users start."""
        folder = write(
            tmp_path / "f",
            {"a.yaml": BASE.replace("welcome", "a"), "b.yaml": BASE.replace("welcome", "b")},
        )
        assert "default_flow" in only(check_folder(folder), "no 'welcome' flow").message
        engine = Engine.load(folder, default_flow="b")
        assert engine.default_flow == "b"
