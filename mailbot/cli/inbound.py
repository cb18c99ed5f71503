"""inbound failed, raw, discard, retry: the messages the intake could not handle, for a person to settle.

Nothing is lost: a failed message keeps its bytes and its error until someone retries it (the intake runs
again) or discards it (set aside, still kept, still retryable by id).

Exit status of `inbound retry`: 0 every message was handled; 1 refused (no such message, or one that is not
failed or discarded: nothing retried); 3 a message failed again (its reason is printed); 75 a message was
deferred (a DNS failure: the daemon retries it) or the database was unavailable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailbot.cli import EX_TEMPFAIL, group
from mailbot.cli.output import add_json_flag, dump, report, table
from mailbot.errors import RefusedError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailbot.store.schema import InboundMessage

EX_FAILED_AGAIN = 3


def register(commands: Any) -> None:
    sub = group(commands, "inbound", "stored messages the intake could not handle: inspect, retry, discard")
    failed = sub.add_parser("failed", help="the failed messages with their reasons")
    failed.add_argument("--discarded", action="store_true", help="list the discarded messages instead")
    add_json_flag(failed)
    failed.set_defaults(handler=cmd_failed)
    raw = sub.add_parser("raw", help="write a stored message's bytes, exactly as received, to stdout")
    raw.add_argument("id", type=int, metavar="ID")
    raw.set_defaults(handler=cmd_raw)
    discard = sub.add_parser("discard", help="set failed messages aside: kept, no longer listed as failed")
    discard.add_argument("ids", nargs="+", type=int, metavar="ID")
    add_json_flag(discard)
    discard.set_defaults(handler=cmd_discard)
    retry = sub.add_parser(
        "retry", help="run the intake again on failed (or discarded) messages: all failed ones, or the IDs"
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    add_json_flag(retry)
    retry.set_defaults(handler=cmd_retry)


def cmd_failed(args: argparse.Namespace, context: Any) -> int:
    from mailbot.hours import shown
    from mailbot.store import inbound as inbound_store

    zone = context.app.hours.zone
    status = "discarded" if args.discarded else "failed"
    rows = context.app.db.call(lambda s: [_summary(r) for r in inbound_store.failed(s, status)])
    if args.json:
        dump(rows)
        return 0
    table(
        ("ID", "RECEIVED", "SOURCE", "FROM", "SIZE", "ERROR"),
        (
            (r["id"], shown(datetime.fromisoformat(r["received_at"]), zone), r["source"], r["envelope_from"] or "-", r["size"],
             " ".join((r["error"] or "").split()))  # one line per message; --json keeps the text as it is
            for r in rows
        ),
    )
    return 0


def _summary(row: InboundMessage) -> dict[str, Any]:
    return {
        "id": row.id, "status": row.status, "received_at": row.received_at.isoformat(), "source": row.source,
        "envelope_from": row.envelope_from, "size": row.size, "error": row.error,
    }


def cmd_raw(args: argparse.Namespace, context: Any) -> int:
    raw: bytes = context.app.db.call(lambda s: _existing(s, [args.id])[0].raw)
    sys.stdout.buffer.write(raw)
    return 0


def cmd_discard(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import inbound as inbound_store

    app = context.app

    def discard(session: Session) -> list[int]:
        rows = _existing(session, args.ids)
        if wrong := [row for row in rows if row.status != "failed"]:
            raise RefusedError(f"inbound message {wrong[0].id} is {wrong[0].status}, not failed: nothing discarded")
        for row in rows:
            inbound_store.discard(session, row, app.clock.now())
        return [row.id for row in rows]

    ids = app.db.call(discard)
    listed = " ".join(str(i) for i in ids)
    report(
        args,
        [{"id": i, "status": "discarded"} for i in ids],
        f"discarded inbound {listed}: kept (`mailbot inbound raw ID`; `inbound retry ID` runs it again)",
    )
    return 0


def cmd_retry(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import inbound as inbound_store

    app = context.app

    def requeue(session: Session) -> list[int]:
        if args.ids:
            rows = _existing(session, args.ids)
            if wrong := [row for row in rows if row.status not in inbound_store.RETRYABLE]:
                row = wrong[0]
                raise RefusedError(
                    f"inbound message {row.id} is {row.status}, not failed or discarded: nothing retried"
                )
        return inbound_store.requeue(session, args.ids)

    ids = app.db.call(requeue)
    results = [{"id": inbound_id, **app.processor.process_one(inbound_id).to_json()} for inbound_id in ids]
    lines = []
    for result in results:
        ticket = f" ticket {result['ticket']}" if result["ticket"] else ""
        detail = f": {' '.join(result['detail'].split())}" if result.get("detail") else ""
        lines.append(f"inbound {result['id']}: {result['action']}{ticket}{detail}")
    report(args, results, "\n".join(lines) or "no failed messages to retry")
    actions = {result["action"] for result in results}
    return EX_FAILED_AGAIN if "failed" in actions else EX_TEMPFAIL if "deferred" in actions else 0


def _existing(session: Session, ids: Sequence[int]) -> list[InboundMessage]:
    """The rows of `ids` (each once, held for this transaction); refused when one does not exist."""
    from mailbot.store import inbound as inbound_store

    rows = []
    for inbound_id in dict.fromkeys(ids):
        row = inbound_store.get(session, inbound_id, lock=True)
        if row is None:
            raise RefusedError(f"no inbound message {inbound_id}")
        rows.append(row)
    return rows
