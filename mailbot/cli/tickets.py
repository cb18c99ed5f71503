"""ticket list, ticket show."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy.orm import Session

from mailbot.errors import RefusedError
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import Organization
from mailbot.views import ticket_json

STATUSES = ("new", "open", "held", "resolved")


def register(commands: Any) -> None:
    ticket = commands.add_parser("ticket", help="tickets")
    sub = ticket.add_subparsers(dest="ticket_command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", help="every ticket, whatever its status, unless --status filters")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)
    show = sub.add_parser("show", help="one ticket with its conversation")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_show)


def _json(session: Session, ticket: Any, messages: bool) -> dict[str, Any]:
    organization = session.get(Organization, ticket.organization_id) if ticket.organization_id else None
    return ticket_json(
        ticket,
        organization=organization.name if organization else None,
        specialist=ticket_store.specialist_address(session, ticket.specialist_id),
        messages=messages,
    )


def cmd_list(args: argparse.Namespace, context: Any) -> int:
    rows = context.app.db.call(
        lambda s: [_json(s, t, messages=False) for t in ticket_store.listing(s, args.status)]
    )
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    print(f"{'ID':>5}  {'STATUS':<8} {'CREATED':<17} {'REQUESTER':<30} SUBJECT")
    for row in rows:
        status = row["status"] + ("!" if row["sla_breach"] else "")
        print(f"{row['id']:>5}  {status:<8} {row['created_at'][:16]:<17} {row['requester'][:30]:<30} {row['subject'][:60]}")
    return 0


def cmd_show(args: argparse.Namespace, context: Any) -> int:
    def load(session: Session) -> dict[str, Any] | None:
        ticket = ticket_store.get(session, args.id)
        return None if ticket is None else _json(session, ticket, messages=True)

    data = context.app.db.call(load)
    if data is None:
        raise RefusedError(f"no ticket {args.id}")
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    for key in ("id", "status", "held_reason", "subject", "requester", "organization", "specialist", "created_at",
                "confirmation_sent_at", "introduction_due_at", "introduction_sent_at", "sla_breach"):
        if data[key] is not None:
            print(f"{key.replace('_', ' '):<22} {data[key]}")
    for message in data["messages"]:
        print(f"\n--- {message['direction']} {message['kind']} {message['at']} from {message['from']}")
        print(f"Subject: {message['subject']}\n")
        print(message["text"].rstrip())
    return 0
