"""``bot init``: a new project passes ``bot check`` and its own test as created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.server import ROOT


def bot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bot ARGS`` in ``cwd``, importing this tree."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BOT_CONFIG", None)
    env.pop("BOT_FLOWS_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


class TestInit:
    def test_new_project_passes_check_and_its_own_test(self, tmp_path: Path) -> None:
        """init → check (0 errors, 0 warnings) → the generated pytest test passes."""
        project = tmp_path / "mybot"
        made = bot("init", str(project), cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        for name in (
            "windowbot.toml",
            "flows/welcome.yaml",
            "flows/templates.yaml",
            "flows/hooks.py",
            "tests/test_welcome.py",
        ):
            assert (project / name).is_file(), name
        checked = bot("check", cwd=project)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "1 flow file(s), 0 error(s), 0 warning(s)" in checked.stdout
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        tested = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "1 passed" in tested.stdout

    def test_generated_test_fails_when_the_flow_changes(self, tmp_path: Path) -> None:
        """The generated test checks the flow: an edited reply makes it fail."""
        project = tmp_path / "mybot"
        assert bot("init", str(project), cwd=tmp_path).returncode == 0
        flow = project / "flows" / "welcome.yaml"
        flow.write_text(flow.read_text().replace("9:00 to 18:00", "10:00 to 16:00"))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        tested = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert tested.returncode == 1 and "1 failed" in tested.stdout

    def test_a_non_empty_folder_is_refused_and_left_alone(self, tmp_path: Path) -> None:
        """init into a folder with a file exits 1 with a clear line; the file is untouched."""
        (tmp_path / "notes.txt").write_text("mine")
        refused = bot("init", str(tmp_path), cwd=tmp_path)
        assert refused.returncode == 1
        assert "is not empty" in refused.stderr and "Traceback" not in refused.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
        assert (tmp_path / "notes.txt").read_text() == "mine"
