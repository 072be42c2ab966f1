"""The ``bot`` command: run, check, graph, chat, send."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import structlog

from bot.config import Config, load_config
from bot.errors import BotError
from bot.log import configure_logging

log = structlog.get_logger("windowbot.cli")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    parser = argparse.ArgumentParser(
        prog="bot", description="windowbot: WhatsApp Business bots as flow files."
    )
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
    chat = sub.add_parser("chat", help="talk to your flows in the terminal")
    chat.add_argument("--user", default="15550000001", help="the wa_id to chat as")
    chat.add_argument("--name", default="You", help="the profile name to chat as")
    send = sub.add_parser("send", help="send a business-initiated message now")
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
    for sp in (run, check, graph, chat, send):  # --config is accepted after the command too
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
            return _run(config, args.host, args.port)
        from bot import commands

        if args.command == "check":
            if args.flows_dir is not None:
                config = replace(config, flows=replace(config.flows, dir=args.flows_dir.resolve()))
            return commands.check(config)
        if args.command == "graph":
            return commands.graph(config, args.flow, args.output)
        if args.command == "chat":
            from bot.chat import chat

            if config.log.level in ("debug", "info"):
                configure_logging("warning", config.log.format)  # keep the conversation readable
            return asyncio.run(chat(config, args.user, args.name))
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


def _run(config: Config, host: str | None, port: int | None) -> int:
    from aiohttp import web

    from bot.runtime import build_app

    app = build_app(config)
    try:
        web.run_app(
            app,
            host=host or config.server.host,
            port=port or config.server.port,
            print=lambda _: log.info(
                "listening",
                webhook=f"http://{host or config.server.host}:{port or config.server.port}"
                f"{config.server.path}",
            ),
            access_log=None,
            handle_signals=True,
        )
    except BotError:
        raise  # StoreUnavailable is a ConnectionError too: main() reports it
    except OSError as exc:  # the port is taken, the host is not an address of this machine
        print(f"bot: cannot listen: {exc} (pick another --port or --host)", file=sys.stderr)
        return 1
    return 0
