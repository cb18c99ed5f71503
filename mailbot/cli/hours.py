"""hours deadline START DURATION."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from mailbot.errors import RefusedError


def register(commands: Any) -> None:
    hours = commands.add_parser("hours", help="the business-hours clock")
    sub = hours.add_subparsers(dest="hours_command", metavar="COMMAND", required=True)
    deadline = sub.add_parser("deadline", help="START plus DURATION of business time")
    deadline.add_argument("start", help="ISO 8601 instant with an offset, e.g. 2026-11-27T17:00:00-05:00")
    deadline.add_argument("duration", help='business time, e.g. "4h" or "90m"')
    deadline.set_defaults(handler=cmd_deadline)


def cmd_deadline(args: argparse.Namespace, context: Any) -> int:
    from mailbot.config import parse_duration

    try:
        start = datetime.fromisoformat(args.start)
    except ValueError:
        raise RefusedError(f"START {args.start!r} is not an ISO 8601 instant") from None
    if start.tzinfo is None:
        raise RefusedError(f"START {args.start!r} needs an offset (e.g. -05:00 or Z)")
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise RefusedError(f"DURATION: {exc}") from None
    print(context.app.hours.add(start, duration).isoformat())
    return 0
