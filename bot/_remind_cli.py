"""``bot remind add|list|cancel`` and ``bot worker``: reminder jobs from the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import re
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from bot import _loop
from bot._when import RECURRING_REFUSED, iso, parse_time, zone
from bot.commands import parse_params
from bot.config import Config
from bot.errors import ConfigError, ScheduleError
from bot.models import JOB_STATES, Job, Outgoing, TemplateCall
from bot.outbound import Outbound
from bot.scheduling import Scheduler, build_job

log = structlog.get_logger("windowbot.remind_cli")

_PHONE = re.compile(r"^[1-9]\d{7,14}$")  # E.164 without '+': 8 to 15 digits
_RESERVED_COLUMNS = ("user", "wa_id", "at", "key")


def add_parsers(sub: Any) -> list[argparse.ArgumentParser]:
    """Add ``remind`` and ``worker`` to the ``bot`` parser; the parsers made."""
    worker = sub.add_parser(
        "worker", help="dispatch queued replies and due reminders (no webhook server)"
    )
    remind = sub.add_parser("remind", help="schedule, list and cancel reminder jobs")
    verbs = remind.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="schedule a one-shot reminder (or one per CSV row)")
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument("user", nargs="?", help="the recipient's wa_id")
    who.add_argument(
        "--users",
        type=Path,
        metavar="FILE.csv",
        help="a campaign: one job per row (column user, optional at, the template "
        "parameters in the other columns)",
    )
    add.add_argument(
        "--at",
        help="when: ISO time (2026-12-02T10:00:00-03:00), unix seconds, 'in 2h', or any of "
        "these '- 1h' (required unless every CSV row has an 'at' column)",
    )
    add.add_argument("--text", help="a session message: sent as is while the window is open")
    add.add_argument("--template", help="the template to send when the window is closed")
    add.add_argument(
        "--param", action="append", default=[], metavar="VALUE|NAME=VALUE", help="(repeat)"
    )
    add.add_argument("--button", action="append", default=[], help="quick-reply payload")
    add.add_argument("--language", default="", help="template language (default: the chain)")
    add.add_argument(
        "--key",
        default="",
        help="the event (the same key again replaces it); "
        "with --users, the prefix of each row's key (PREFIX + user)",
    )
    add.add_argument("--expires-after", default="", help="not sent this long after --at (2h)")
    add.add_argument("--resume", default="", help="flow.state a tap on its buttons lands in")
    add.add_argument("--quiet-hours", default="", help="this job's quiet hours, or 'off'")
    add.add_argument("--every", default="", help=argparse.SUPPRESS)  # refused with the reason
    listing = verbs.add_parser("list", help="upcoming and recent jobs with outcome and reason")
    listing.add_argument("--user", default="")
    listing.add_argument("--key", default="")
    listing.add_argument("--state", default="", choices=["", *JOB_STATES])
    listing.add_argument("--limit", type=int, default=50)
    cancel = verbs.add_parser("cancel", help="cancel scheduled jobs by key")
    cancel.add_argument("key")
    cancel.add_argument("--user", default="", help="only this user's job")
    cancel.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    return [worker, remind, add, listing, cancel]


def main(config: Config, args: argparse.Namespace) -> int:
    """Run ``bot worker`` or ``bot remind VERB``."""
    if args.command == "worker":
        return _worker(config)
    if args.verb == "add":
        return asyncio.run(_add(config, args))
    if args.verb == "list":
        return asyncio.run(_list(config, args))
    return asyncio.run(_cancel(config, args))


# --- bot worker -------------------------------------------------------------------------------


def _worker(config: Config) -> int:
    from bot.runtime import build_app

    app = build_app(config)

    async def serve() -> None:
        from aiohttp import web

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(app)  # the app's resources and workers, no listening socket
        await runner.setup()
        try:
            log.info(
                "worker_started",
                store=config.store.url.split("://")[0],
                event_loop=_loop.running_loop_name(),
            )
            await stop.wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        _loop.run(serve(), config.server.event_loop)
    return 0


# --- bot remind add ---------------------------------------------------------------------------


@dataclass
class _Report:
    """What a campaign scheduled and what it skipped, and why."""

    scheduled: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, row: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, row)


def _outgoing(args: argparse.Namespace, params: Any) -> Outgoing:
    fallback = None
    if args.template:
        fallback = TemplateCall(
            name=args.template,
            parameters=params,
            language=args.language,
            buttons=tuple(args.button),
        )
    message = (
        {"type": "text", "text": {"body": args.text, "preview_url": False}} if args.text else None
    )
    return Outgoing(message=message, fallback=fallback, note="bot remind")


async def _add(config: Config, args: argparse.Namespace) -> int:
    if args.every:
        raise ScheduleError(f"--every {args.every!r}: {RECURRING_REFUSED}")
    if not (args.text or args.template):
        raise ConfigError("bot remind add: give --text, --template, or both")
    default_zone = zone(config.jobs.default_timezone)
    async with Outbound.open(config) as outbound:
        scheduler = outbound.scheduler()
        if args.users is None:
            if not args.at:
                raise ConfigError("bot remind add: give --at (when to send it)")
            job = await scheduler.schedule(
                args.user,
                _outgoing(args, parse_params(args.param)),
                at=args.at,
                key=args.key,
                expires_after=args.expires_after or 0.0,
                resume=args.resume,
                quiet_hours=args.quiet_hours,
                zone=default_zone,
            )
            print(f"scheduled {job.id} for {iso(job.send_at)} (state {job.state})")
            return 0
        report = await _campaign(outbound, scheduler, args, default_zone)
    print(f"{args.users}: {report.scheduled} scheduled, {sum(report.skipped.values())} skipped")
    for reason, count in report.skipped.most_common():
        print(f"  skipped {count}: {reason} (e.g. {report.examples[reason]})")
    return 0


async def _campaign(
    outbound: Outbound, scheduler: Scheduler, args: argparse.Namespace, where: ZoneInfo
) -> _Report:
    """One job per CSV row, keyed ``--key`` + user; rows that cannot be sent are reported."""
    report = _Report()
    try:
        with args.users.open(newline="", encoding="utf-8-sig") as file:
            rows = list(csv.DictReader(file))
    except OSError as exc:
        raise ConfigError(f"{args.users}: cannot read: {exc}") from None
    if rows and not ({"user", "wa_id"} & set(rows[0])):
        raise ConfigError(f"{args.users}: the header needs a 'user' (or 'wa_id') column")
    named = bool(rows) and any(not c.isdigit() for c in rows[0] if c not in _RESERVED_COLUMNS)
    seen: set[str] = set()
    jobs: list[Job] = []
    now = scheduler.clock()
    for line, row in enumerate(rows, start=2):
        user = (row.get("user") or row.get("wa_id") or "").strip().lstrip("+")
        where_row = f"line {line}: {user or '(no user)'}"
        values = {k: (v or "").strip() for k, v in row.items() if k not in _RESERVED_COLUMNS}
        if not _PHONE.match(user) and not user.count("."):  # BSUIDs look like US.1349...
            report.skip("invalid number (8 to 15 digits, country code first)", where_row)
            continue
        if user in seen:
            report.skip("duplicate row for the same user", where_row)
            continue
        seen.add(user)
        record = await outbound.store.get_user(user)
        if record is None:
            report.skip("unknown user (never wrote to this number)", where_row)
            continue
        if record.opted_out:
            report.skip("opted out of business-initiated messages", where_row)
            continue
        params: Any = values if named else tuple(values[k] for k in sorted(values, key=int))
        try:
            at = parse_time((row.get("at") or "").strip() or args.at or "", now, where)
            job = build_job(
                user,
                _outgoing(args, params),
                at=at,
                now=now,
                key=f"{args.key}{user}" if args.key else "",
                expires_after=args.expires_after or 0.0,
                resume=args.resume,
                quiet_hours=args.quiet_hours,
                note="campaign",
            )
            scheduler.check(job.outgoing)
        except ScheduleError as exc:
            report.skip(str(exc), where_row)
            continue
        jobs.append(job)
    for start in range(0, len(jobs), 500):
        await scheduler.store.schedule_jobs(jobs[start : start + 500])
    report.scheduled = len(jobs)
    return report


# --- bot remind list / cancel -----------------------------------------------------------------


async def _list(config: Config, args: argparse.Namespace) -> int:
    async with Outbound.open(config) as outbound:
        jobs = await outbound.jobs(args.user, key=args.key, state=args.state, limit=args.limit)
    if not jobs:
        print("no jobs match")
        return 0
    for job in jobs:
        key = job.key or "-"
        print(f"{iso(job.send_at)}  {job.user:<16} {key:<24} {job.state:<9} {job.reason}")
    return 0


async def _cancel(config: Config, args: argparse.Namespace) -> int:
    async with Outbound.open(config) as outbound:
        count = await outbound.cancel(args.key, user=args.user, prefix=args.prefix)
    print(f"cancelled {count} scheduled job(s)")
    return 0
