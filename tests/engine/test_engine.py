"""``Engine.handle``: conversations through the example flows and small purpose-made ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bot.engine import Engine, check_folder
from bot.errors import RenderError
from bot.models import TemplateCall, UserRecord
from tests.engine.helpers import (
    FLOWS,
    NOW,
    Chat,
    bodies,
    button,
    location,
    media,
    payload,
    row,
    text,
    user,
    write,
)


@pytest.fixture
def engine() -> Engine:
    """The example flows, loaded afresh (their hooks keep booked slots in memory)."""
    return Engine.load(FLOWS)


def one_flow(tmp_path: Path, flow: str, hooks: str = "") -> Engine:
    """An engine over a single ``welcome`` flow (and optional hooks)."""
    files = {"welcome.yaml": flow}
    if hooks:
        files["hooks.py"] = hooks
    return Engine.load(write(tmp_path / "flows", files))


class TestWelcome:
    async def test_new_user_is_greeted_by_name_with_the_menu(self, engine: Engine) -> None:
        """A new user's first message enters welcome.menu and gets its exact Cloud API body."""
        turn = await Chat(engine).send(text("hello?"))
        assert (turn.trigger, turn.source_state) == ("start", "")
        assert (turn.record.flow, turn.record.state) == ("welcome", "menu")
        [reply] = turn.outgoing
        assert reply.note == "welcome.menu"
        assert reply.message == {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "Hi Ana! Welcome to Lumen Dental.\nHow can I help you today?"},
                "action": {
                    "buttons": [
                        {"type": "reply", "reply": {"id": "book", "title": "Book"}},
                        {"type": "reply", "reply": {"id": "hours", "title": "Hours"}},
                        {"type": "reply", "reply": {"id": "help", "title": "Help"}},
                    ]
                },
            },
        }
        assert reply.fallback == TemplateCall(
            "business_hours", ("Ana", "Mon-Fri 9:00-18:00, Sat 9:00-13:00"), language=""
        )

    async def test_unknown_text_gets_help_and_is_echoed_literally(self, engine: Engine) -> None:
        """User text is data: ``{{ 7*7 }}`` comes back as typed, never evaluated."""
        chat = Chat(engine)
        await chat.send(text("hi"))
        turn = await chat.send(text("{{ 7*7 }} {% if true %}x{% endif %}"))
        assert turn.trigger == "else"
        assert bodies(turn)[0] == (
            'Sorry, I didn\'t understand "{{ 7*7 }} {% if true %}x{% endif %}".'
        )
        assert "49" not in str(turn.outgoing)
        assert chat.at == "welcome.help"

    async def test_stop_opts_out_and_menu_opts_back_in(self, engine: Engine) -> None:
        """'stop' marks the user opted out of templates; coming back to the menu undoes it."""
        chat = Chat(engine)
        await chat.send(text("hi"))
        stopped = await chat.send(text("stop"))
        assert (stopped.record.state, stopped.record.opted_out) == ("stopped", True)
        back = await chat.send(text("menu"))
        assert (back.record.state, back.record.opted_out) == ("menu", False)

    async def test_hours_button_by_id(self, engine: Engine) -> None:
        """A reply-button press is matched by its id, not its title."""
        chat = Chat(engine)
        await chat.send(text("hi"))
        turn = await chat.send(button("hours", "Some other title"))
        assert turn.trigger == "reply hours / text hours, opening hours"
        assert bodies(turn) == ["We're open Mon-Fri 9:00-18:00, Sat 9:00-13:00."]
        assert chat.at == "welcome.hours"

    async def test_media_gets_an_answer(self, engine: Engine) -> None:
        """An image in the menu is acknowledged and followed by help."""
        chat = Chat(engine)
        await chat.send(text("hi"))
        turn = await chat.send(media("image"))
        assert bodies(turn)[0] == "Thanks for the image, but I can only read text here."
        assert chat.at == "welcome.help"


