"""hours deadline START DURATION."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from mailbot.errors import RefusedError


def register(commands: Any) -> None:
    hours = commands.add_parser("hours", help="the business-hours clock")
    sub = hours.add_subparsers(dest="hours_command", metavar="COMMAND", required=True)
    deadline = sub.add_parser("deadline", help="START plus DURATION of business time")
    deadline.add_argument(
        "start",
        help='"now", or an ISO 8601 time: with an offset (2026-11-27T17:00:00-05:00) or without one, read as '
        "local time in [business_hours] timezone (2026-11-27T17:00, or 2026-11-27 17:00)",
    )
    deadline.add_argument("duration", help='business time, e.g. "4h" or "90m"')
    deadline.set_defaults(handler=cmd_deadline)


def start_instant(text: str, zone: ZoneInfo, now: datetime) -> datetime:
    """START as an instant: "now", an ISO 8601 time with an offset, or a local time in the business zone.

    A local time that a DST change skips or repeats is read as zoneinfo does (fold=0): its first reading.
    """
    if text.strip().lower() == "now":
        return now
    try:
        start = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RefusedError(f"START {text!r} is not \"now\" or an ISO 8601 time (e.g. 2026-11-27T17:00)") from None
    return start if start.tzinfo is not None else start.replace(tzinfo=zone)


def cmd_deadline(args: argparse.Namespace, context: Any) -> int:
    from mailbot.config import parse_duration

    app = context.app
    start = start_instant(args.start, app.hours.zone, app.clock.now())
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise RefusedError(f"DURATION: {exc}") from None
    print(app.hours.add(start, duration).isoformat(timespec="seconds"))
    return 0
