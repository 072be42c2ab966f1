"""``remind:`` and ``cancel_reminder:`` in flow files: checked, then run as part of a turn."""

from __future__ import annotations

from pathlib import Path

from bot.engine import Engine, check_folder
from tests.engine.helpers import NOW, Chat, line, only, text, write

FLOW = """
flow: visit
vars:
  at: ""
  ref: ""
states:
  start:
    say: "Hello"
    on:
      - regex: "book (?P<ref>\\\\w+) at (?P<at>\\\\S+)"
        save:
          - { var: ref, from: match.ref }
          - { var: at, from: match.at }
        remind:
          at: "{{ vars.at }} - 1h"
          key: "visit:{{ vars.ref }}"
          expires_after: 30m
          resume: visit.reminded
          say:
            text: "Your visit {{ vars.ref }} is in an hour."
        to: start
      - text: later
        remind:
          at: "in 2h"
          template: follow_up
          params: ["'Ana'"]
        to: start
      - regex: "cancel (?P<ref>\\\\w+)"
        cancel_reminder: "visit:{{ message.match.ref }}"
        to: start
      - text: bye
        to: done
      - else:
        to: start
  done:
    final: true
  reminded:
    say: "Still coming?"
    on:
      - else:
        to: start
"""


def folder(tmp_path: Path, flow: str = FLOW) -> Path:
    return write(tmp_path / "flows", {"visit.yaml": flow})


class TestCheck:
    def test_the_example_is_clean_and_its_resume_point_reachable(self, tmp_path: Path) -> None:
        """A resume point counts as reachable: no unreachable warning for it."""
        assert check_folder(folder(tmp_path)) == []

    def test_an_unknown_resume_point_is_an_error(self, tmp_path: Path) -> None:
        """resume: must name a state of the project."""
        flows = folder(tmp_path, FLOW.replace("resume: visit.reminded", "resume: visit.nope"))
        found = only(check_folder(flows), "resume: 'visit.nope' is not a state")
        assert found.line == line(flows, "visit.yaml", "resume: visit.nope")

    def test_a_recurring_at_is_an_error(self, tmp_path: Path) -> None:
        """Recurring schedules are refused when the flow is checked, with the reason."""
        flows = folder(tmp_path, FLOW.replace('at: "in 2h"', 'at: "every day at 09:00"'))
        only(check_folder(flows), "recurring content and subscription messaging")

    def test_say_or_template_exactly(self, tmp_path: Path) -> None:
        """A reminder without what to send is an error naming both ways."""
        flows = folder(tmp_path, FLOW.replace("          template: follow_up\n", ""))
        only(check_folder(flows), "remind: needs either say:")

    def test_a_bad_duration_is_an_error(self, tmp_path: Path) -> None:
        """expires_after: must be a duration."""
        flows = folder(tmp_path, FLOW.replace("expires_after: 30m", "expires_after: soon"))
        only(check_folder(flows), "'soon' is not a duration")


class TestTurn:
    async def test_remind_schedules_a_keyed_reminder(self, tmp_path: Path) -> None:
        """The rendered time, key, expiry and resume point reach the turn's reminders."""
        chat = Chat(Engine.load(folder(tmp_path)))
        await chat.send(text("hi"))
        turn = await chat.send(text("book r42 at 2030-01-02T10:00:00Z"))
        [reminder] = turn.reminders
        assert reminder.at == 1893578400.0 - 3600  # 2030-01-02T09:00:00Z
        assert (reminder.key, reminder.expires_after, reminder.resume) == (
            "visit:r42",
            1800.0,
            "visit.reminded",
        )
        assert reminder.outgoing is not None and reminder.outgoing.message == {
            "type": "text",
            "text": {"body": "Your visit r42 is in an hour.", "preview_url": False},
        }

    async def test_a_template_alone(self, tmp_path: Path) -> None:
        """template: directly under remind: is a business-initiated template reminder."""
        chat = Chat(Engine.load(folder(tmp_path)))
        await chat.send(text("hi"))
        [reminder] = (await chat.send(text("later"))).reminders
        assert reminder.at == NOW + 7200
        assert reminder.template is not None and reminder.template.parameters == ("Ana",)

    async def test_cancel_reminder_names_the_rendered_key(self, tmp_path: Path) -> None:
        """cancel_reminder: renders its key for the turn to cancel."""
        chat = Chat(Engine.load(folder(tmp_path)))
        await chat.send(text("hi"))
        turn = await chat.send(text("cancel r42"))
        assert (turn.cancels, turn.reminders) == (("visit:r42",), ())
