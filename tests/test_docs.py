"""The docs run: every Python and shell snippet of README.md and flows/README.md.

Each snippet runs as a user would run it, from a scratch project folder holding a copy of
the example flows (so ``windowbot.db`` and friends land there), with this tree on the path.
A snippet that starts a server runs until the server says it listens, then gets Ctrl-C.
The few commands deliberately not run are in :data:`NOT_RUN`, each with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "flows" / "README.md")
_FENCE = re.compile(r"^( *)```(python|sh)\n(.*?)^ *```", re.S | re.M)

#: Commands no test runs, by how they start, and why.
NOT_RUN = {
    "python -m pip install": "installs packages (network, minutes): the suite runs in the "
    "environment it builds",
    "python -m pytest": "is the test suite itself",
    "python bench/": "benchmarks take minutes and measure the machine; they are never run "
    "by the suite",
    "export WHATSAPP_TOKEN=EAAG…": "going live needs a real Meta token and MongoDB host: the "
    "values are placeholders (and the rest of that snippet needs them, so it is not run)",
}


@dataclass(frozen=True)
class Snippet:
    doc: str
    line: int
    language: str
    code: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            code = textwrap.dedent(match.group(3))
            name = doc.name if doc.parent == ROOT else "flows/README.md"
            found.append(Snippet(name, line, match.group(2), code))
    return found


def commands(code: str) -> list[str]:
    """The shell snippet's commands: continuation lines joined, ``&&`` chains split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        out += [part.strip() for part in line.strip().split(" && ") if part.strip()]
    return out


def python(command: str) -> str:
    """``command`` with ``python`` meaning this interpreter."""
    return re.sub(r"^python ", f"{sys.executable} ", command)


def not_run(command: str) -> str:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), "")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch bot project: the example flows, nothing else."""
    shutil.copytree(ROOT / "flows", tmp_path / "flows")
    return tmp_path


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "WHATSAPP_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_server(command: str, cwd: Path) -> None:
    """Start ``command``, wait for its ``listening`` line, Ctrl-C it; it must exit 0."""
    port = free_port()
    env = {**environment(), "BOT_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        f"exec {python(command)} --host 127.0.0.1 --port {port}",
        shell=True,
        cwd=cwd,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if '"listening"' in line:
            break
    else:
        pytest.fail(f"{command!r} ended without listening:\n{''.join(seen)}")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    try:
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, "".join(seen) + rest


SNIPPETS = snippets()


def test_every_doc_has_snippets() -> None:
    """The extraction finds the snippets (an empty list would make the other tests vacuous)."""
    assert len([s for s in SNIPPETS if s.language == "python"]) >= 2
    assert len([s for s in SNIPPETS if s.language == "sh"]) >= 4


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.language == "python"], ids=str)
def test_python_snippet_runs(snippet: Snippet, project: Path) -> None:
    """The snippet runs as a script, from a bot project folder, and exits 0."""
    port = str(free_port())  # the testing snippet's fixed port, moved to a free one
    code = snippet.code.replace("8090", port)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{snippet}:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.language == "sh"], ids=str)
def test_shell_snippet_runs(snippet: Snippet, project: Path) -> None:
    """Each command of the snippet exits 0 (servers: start, listen, Ctrl-C), or is in NOT_RUN."""
    ran = 0
    for command in commands(snippet.code):
        if not_run(command) and command.startswith("export "):
            break  # what follows needs the environment this would have set
        if not_run(command):
            continue
        ran += 1
        if command.split("#")[0].split()[:4] == ["python", "-m", "bot", "run"]:
            run_server(command.split("#")[0].strip(), project)
            continue
        done = subprocess.run(
            python(command),
            shell=True,
            cwd=project,
            env=environment(),
            stdin=subprocess.DEVNULL,  # bot chat ends at end of input
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{snippet}: {command}\n{done.stdout}\n{done.stderr}"
    if not ran:
        pytest.skip(f"{snippet}: deliberately not run: {not_run(commands(snippet.code)[0])}")


ORDER_STATUS = """\
flow: welcome
states:
  ask_order:
    say:
      - text: "Send me your order number (like AB-12345)."
        fallback: {template: order_update, params: [user.profile_name or "there", "'-'"]}
    on:
      - regex: '^(?P<order>[A-Z]{2}-\\d{5})$'
        save: {var: order, from: match.order}
        to: shipped
      - else:
        say: "That is not an order number."
  shipped:
    final: true
    say:
      - text: "Order {{ vars.order }} has shipped."
        fallback: {template: order_update, params: [user.profile_name or "there", vars.order]}
"""


def test_an_order_status_bot_from_flows_readme_alone(tmp_path: Path) -> None:
    """flows/README.md's templates.yaml example and a flow written from that page alone check
    clean, and the bot answers an opening 'AB-12345' with the order's status."""
    import asyncio

    from bot.config import load_config
    from bot.runtime import load_engine
    from tests.engine.helpers import bodies, text, user

    readme = (ROOT / "flows" / "README.md").read_text(encoding="utf-8")
    registry = next(b for b in readme.split("```yaml\n")[1:] if b.startswith("templates:"))
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "templates.yaml").write_text(registry.split("```", 1)[0], encoding="utf-8")
    (folder / "welcome.yaml").write_text(ORDER_STATUS, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "bot", "check", str(folder)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "0 error(s), 1 warning(s)" in done.stdout, done.stdout
    assert "PENDING" in done.stdout  # the example's pt_BR variant
    engine, _ = load_engine(load_config(None, environ={"BOT_FLOWS_DIR": str(folder)}))
    turn = asyncio.run(engine.handle(user(), text("AB-12345"), 0.0))
    assert bodies(turn)[-1] == "Order AB-12345 has shipped."