class TestBooking:
    async def test_welcome_to_booked_end_to_end(self, engine: Engine) -> None:
        """Menu → Book → name → slot from the list → Confirm: booked, with a reminder."""
        chat = Chat(engine, user(version=7))
        await chat.send(text("hi"))
        turn = await chat.send(button("book", "Book"))
        assert chat.at == "booking.ask_name" and turn.outgoing[0].note == "booking.ask_name"
        turn = await chat.send(text("  Ana Souza "))
        assert chat.at == "booking.pick_slot"
        assert chat.record.variables["name"] == "Ana Souza"
        listing = turn.outgoing[0].message
        assert listing is not None and listing["interactive"]["type"] == "list"
        assert listing["interactive"]["action"]["button"] == "See times"
        assert listing["interactive"]["action"]["sections"][0]["rows"][1] == {
            "id": "d1_1100",
            "title": "Tomorrow 11:00",
        }
        turn = await chat.send(row("d1_1100", "Tomorrow 11:00"))
        assert chat.at == "booking.confirm"
        assert bodies(turn) == ["Book *Tomorrow 11:00* for Ana Souza?"]
        turn = await chat.send(button("yes", "Confirm"))
        assert chat.at == "booking.booked"
        assert bodies(turn) == [
            "You're booked, Ana Souza: Tomorrow 11:00. We'll remind you an hour before."
        ]
        assert turn.outgoing[0].fallback == TemplateCall(
            "appointment_confirmation", {"name": "Ana Souza", "slot": "Tomorrow 11:00"}
        )
        [reminder] = turn.reminders
        midnight = NOW - NOW % 86_400
        assert reminder.at == midnight + 86_400 + 10 * 3600
        assert reminder.outgoing is not None and reminder.outgoing.fallback == TemplateCall(
            "appointment_reminder",
            {"name": "Ana Souza", "slot": "Tomorrow 11:00"},
            buttons=("CONFIRM",),
        )
        assert chat.record.version == 7
        turn = await chat.send(payload("CONFIRM", "Confirm"))
        assert bodies(turn) == ["Thanks for confirming, see you then!"]
        assert chat.at == "booking.booked"
        turn = await chat.send(text("thanks!"))
        assert (turn.trigger, chat.at) == ("restart", "welcome.menu")

    async def test_invalid_name_is_reprompted_without_moving(self, engine: Engine) -> None:
        """A name that fails ``pattern:`` gets the ``invalid:`` reply; state and vars stay."""
        chat = Chat(engine)
        await chat.send(text("hi"))
        await chat.send(text("book"))
        turn = await chat.send(text("R2D2"))
        assert turn.trigger == "invalid text *"
        assert bodies(turn) == ["Please send just your name (letters only, like Ana Souza)."]
        assert chat.at == "booking.ask_name" and "name" not in chat.record.variables

    async def test_taken_slot_falls_through_to_the_next_rule(self, engine: Engine) -> None:
        """When ``if: slot_available`` says no, the next matching rule fires instead."""
        chat = Chat(engine)
        for msg in (text("hi"), text("book"), text("Ana")):
            await chat.send(msg)
        turn = await chat.send(row("d2_0900", "Day after 09:00"))
        assert bodies(turn) == [
            "Sorry, Day after 09:00 was just taken. Please pick another time.",
            "Thanks, Ana! Which time suits you?",
        ]
        assert chat.at == "booking.pick_slot" and "slot_id" not in chat.record.variables

    async def test_two_users_cannot_book_the_same_slot(self, engine: Engine) -> None:
        """The sync action of one user's turn is seen by the sync condition of another's."""
        ana, bia = Chat(engine, user("1", "Ana")), Chat(engine, user("2", "Bia"))
        for chat in (ana, bia):
            for msg in (text("hi"), text("book"), text(chat.record.profile_name)):
                await chat.send(msg)
        await ana.send(row("d1_1500", "Tomorrow 15:00"))
        await ana.send(text("yes"))
        turn = await bia.send(row("d1_1500", "Tomorrow 15:00"))
        assert "was just taken" in bodies(turn)[0] and bia.at == "booking.pick_slot"

    async def test_cancel_goes_back_to_the_welcome_flow(self, engine: Engine) -> None:
        """``goto: welcome.menu`` switches flow and sends the rule's and the target's replies."""
        chat = Chat(engine)
        for msg in (text("hi"), text("book"), text("Ana"), row("d1_0900", "Tomorrow 09:00")):
            await chat.send(msg)
        turn = await chat.send(button("cancel"))
        assert chat.at == "welcome.menu"
        assert bodies(turn)[0] == "No problem, nothing was booked."
        assert [r.note for r in turn.outgoing] == ["booking.confirm", "welcome.menu"]


