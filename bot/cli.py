"""The ``bot`` command: run, check, graph, chat, send, templates, stats."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import platform
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
    PayloadEncodingError,
)

from bot import _loop
from bot.config import Config, load_config
from bot.errors import BotError
from bot.log import configure_logging

log = structlog.get_logger("windowbot.cli")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    parser = argparse.ArgumentParser(
        prog="bot",
        description="windowbot: WhatsApp Business bots as flow files.",
        epilog="`bot COMMAND --help` shows a command's options; README.md is the guide.",
    )
    parser.add_argument("--version", action="version", version=version())
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: $BOT_CONFIG, else ./windowbot.toml if present, "
        "else built-in defaults)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="start the webhook server")
    run.add_argument("--host", default=None, help="interface to listen on (default 0.0.0.0)")
    run.add_argument("--port", type=int, default=None, help="port (default 8080)")
    run.add_argument(
        "--record-only",
        action="store_true",
        help="record every message, answer none (no flows are loaded) "
        "(also BOT_RECORD_ONLY=1 or [flows] record_only = true)",
    )
    run.add_argument(
        "--reload",
        action="store_true",
        help="pick up edits to flows, templates and hooks while serving (development)",
    )
    init = sub.add_parser("init", help="create a new bot project in a new or empty folder")
    init.add_argument("directory", type=Path, help="the folder to create")
    check = sub.add_parser("check", help="check every flow and template; exit 1 on errors")
    check.add_argument(
        "flows_dir",
        nargs="?",
        type=Path,
        default=None,
        help="the flows folder (default: [flows] dir of the config, or BOT_FLOWS_DIR)",
    )
    graph = sub.add_parser("graph", help="print a flow as a Mermaid state diagram")
    graph.add_argument("flow", help="the flow's name")
    graph.add_argument("--output", type=Path, default=None, help="write Markdown to this file")
    chat = sub.add_parser("chat", help="talk to your flows in the terminal (a throwaway store)")
    chat.add_argument("--user", default="15550000001", help="the wa_id to chat as")
    chat.add_argument("--name", default="You", help="the profile name to chat as")
    chat.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="chat in this store (e.g. the configured one) instead of a throwaway one; "
        "/wait is then refused: a fake clock never reaches a real store",
    )
    send = sub.add_parser("send", help="send a business-initiated message now; exit 1 if not sent")
    send.add_argument("user", help="the recipient's wa_id")
    send.add_argument(
        "--text", help="a text message: sent as is while the window is open, else --template"
    )
    send.add_argument(
        "--template", help="a template from flows/templates.yaml (the fallback of --text)"
    )
    send.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="VALUE|NAME=VALUE",
        help="a template parameter (repeat; NAME=VALUE for named templates)",
    )
    send.add_argument("--language", default="", help="template language (default: the chain)")
    templates = sub.add_parser("templates", help="keep templates.yaml in step with Meta")
    tsub = templates.add_subparsers(dest="templates_command", required=True, metavar="ACTION")
    pull = tsub.add_parser("pull", help="update templates.yaml from the account (WHATSAPP_WABA_ID)")
    pull.add_argument("--check", action="store_true", help="change nothing; exit 1 if they differ")
    push = tsub.add_parser("push", help="submit the variants Meta does not have yet")
    push.add_argument("names", nargs="*", metavar="NAME", help="only these templates")
    tstatus = tsub.add_parser("status", help="the file next to Meta's live word (webhooks)")
    stats = sub.add_parser("stats", help="inbox counts and the pricing ledger")
    from bot._remind_cli import add_parsers

    reminders = add_parsers(sub)  # bot remind add|list|cancel, bot worker
    commands = (run, init, check, graph, chat, send, templates, pull, push, tstatus, stats)
    for sp in (*commands, *reminders):  # --config is accepted after the command too
        sp.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bot`` console script."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config or os.environ.get("BOT_CONFIG") or None)
    except BotError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log.level, config.log.format, cache=args.command == "run")
    try:
        if args.command == "run":
            if args.record_only:
                config = replace(config, flows=replace(config.flows, record_only=True))
            return _run(config, args.host, args.port, reload=args.reload)
        if args.command in ("remind", "worker"):
            from bot import _remind_cli

            return _remind_cli.main(config, args)
        from bot import commands

        if args.command == "init":
            return commands.init(args.directory)
        if args.command == "check":
            if args.flows_dir is not None:
                config = replace(config, flows=replace(config.flows, dir=args.flows_dir.resolve()))
            return commands.check(config)
        if args.command == "graph":
            return commands.graph(config, args.flow, args.output)
        if args.command == "chat":
            from bot.chat import run_chat

            return run_chat(config, args.user, args.name, store_url=args.store)
        if args.command in ("templates", "stats"):
            return asyncio.run(_templates(config, args))
        if args.command == "send" and not (args.text or args.template):
            print("bot send: give --text, --template, or both", file=sys.stderr)
            return 2
        if args.command == "send":
            return asyncio.run(
                commands.send(
                    config, args.user, args.text, args.template, args.param, args.language
                )
            )
    except BotError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

    raise AssertionError(args.command)  # argparse refuses unknown commands


async def _templates(config: Config, args: argparse.Namespace) -> int:
    from bot import template_commands

    if args.command == "stats":
        return await template_commands.stats_command(config)
    if args.templates_command == "pull":
        return await template_commands.pull_command(config, check=args.check)
    if args.templates_command == "push":
        return await template_commands.push_command(config, args.names)
    return await template_commands.status_command(config)


def version() -> str:
    """``windowbot X.Y.Z (Python A.B.C)``: the installed distribution's version."""
    try:
        number = metadata.version("windowbot")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        number = "unknown (not installed)"
    return f"windowbot {number} (Python {platform.python_version()})"


