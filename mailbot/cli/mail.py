"""parse and ingest: one raw message from a file or a pipe."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mailbot.errors import ConfigError, RefusedError, TransientError


def register(commands: Any) -> None:
    p = commands.add_parser("parse", help="print the parsed message as JSON; touches no database")
    p.add_argument("file", metavar="FILE|-")
    p.set_defaults(handler=cmd_parse)
    i = commands.add_parser("ingest", help="take one raw message as if delivered (exit 75 if it cannot be stored)")
    i.add_argument("file", metavar="FILE|-")
    i.add_argument("--sender", help="the envelope sender (default: none)")
    i.set_defaults(handler=cmd_ingest)


def read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise RefusedError(f"cannot read {name}: {exc.strerror}") from None


def cmd_parse(args: argparse.Namespace, context: Any) -> int:
    from mailbot.salvage import read

    parsed = read(read_input(args.file))  # a message over the limits: its degraded reading, "degraded" says why
    print(json.dumps(parsed.to_json(), ensure_ascii=False, indent=2))
    return 0


def cmd_ingest(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import inbound as inbound_store
    from mailbot.store.problems import lasting_problem

    raw = read_input(args.file)
    try:
        app = context.app
        [inbound_id] = app.db.call(
            inbound_store.insert_many, [inbound_store.RawMessage(raw, "cli", args.sender, ())], app.clock.now()
        )
    except (ConfigError, TransientError) as exc:
        # An MTA pipes mail in: whatever keeps it from being stored, even a mistake in the setup, the MTA must
        # keep the message and retry (exit 75), never bounce it (exit 1).
        raise TransientError(lasting_problem(exc) or str(exc)) from None
    outcome = app.processor.process_one(inbound_id)
    print(json.dumps(outcome.to_json()))
    return 0