class TestCommands:
    @pytest.mark.parametrize(
        ("word", "where"),
        [("MENU", "welcome.menu"), (" stop ", "welcome.stopped"), ("Help", "welcome.help")],
    )
    async def test_project_commands_work_in_any_state(
        self, engine: Engine, word: str, where: str
    ) -> None:
        """Commands from _project.yaml win over a state's own rules, even mid-booking."""
        chat = Chat(engine)
        for msg in (text("hi"), text("book"), text("Ana")):
            await chat.send(msg)
        turn = await chat.send(text(word))
        assert turn.trigger.startswith("command text")
        assert turn.source_state == "booking.pick_slot" and chat.at == where

    async def test_state_can_turn_commands_off(self, tmp_path: Path) -> None:
        """``commands: false`` lets a state take words that are commands elsewhere."""
        engine = one_flow(
            tmp_path,
            """
            commands:
              - {text: help, to: start}
            states:
              start:
                say: Hi
                on: [{text: note, to: note}]
              note:
                commands: false
                say: What should I note?
                on: [{text: "*", save: memo, to: start}]
            """,
        )
        chat = Chat(engine)
        await chat.send(text("x"))
        await chat.send(text("note"))
        turn = await chat.send(text("help"))
        assert chat.record.variables["memo"] == "help" and turn.trigger == "text *"
        turn = await chat.send(text("help"))
        assert turn.trigger == "command text help"

    async def test_flow_commands_come_before_project_commands(self, tmp_path: Path) -> None:
        """A flow's own command beats a project command with the same words."""
        folder = write(
            tmp_path / "flows",
            {
                "_project.yaml": "commands:\n  - {text: help, goto: welcome.b}\n",
                "welcome.yaml": """
                    commands:
                      - {text: help, to: a, say: flow help}
                    states:
                      a: {say: A, on: [{else: true, to: b}]}
                      b: {say: B, on: [{else: true, to: a}]}
                    """,
            },
        )
        chat = Chat(Engine.load(folder))
        await chat.send(text("x"))
        turn = await chat.send(text("help"))
        assert bodies(turn) == ["flow help", "A"]


FORM = """
    vars: {seen: 0}
    states:
      ask:
        say: "Your order number, size or photo?"
        on:
          - regex: '^order\\s+(?P<num>\\d{3,6})$'
            save: {var: order, from: match.num}
            say: "Order {{ message.match.num }} noted."
            to: ask
          - keywords: [size, sizes]
            to: size
          - media: [image, document]
            save: photo
            say: "Got your {{ message.type }}."
          - location: true
            save: where
            say: "You are at {{ vars.where.latitude }}."
          - payload: CONFIRM
            say: "Confirmed by template button."
          - text: age
            to: age
      size:
        say: "S, M or L?"
        on:
          - text: "*"
            save: {var: size, choices: [S, M, L], invalid: "Only S, M or L."}
            to: ask
      age:
        say: "How old are you?"
        on:
          - text: "*"
            save: {var: age, from: number, min: 18, max: 120}
            to: ask
"""


class TestTriggersAndSaves:
    @pytest.fixture
    async def chat(self, tmp_path: Path) -> Chat:
        chat = Chat(one_flow(tmp_path, FORM))
        await chat.send(text("start"))
        return chat

    async def test_regex_groups_are_saved_and_rendered(self, chat: Chat) -> None:
        """Named groups feed ``save: from: match.NAME`` and ``message.match`` in replies."""
        turn = await chat.send(text("Order 12345"))
        assert chat.record.variables["order"] == "12345"
        assert bodies(turn) == ["Order 12345 noted.", "Your order number, size or photo?"]

    async def test_regex_miss_reprompts(self, chat: Chat) -> None:
        """No rule matching in a non-final state repeats the state's replies."""
        turn = await chat.send(text("order 12"))
        assert (turn.trigger, bodies(turn)) == ("reprompt", ["Your order number, size or photo?"])

    async def test_keywords_and_choices(self, chat: Chat) -> None:
        """Keywords match whole words; ``choices:`` store the canonical spelling or re-prompt."""
        await chat.send(text("what sizes do you have?"))
        assert chat.at == "welcome.size"
        turn = await chat.send(text("xl"))
        assert bodies(turn) == ["Only S, M or L."] and chat.at == "welcome.size"
        await chat.send(text(" m "))
        assert chat.record.variables["size"] == "M" and chat.at == "welcome.ask"

    async def test_number_bounds(self, chat: Chat) -> None:
        """``from: number`` converts and checks ``min:``/``max:``; invalid repeats the prompt."""
        await chat.send(text("age"))
        turn = await chat.send(text("12"))
        assert bodies(turn) == ["How old are you?"] and "age" not in chat.record.variables
        await chat.send(text("42"))
        assert chat.record.variables["age"] == 42

    async def test_media_location_and_template_button(self, chat: Chat) -> None:
        """Media by type, a location, and a template quick-reply payload each have a trigger."""
        turn = await chat.send(media("document", caption="invoice"))
        assert bodies(turn) == ["Got your document."]
        assert chat.record.variables["photo"]["kind"] == "document"
        turn = await chat.send(location(-23.5, -46.6))
        assert bodies(turn) == ["You are at -23.5."]
        turn = await chat.send(payload("CONFIRM", "Yes"))
        assert bodies(turn) == ["Confirmed by template button."]
        assert chat.at == "welcome.ask"

    async def test_default_variables_render_before_they_are_saved(self, chat: Chat) -> None:
        """Declared ``vars:`` defaults are visible to templates but not stored in the record."""
        assert "seen" not in chat.record.variables


