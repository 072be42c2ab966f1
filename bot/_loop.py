"""The event loop the long-running commands (``bot run``, ``bot worker``) run on.

uvloop (libuv, the loop of Node.js) runs asyncio's transports and callbacks in C; aiohttp's
documentation recommends it for servers. Under load it takes about a tenth of ``bot run``'s
CPU per message off (``bench/``). ``server.event_loop`` picks it: ``auto`` uses it where it
is installed (a dependency on Linux and macOS; Windows has none), ``uvloop`` insists on it,
``asyncio`` keeps the standard library's loop (e.g. for a hook library that needs it).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

CHOICES = ("auto", "uvloop", "asyncio")


def uvloop_installed() -> bool:
    """Whether uvloop can be imported."""
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the loop ``choice`` names (``None``: asyncio's default)."""
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return None
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the running loop's kind, for the start-up log line."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
