"""``bench/bench_logic.py`` keeps working: the whole pipeline in one process, every reply sent.

The benchmark's figures are never asserted (they measure the machine); what is checked is that
it runs the real pipeline to the end: it exits with an error when a message got no reply.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_logic_answers_every_message() -> None:
    script = str(ROOT / "bench" / "bench_logic.py")
    result = subprocess.run(
        [sys.executable, script, "--messages", "128", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^round 1: \d+\.\d{3} ms CPU/msg", result.stdout, re.M), result.stdout
    assert "least:" in result.stdout
