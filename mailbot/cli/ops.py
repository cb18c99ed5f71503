"""status, inbound show: what an operator asks the database (the daemon need not run)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailbot.cli import group
from mailbot.errors import RefusedError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def register(commands: Any) -> None:
    status = commands.add_parser("status", help="inbound backlog, outbox, tickets by status, SLA at a glance")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)
    sub = group(commands, "inbound", "stored messages the intake could not handle: inspect, retry, discard")
    show = sub.add_parser("show", help="what the intake did with one stored message and why, step by step")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_inbound_show)


def _oldest(seconds: float | None) -> str:
    """' (the oldest waiting 1h05m)', or nothing when nothing waits."""
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    age = f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")
    return f" (the oldest waiting {age})"


def _local(instant: datetime | None, context: Any) -> str:
    """As people read times everywhere (mailbot.hours.shown); "never" for none."""
    from mailbot.hours import shown

    return shown(instant, context.app.hours.zone) if instant else "never"


def cmd_status(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import overview

    app = context.app
    state = app.db.call(overview.read, app.clock.now())
    if args.json:
        print(json.dumps(state.to_json(), indent=2))
        return 0
    tickets = state.tickets
    print(f"inbound   {state.inbound_pending} pending{_oldest(state.inbound_oldest_pending_seconds)}, "
          f"{state.inbound_failed} failed")
    print(f"outbox    {state.outbox_due} due{_oldest(state.outbox_oldest_due_seconds)}, "
          f"{state.outbox_failing} failing, {state.outbox_refused} refused for good")
    print(f"tickets   {tickets['new']} new, {tickets['open']} open, {tickets['held']} held, "
          f"{tickets['resolved']} resolved")
    print(f"sla       {state.sla_at_risk} at risk, {state.sla_breached} breached")
    print(f"received  last message {_local(state.last_received, context)}")
    return 0


def _show(session: Session, inbound_id: int) -> dict[str, Any]:
    from mailbot.door import door_of
    from mailbot.store import inbound as inbound_store

    row = inbound_store.get(session, inbound_id)
    if row is None:
        raise RefusedError(f"no inbound message {inbound_id}")
    return {
        "id": row.id,
        "status": "done" if row.status == "processed" else row.status,
        "action": row.action,
        "ticket": row.ticket_id,
        "door": door_of(row.source),
        "source": row.source,
        "envelope_from": row.envelope_from,
        "received_at": row.received_at.isoformat(),
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
        "attempts": row.attempts,
        "error": row.error,
        "steps": row.trail or [],
    }


def cmd_inbound_show(args: argparse.Namespace, context: Any) -> int:
    shown = context.app.db.call(_show, args.id)
    if args.json:
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    ticket = f", ticket {shown['ticket']}" if shown["ticket"] else ""
    print(f"inbound {shown['id']}: {shown['status']}, {shown['action'] or 'not decided yet'}{ticket}")
    received = _local(datetime.fromisoformat(shown["received_at"]), context)
    print(f"  from {shown['envelope_from'] or '-'} by {shown['door']}, received {received}, "
          f"attempts {shown['attempts']}")
    if not shown["steps"]:
        print("  no decision trail recorded (not processed yet, or processed before the trail was kept)")
    width = max((len(step["step"]) for step in shown["steps"]), default=0)
    for step in shown["steps"]:
        detail = f": {step['detail']}" if step["detail"] else ""
        print(f"  {step['step']:<{width}}  {step['verdict']}{detail}  ({step['ms']:.1f} ms)")
    return 0
