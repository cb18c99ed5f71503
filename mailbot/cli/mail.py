"""parse, ingest, and the failed-ingest queue (inbound list / retry)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mailbot.errors import RefusedError
from mailbot.salvage import read
from mailbot.store import inbound as inbound_store


def register(commands: Any) -> None:
    p = commands.add_parser("parse", help="print the parsed message as JSON; touches no database")
    p.add_argument("file", metavar="FILE|-")
    p.set_defaults(handler=cmd_parse)
    i = commands.add_parser("ingest", help="take one raw message as if delivered (exit 75 if it cannot be stored)")
    i.add_argument("file", metavar="FILE|-")
    i.add_argument("--sender", help="the envelope sender (default: none)")
    i.set_defaults(handler=cmd_ingest)
    inbound = commands.add_parser("inbound", help="messages that failed to ingest: inspect and retry")
    sub = inbound.add_subparsers(dest="inbound_command", metavar="COMMAND", required=True)
    failed = sub.add_parser("failed", help="list messages whose ingest failed")
    failed.add_argument("--json", action="store_true")
    failed.set_defaults(handler=cmd_failed)
    retry = sub.add_parser("retry", help="put failed messages back in the queue and process them")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    retry.set_defaults(handler=cmd_retry)


def read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise RefusedError(f"cannot read {name}: {exc.strerror}") from None


def cmd_parse(args: argparse.Namespace, context: Any) -> int:
    parsed = read(read_input(args.file))  # a message over the limits: its degraded reading, "degraded" says why
    print(json.dumps(parsed.to_json(), ensure_ascii=False, indent=2))
    return 0


def cmd_ingest(args: argparse.Namespace, context: Any) -> int:
    raw = read_input(args.file)
    app = context.app
    [inbound_id] = app.db.call(
        inbound_store.insert_many, [inbound_store.RawMessage(raw, "cli", args.sender, ())], app.clock.now()
    )
    outcome = app.processor.process_one(inbound_id)
    print(json.dumps(outcome.to_json()))
    return 0


def cmd_failed(args: argparse.Namespace, context: Any) -> int:
    rows = context.app.db.call(
        lambda s: [
            {"id": r.id, "received_at": r.received_at.isoformat(), "source": r.source,
             "envelope_from": r.envelope_from, "size": r.size, "error": r.error}
            for r in inbound_store.failed(s)
        ]
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['id']:>6}  {row['received_at'][:19]}  {row['source']:<6} {row['error']}")
    return 0


def cmd_retry(args: argparse.Namespace, context: Any) -> int:
    app = context.app
    count = app.db.call(inbound_store.retry_failed, args.ids)
    outcomes = app.processor.run_once() if count else []
    for outcome in outcomes:
        print(json.dumps(outcome.to_json()))
    print(f"{count} message(s) retried", file=sys.stderr)
    return 0