HOOKED = """
    states:
      start:
        say: "Hi"
        do: [count_entry]
        on:
          - text: sync
            if: is_vip
            do: [remember]
            to: done
          - text: async
            if: async_yes
            unless: is_vip
            do: [later]
            to: done
          - text: "*"
            to: start
      done:
        final: true
        say: "Done {{ vars.entries }}"
"""

HOOKS = """
from bot.engine import HookContext
from bot.models import TemplateCall

async def async_yes(ctx: HookContext) -> bool:
    return True

def is_vip(ctx: HookContext) -> bool:
    return ctx.user.profile_name == "VIP"

def count_entry(ctx: HookContext) -> None:
    ctx.vars["entries"] = ctx.vars.get("entries", 0) + 1

def remember(ctx: HookContext) -> str:
    ctx.vars["when"] = ctx.now
    return f"Hello {ctx.user.profile_name}, state {ctx.state} of {ctx.flow}"

async def later(ctx: HookContext) -> None:
    ctx.schedule("see you", delay=60)
    ctx.schedule(TemplateCall("nudge", ("x",)), at=ctx.now + 3600, note="nudge")
"""


class TestHooks:
    @pytest.fixture
    def engine(self, tmp_path: Path) -> Engine:
        return one_flow(tmp_path, HOOKED + "    vars: {entries: 0}\n", HOOKS)

    async def test_sync_condition_and_action_returning_a_reply(self, engine: Engine) -> None:
        """A sync ``if:`` hook gates the rule; a ``do:`` hook's string becomes a reply."""
        chat = Chat(engine, user(name="VIP"))
        await chat.send(text("x"))
        turn = await chat.send(text("sync"))
        assert bodies(turn) == ["Hello VIP, state start of welcome", "Done 1"]
        assert chat.record.variables["when"] == NOW

    async def test_async_condition_unless_and_reminders(self, engine: Engine) -> None:
        """Async hooks are awaited; ``unless:`` blocks; ``schedule`` records reminders."""
        vip = Chat(engine, user(name="VIP"))
        await vip.send(text("x"))
        assert (await vip.send(text("async"))).trigger == "text *"
        chat = Chat(engine)
        await chat.send(text("x"))
        turn = await chat.send(text("async"))
        assert chat.at == "welcome.done"
        first, second = turn.reminders
        assert first.at == NOW + 60 and first.outgoing is not None and first.template is None
        assert first.outgoing.message == {
            "type": "text",
            "text": {"body": "see you", "preview_url": False},
        }
        assert second.template == TemplateCall("nudge", ("x",)) and second.note == "nudge"

    async def test_entry_hooks_run_on_every_entry(self, engine: Engine) -> None:
        """A state's ``do:`` runs each time the state is entered, re-entries included."""
        chat = Chat(engine)
        await chat.send(text("x"))
        await chat.send(text("again"))
        assert chat.record.variables["entries"] == 2

    async def test_context_is_frozen(self, engine: Engine, tmp_path: Path) -> None:
        """Hooks can change ``ctx.vars`` but not rebind the context's fields."""
        hooks = HOOKS + "\ndef remember(ctx):\n    ctx.flow = 'x'\n"
        flow = HOOKED + "    vars: {entries: 0}\n"
        chat = Chat(one_flow(tmp_path / "b", flow, hooks), user(name="VIP"))
        await chat.send(text("x"))
        with pytest.raises(dataclasses.FrozenInstanceError):
            await chat.send(text("sync"))