def _run(config: Config, host: str | None, port: int | None, *, reload: bool = False) -> int:
    from bot.runtime import build_app

    app = build_app(config, reload=reload)
    try:
        _loop.run(
            _serve(app, host or config.server.host, port or config.server.port, config.server.path),
            config.server.event_loop,
        )
    except KeyboardInterrupt:  # a second Ctrl-C during the clean-up
        pass
    except BotError:
        raise  # StoreUnavailable is a ConnectionError too: main() reports it
    except OSError as exc:  # the port is taken, the host is not an address of this machine
        print(f"bot: cannot listen: {exc} (pick another --port or --host)", file=sys.stderr)
        return 1
    return 0


async def _serve(app: web.Application, host: str, port: int, path: str) -> None:
    """What ``web.run_app`` did, on :func:`make_runner`'s runner, until SIGINT or SIGTERM.

    The runner is cleaned up (store closed, workers stopped) before anything else is
    cancelled, as ``run_app`` does.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still interrupts
            loop.add_signal_handler(sig, stop.set)
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        _settle_heap()
        log.info(
            "listening", webhook=f"http://{host}:{port}{path}", event_loop=_loop.running_loop_name()
        )
        await stop.wait()
    finally:
        for sig in signals:  # a second Ctrl-C interrupts the clean-up
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
        await runner.cleanup()


def _settle_heap() -> None:
    """Tune the garbage collector for serving, once everything long-lived is loaded.

    The flows, templates, libraries and sessions loaded at start-up live as long as the
    process: ``gc.freeze`` takes them out of every later collection. Each message allocates
    a few hundred short-lived objects, so the default threshold (700) ran a young collection
    every message or two; a larger one keeps young collections rare and cheap (most objects
    are freed by reference counting anyway). About 5% of CPU per message (bench/).
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(20_000, second, third)


MAX_LINE_BYTES = 16 * 1024
"""Longest request line or header the server reads (aiohttp's default is 8190 bytes)."""

_BAD_REQUEST = {
    LineTooLong: f"the request line or a header is longer than {MAX_LINE_BYTES} bytes",
    BadStatusLine: "the request line is malformed",
    InvalidHeader: "a header is malformed",
    PayloadEncodingError: "the body's encoding is malformed or not supported",
}


def make_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """An ``AppRunner`` for ``app`` whose HTTP errors never repeat what the client sent.

    aiohttp answers a request it cannot parse with a 400 that quotes the offending bytes,
    and logs them: for a too long handshake URL those hold the verify token. This runner's
    connections answer such requests with a fixed reason and log one line without the bytes.
    ``kwargs`` go to the runner (``handle_signals``, ``shutdown_timeout``...).
    """
    _scrub_aiohttp_logs()
    return _Runner(
        app,
        access_log=None,
        keepalive_timeout=75.0,  # run_app's
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_LINE_BYTES,
        **kwargs,
    )


class _RequestHandler(web.RequestHandler):
    """aiohttp's connection protocol, minus the echo and the log of unparsable requests."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        why = next(
            (text for kind, text in _BAD_REQUEST.items() if isinstance(exc, kind)),
            "the request is not valid HTTP/1.1",
        )
        log.warning("http_request_refused", status=status, reason=why, error=type(exc).__name__)
        response = web.Response(status=status)
        response.text = f"{status} {response.reason}: {why}"
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            # aiohttp reads the rest of a body the webhook already answered 400 (not gzip,
            # say) to keep the connection, and meets the same decoding error again.
            self.log_debug("body still unreadable after the answer; connection closed")
            return
        super().log_exception(*args, **kw)


class _Server(web.Server):
    """``web.Server`` making :class:`_RequestHandler` connections.

    aiohttp has no option for the connection class, so this reads ``web.Server``'s own
    ``_loop`` and ``_kwargs`` (aiohttp 3.9 to 3.14); tests/test_hostile_input.py pins it.
    """

    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """``web.AppRunner`` serving through :class:`_Server`."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # the app's startup, its handler and factory
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )


class _VerifyTokenFilter(logging.Filter):
    """Defence in depth: scrub ``hub.verify_token=...`` from aiohttp's own log records."""

    _TOKEN = re.compile(r"(?i)(hub(?:\.|%2e)verify(?:_|%5f)token(?:=|%3d))[^&\s'\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._TOKEN.search(message):
            record.msg, record.args = self._TOKEN.sub(r"\1***", message), None
        if record.exc_info:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            if self._TOKEN.search(text):  # the formatter prints exc_text when exc_info is gone
                record.exc_text, record.exc_info = self._TOKEN.sub(r"\1***", text), None
        return True


_AIOHTTP_LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.internal")


def _scrub_aiohttp_logs() -> None:
    for name in _AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _VerifyTokenFilter) for f in logger.filters):
            logger.addFilter(_VerifyTokenFilter())
