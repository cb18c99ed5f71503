"""ticket list, ticket show, ticket attachment, ticket release, ticket assign, ticket resolve.

People read times in the business time zone with its offset, to the minute (mailbot.hours.shown); --json
keeps ISO 8601 with an offset for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailbot.cli.output import add_json_flag, report
from mailbot.errors import RefusedError

if TYPE_CHECKING:  # the store is imported by the handlers that use it (mailbot.cli: start-up time)
    from sqlalchemy.orm import Session

    from mailbot.store.schema import Attachment, Ticket

STATUSES = ("new", "open", "held", "resolved")


def register(commands: Any) -> None:
    ticket = commands.add_parser("ticket", help="tickets")
    sub = ticket.add_subparsers(dest="ticket_command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", help="every ticket, whatever its status, unless --status filters")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--breached", action="store_true", help="only tickets with an SLA deadline missed or at risk")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)
    show = sub.add_parser("show", help="one ticket with its conversation")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_show)
    attachment = sub.add_parser("attachment", help="save an attachment of a ticket's conversation")
    attachment.add_argument("id", type=int)
    attachment.add_argument("name", help="the attachment's file name, as `ticket show` lists it")
    attachment.add_argument(
        "-o", "--output", metavar="PATH", help="where to write it (default: NAME in the current folder; - for stdout)"
    )
    attachment.set_defaults(handler=cmd_attachment)
    release = sub.add_parser("release", help="a held ticket enters the normal flow (confirmation, introduction)")
    release.add_argument("id", type=int)
    add_json_flag(release)
    release.set_defaults(handler=cmd_release)
    assign = sub.add_parser("assign", help="a specialist claims a ticket: the introduction goes out now")
    assign.add_argument("id", type=int)
    assign.add_argument("email", help="the specialist's address (see `mailbot specialist list`)")
    add_json_flag(assign)
    assign.set_defaults(handler=cmd_assign)
    resolve = sub.add_parser("resolve", help="the ticket is resolved and the customer is told")
    resolve.add_argument("id", type=int)
    resolve.add_argument("--note", default="", help="what was done, for the customer (in the resolution mail)")
    add_json_flag(resolve)
    resolve.set_defaults(handler=cmd_resolve)


def _json(session: Session, ticket: Any, messages: bool) -> dict[str, Any]:
    from mailbot.store import outbox as outbox_store
    from mailbot.store import tickets as ticket_store
    from mailbot.store.schema import Organization
    from mailbot.views import ticket_json

    organization = session.get(Organization, ticket.organization_id) if ticket.organization_id else None
    return ticket_json(
        ticket,
        organization=organization.name if organization else None,
        specialist=ticket_store.specialist_address(session, ticket.specialist_id),
        messages=messages,
        outbox={item.message_id: item for item in outbox_store.for_ticket(session, ticket.id)} if messages else None,
    )


def when(value: str | None, zone: tzinfo) -> str:
    """An ISO 8601 time of the JSON as people read it (mailbot.hours.shown); '-' for none."""
    from mailbot.hours import shown

    return shown(datetime.fromisoformat(value), zone) if value else "-"


def cmd_list(args: argparse.Namespace, context: Any) -> int:
    from mailbot import sla
    from mailbot.store import sla as sla_store
    from mailbot.store import tickets as ticket_store

    zone = context.app.hours.zone

    def load(session: Session) -> list[tuple[dict[str, Any], str]]:
        return [
            (_json(session, t, messages=False), sla.column(sla_store.promise(t, {}), t.sla_breach, zone))
            for t in ticket_store.listing(session, args.status, breached=args.breached)
        ]

    rows = context.app.db.call(load)
    if args.json:
        print(json.dumps([row for row, _ in rows], indent=2, ensure_ascii=False))
        return 0
    print(f"{'ID':>5}  {'STATUS':<8} {'CREATED':<23} {'REQUESTER':<30} {'SUBJECT':<40} SLA")
    for row, due in rows:
        print(
            f"{row['id']:>5}  {row['status']:<8} {when(row['created_at'], zone):<23} {row['requester'][:30]:<30} "
            f"{row['subject'][:40]:<40} {due}"
        )
    return 0


_TIMES = frozenset({"created_at", "confirmation_sent_at", "introduction_due_at", "introduction_sent_at", "sla_breached_at"})


def cmd_show(args: argparse.Namespace, context: Any) -> int:
    from mailbot.promises import size_words

    zone = context.app.hours.zone
    data = context.app.db.call(lambda session: _json(session, existing(session, args.id), messages=True))
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    for key in ("id", "status", "held_reason", "held_detail", "entitlement", "sender_auth", "subject",
                "requester", "organization", "specialist", "created_at", "confirmation_sent_at",
                "introduction_due_at", "introduction_sent_at", "sla_breach", "sla_breached_at", "auto_reply_refused"):
        if data[key] is not None:
            value = when(data[key], zone) if key in _TIMES else data[key]
            print(f"{key.replace('_', ' '):<22} {value}")
    for message in data["messages"]:
        print(f"\n--- {message['direction']} {message['kind']} {when(message['at'], zone)} from {message['from']}")
        if message.get("delivery"):
            print(f"Delivery: {message['delivery']}" + (f" ({message['delivery_detail']})" if message["delivery_detail"] else ""))
        print(f"Subject: {message['subject']}")
        for attachment in message["attachments"]:
            inline = ", inline" if attachment["inline"] else ""
            print(f"Attachment: {attachment['filename']} ({attachment['content_type']}, {size_words(attachment['size'])}{inline})")
        print()
        print(message["text"].rstrip())
    if any(m["attachments"] for m in data["messages"]):
        print(f"\nSave an attachment with: mailbot ticket attachment {data['id']} NAME [-o PATH]")
    return 0


def cmd_attachment(args: argparse.Namespace, context: Any) -> int:
    """Write one attachment's bytes. The latest of that name when several messages carry one; the file is
    never written over: give -o to choose another path."""
    from mailbot.promises import size_words
    from mailbot.store import tickets as ticket_store

    def load(session: Session) -> tuple[Attachment, bytes]:
        ticket = existing(session, args.id)
        found = [a for m in ticket.messages for a in m.attachments if a.filename == args.name]
        if not found:
            names = sorted({a.filename for m in ticket.messages for a in m.attachments})
            listed = ", ".join(names) if names else "it has none"
            raise RefusedError(f"ticket {args.id} has no attachment {args.name!r} ({listed})")
        return found[-1], ticket_store.blobs(session, [found[-1].sha256])[found[-1].sha256]

    attachment, data = context.app.db.call(load)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        return 0
    # The stored name is the sender's last path component (mailbot.parse): no folder can be named by it.
    path = Path(args.output) if args.output else Path(attachment.filename)
    try:
        with path.open("xb") as out:
            out.write(data)
    except FileExistsError:
        raise RefusedError(f"{path} exists: give another path with -o") from None
    except OSError as exc:
        raise RefusedError(f"cannot write {path}: {exc.strerror}") from None
    print(f"saved {attachment.filename} ({size_words(attachment.size)}) to {path}")
    return 0


def existing(session: Session, ticket_id: int) -> Ticket:
    from mailbot.store import tickets as ticket_store

    ticket = ticket_store.get(session, ticket_id)
    if ticket is None:
        raise RefusedError(f"no ticket {ticket_id}")
    return ticket


def cmd_release(args: argparse.Namespace, context: Any) -> int:
    app = context.app
    workflow = app.workflow  # built outside the transaction: it reads the site's secret from the database

    def release(session: Session) -> dict[str, Any]:
        ticket = existing(session, args.id)
        workflow.release(session, ticket, app.clock.now())
        queued = ticket.confirmation_due_at is not None
        return {"ticket": ticket.id, "status": ticket.status, "confirmation": "queued" if queued else "none",
                "detail": None if queued else ticket.auto_reply_refused}

    result = app.db.call(release)
    outcome = "the confirmation is queued" if result["detail"] is None else f"no confirmation ({result['detail']})"
    report(args, result, f"released ticket {args.id}: its clock has started; {outcome}")
    return 0


def cmd_assign(args: argparse.Namespace, context: Any) -> int:
    """The claim is committed first (with the introduction, the specialist's assignment mail and the previous
    holder's); then this command runs the sender once itself, so the specialist sees the introduction go out (the outbox lease keeps a running daemon from sending it too). When the relay
    fails, the introduction stays queued and the daemon's retries send it."""
    app = context.app
    claim = app.sla.claim(args.id, args.email)
    who = f"{claim.name} <{claim.address}>"
    result: dict[str, Any] = {"ticket": claim.ticket_id, "specialist": claim.address, "previous": claim.previous}
    if claim.previous == claim.address:
        report(args, {**result, "introduction": "none"}, f"ticket {claim.ticket_id} is already assigned to {who}")
        return 0
    if claim.introduction_id is None:  # the loop governor refused it (the ticket's auto_reply_refused says why)
        report(args, {**result, "introduction": "none"},
               f"ticket {claim.ticket_id} assigned to {who}; no introduction (refused by the loop governor)")
        return 0
    status, error = _send_now(app, claim.introduction_id)
    told = f"{claim.name} got the conversation by email" + (f", {claim.previous} was told" if claim.previous else "")
    if status == "sent":
        prose = f"ticket {claim.ticket_id} assigned to {who}; introduction sent; {told}"
    elif status == "withheld":
        prose = f"ticket {claim.ticket_id} assigned to {who}; introduction withheld by the loop governor ({error})"
    else:
        prose = (f"ticket {claim.ticket_id} assigned to {who}; introduction queued, not sent yet "
                 f"({error or 'not attempted'}): the daemon keeps trying")
    report(args, {**result, "introduction": status, "error": error}, prose)
    return 0


def _send_now(app: Any, item_id: int) -> tuple[str, str | None]:
    """Run the sender once; "sent", "withheld" by the loop governor, or "queued", with the last error."""
    import asyncio

    from mailbot.store.schema import OutboxItem

    asyncio.run(app.sender.drain())
    item = app.db.call(lambda s: s.get_one(OutboxItem, item_id))
    if item.status == "sent":
        return "sent", None
    return ("withheld" if item.status == "withheld" else "queued"), item.last_error


def cmd_resolve(args: argparse.Namespace, context: Any) -> int:
    """Like `assign`: the resolution is committed with the ticket's new status, then sent once from here."""
    app = context.app
    workflow = app.workflow  # built outside the transaction: it reads the site's secret from the database

    def resolve(session: Session) -> int:
        ticket = existing(session, args.id)
        item = workflow.resolve(session, ticket, app.clock.now(), args.note)
        session.flush()
        return item.id

    status, error = _send_now(app, app.db.call(resolve))
    told = "the customer was told" if status == "sent" else "the resolution mail is queued: the daemon sends it"
    report(args, {"ticket": args.id, "status": "resolved", "resolution": status, "error": error},
           f"resolved ticket {args.id}; {told}")
    return 0