class TestRecords:
    async def test_unknown_state_resets_to_the_default_flow(self, engine: Engine) -> None:
        """A record naming a state that no longer exists starts over, other fields intact."""
        record = dataclasses.replace(
            user(),
            flow="booking",
            state="gone",
            language="pt_BR",
            version=3,
            variables={"name": "Ana"},
        )
        turn = await engine.handle(record, text("hi"), NOW)
        assert (turn.trigger, turn.source_state) == ("reset", "booking.gone")
        assert turn.record == dataclasses.replace(record, flow="welcome", state="menu")

    async def test_render_errors_name_the_file_and_line(self, tmp_path: Path) -> None:
        """A value that breaks a reply at run time (here a division by zero, which is not a
        Jinja error) is a RenderError naming the flow file and line, not a bare traceback."""
        engine = one_flow(
            tmp_path,
            """
            states:
              start:
                say: "{{ 10 // (message.text | length - 1) }}"
                on: [{else: true, to: end}]
              end: {final: true}
            """,
        )
        with pytest.raises(RenderError, match=r"welcome\.yaml:3: ZeroDivisionError"):
            await engine.handle(user(), text("x"), NOW)

    async def test_rendered_output_is_bounded(self, tmp_path: Path) -> None:
        """A template cannot build a huge string ('x' * 20000000 used to render)."""
        engine = one_flow(
            tmp_path,
            """
            states:
              start:
                say: "{{ 'x' * (message.text | int) }}"
                on: [{else: true, to: end}]
              end: {final: true}
            """,
        )
        with pytest.raises(RenderError, match=r"welcome\.yaml:3: .*at most"):
            await engine.handle(user(), text("20000000"), NOW)


