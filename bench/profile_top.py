"""The top functions of each thread in a py-spy speedscope profile, by self and total time.

    python bench/profile_top.py PROFILE.speedscope.json [--top 15]

For profiles that ``bench/bench_pipeline.py --profile DIR`` records (``py-spy record
--format speedscope --threads``, idle samples left out): per thread, how many samples it was
busy, and the functions (lines merged, unless ``--lines``) ranked by the share of those
samples in which they were running (self) or on the stack (total; frames on every stack left
out).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any


def short(file: str) -> str:
    """``bot/store/sqlite.py`` for the project, ``aiohttp/web_protocol.py`` for libraries."""
    for marker in ("/site-packages/", "/lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    if "/bot/" in file:  # this checkout or another (bench_pipeline.py --bot-src)
        return "bot/" + file.split("/bot/", 1)[1]
    return file


def top(profile: dict[str, Any], frames: list[dict[str, Any]], n: int, lines: bool) -> list[str]:
    """The lines to print for one thread (``lines``: one entry per source line, not function)."""
    names = [
        f"{f['name']} ({short(f.get('file') or '?')}{':' + str(f['line']) if lines else ''})"
        for f in frames
    ]
    samples: list[list[int]] = profile["samples"]
    self_time: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for stack in samples:
        if not stack:
            continue
        self_time[names[stack[-1]]] += 1
        total.update({names[i] for i in stack})
    count = len(samples) or 1
    out = [f"{profile['name']}: {len(samples)} busy samples"]
    for title, counter in (("self", self_time), ("total", total)):
        out.append(f"  by {title}:")
        ranked = [(name, k) for name, k in counter.most_common() if k < count]  # not the roots
        out += [f"    {k / count:6.1%}  {name}" for name, k in ranked[:n]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--lines", action="store_true", help="rank source lines, not functions")
    args = parser.parse_args()
    data = json.loads(args.profile.read_text())
    frames = data["shared"]["frames"]
    for profile in data["profiles"]:
        print("\n".join(top(profile, frames, args.top, args.lines)))


if __name__ == "__main__":
    main()