class TestSharedMachines:
    async def test_one_machine_serves_every_user(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """1000 users: no machine is built, none gains models, the machines are the same."""
        import transitions.core

        built: list[Any] = []
        original = transitions.core.Machine.__init__

        def spy(self: Any, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            original(self, *args, **kwargs)

        monkeypatch.setattr(transitions.core.Machine, "__init__", spy)
        machines = {name: flow.machine for name, flow in engine.flows.items()}
        records: list[UserRecord] = []
        for i in range(1000):
            record = user(key=f"u{i}")
            for msg in (text("hi"), text("book"), text("Ana")):
                record = (await engine.handle(record, msg, NOW)).record
            records.append(record)
        assert built == []
        assert {r.state for r in records} == {"pick_slot"}
        for name, flow in engine.flows.items():
            assert flow.machine is machines[name]
            assert len(flow.machine.models) == 0
            assert flow.machine.model_graphs == {}


#: A fallback parameter whose path runs through a value that is not there: it fails to render.
MISSING_IN_FALLBACK = """
vars: {where: ""}
states:
  start:
    say:
      - text: Hi
        fallback: {template: t, params: [vars.where.latitude]}
    on: [{else: true, to: end}]
  end: {final: true}
"""


class TestStrictRendering:
    async def test_missing_value_in_a_fallback_param_raises(self, tmp_path: Path) -> None:
        """A parameter path through a value that is not there fails loudly, never renders ''."""
        engine = one_flow(tmp_path, MISSING_IN_FALLBACK)
        with pytest.raises(RenderError, match="latitude"):
            await engine.handle(user(), text("x"), NOW)


ORDER_STATUS = """
flow: welcome
{first}
states:
  ask_order:
    say: "Send me your order number."
    on:
      - regex: '^(?P<order>[A-Z]{{2}}-\\d{{5}})$'
        save: {{var: order, from: match.order}}
        to: status
      - else:
        say: "That is not an order number (like AB-12345)."
  status:
    say: "Order {{{{ vars.order }}}} has shipped."
    final: true
"""


class TestFirstMessage:
    async def test_first_message_is_matched_after_the_greeting(self, tmp_path: Path) -> None:
        """A new user's first message 'AB-12345' is taken as the order number (it used to get
        only 'Send me your order number')."""
        engine = one_flow(tmp_path, ORDER_STATUS.format(first=""))
        turn = await engine.handle(user(), text("AB-12345"), NOW)
        assert bodies(turn) == ["Send me your order number.", "Order AB-12345 has shipped."]
        assert turn.trigger.startswith("start, ") and turn.record.state == "status"

    async def test_else_and_wildcards_do_not_answer_a_greeting(self, tmp_path: Path) -> None:
        """A first message no specific rule takes gets the greeting alone, not the else: reply."""
        engine = one_flow(tmp_path, ORDER_STATUS.format(first=""))
        turn = await engine.handle(user(), text("hi"), NOW)
        assert bodies(turn) == ["Send me your order number."] and turn.trigger == "start"

    async def test_greet_only_is_a_per_flow_choice(self, tmp_path: Path) -> None:
        """first_message: greet answers a first message with the greeting alone."""
        engine = one_flow(tmp_path, ORDER_STATUS.format(first="first_message: greet"))
        turn = await engine.handle(user(), text("AB-12345"), NOW)
        assert bodies(turn) == ["Send me your order number."] and turn.record.state == "ask_order"

    async def test_after_a_final_state_the_next_message_starts_over_and_is_matched(
        self, tmp_path: Path
    ) -> None:
        """In a final state the next message restarts the default flow, matched the same way."""
        engine = one_flow(tmp_path, ORDER_STATUS.format(first=""))
        done = (await engine.handle(user(), text("AB-12345"), NOW)).record
        turn = await engine.handle(done, text("CD-67890"), NOW)
        assert bodies(turn) == ["Send me your order number.", "Order CD-67890 has shipped."]
        assert turn.trigger.startswith("restart, ")

    def test_unknown_first_message_value_is_an_error(self, tmp_path: Path) -> None:
        """first_message: must be match or greet; bot check names the line."""
        folder = write(
            tmp_path / "flows", {"welcome.yaml": ORDER_STATUS.format(first="first_message: maybe")}
        )
        [finding] = [f for f in check_folder(folder) if f.severity == "error"]
        assert finding.line == 2 and "match or greet" in finding.message


PURE_AND_NOT = {
    "welcome.yaml": """
        flow: welcome
        initial: start
        states:
          start:
            say: "You said {{ message.text }}"
            on:
              - text: "do"
                do: [shout]
                to: start
              - text: "if"
                if: allowed
                to: start
              - text: "unless"
                unless: allowed
                to: start
              - text: "enter"
                to: entered
              - text: "*"
                to: start
          entered:
            do: [greet]
            say: "entered"
            on: [{text: "*", to: start}]
        """,
    "hooks.py": """
        from pathlib import Path

        CALLS = Path(__file__).with_name("calls.txt")


        def _called(name):
            with CALLS.open("a") as calls:
                calls.write(name + "\\n")


        def shout(ctx):
            _called("shout")
            return "HEY"


        def allowed(ctx):
            _called("allowed")
            return True


        def greet(ctx):
            _called("greet")
        """,
}


class TestHandlePure:
    """``handle_pure``: the same turn as ``handle`` when no hook would run, else ``None``
    with nothing called (the dispatcher runs such turns before their message is stored)."""

    async def test_a_turn_without_hooks_is_the_turn_handle_gives(self, tmp_path: Path) -> None:
        engine = Engine.load(write(tmp_path / "flows", PURE_AND_NOT))
        new = user()
        for record, message in [
            (new, text("hi")),
            (user(flow="welcome", state="start"), text("x")),
        ]:
            pure = engine.handle_pure(record, message, NOW)
            assert pure is not None
            assert pure == await engine.handle(record, message, NOW)
        assert pure is not None and bodies(pure) == ["You said x"]
        assert not (tmp_path / "flows" / "calls.txt").exists()

    @pytest.mark.parametrize(
        ("said", "calls"),
        [("do", "shout"), ("if", "allowed"), ("unless", "allowed"), ("enter", "greet")],
    )
    async def test_a_turn_that_would_call_a_hook_is_none_and_calls_nothing(
        self, tmp_path: Path, said: str, calls: str
    ) -> None:
        engine = Engine.load(write(tmp_path / "flows", PURE_AND_NOT))
        record, calls_file = user(flow="welcome", state="start"), tmp_path / "flows" / "calls.txt"
        assert engine.handle_pure(record, text(said), NOW) is None
        assert not calls_file.exists()
        await engine.handle(record, text(said), NOW)  # the hook does run there
        assert calls_file.read_text().split() == [calls]

    async def test_a_paused_user_or_a_failing_render_is_left_to_handle(
        self, tmp_path: Path
    ) -> None:
        engine = one_flow(tmp_path, MISSING_IN_FALLBACK)
        assert engine.handle_pure(user(), text("x"), NOW) is None  # handle raises RenderError
        paused = user(flow="welcome", state="start", paused=True, paused_reason="agent")
        assert engine.handle_pure(paused, text("x"), NOW) is None
        assert (await engine.handle(paused, text("x"), NOW)).trigger == "paused"
