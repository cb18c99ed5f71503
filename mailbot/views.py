"""Tickets as the JSON of INTERFACE.md (`ticket show --json`, `ticket list --json`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mailbot.store.schema import OutboxItem, Ticket


def iso(instant: datetime | None) -> str | None:
    return instant.isoformat() if instant else None


def delivery(item: OutboxItem | None) -> tuple[str | None, str | None]:
    """What became of an outgoing message, and why: pending | sent | failed (the relay refused it for good) |
    cancelled, or bounced | delayed as a bounce reported it after it was sent (mailbot.loops)."""
    if item is None:
        return None, None
    if item.delivery:
        return item.delivery, item.delivery_detail
    return item.status, item.last_error


def ticket_json(
    ticket: Ticket,
    *,
    organization: str | None,
    specialist: str | None,
    messages: bool = True,
    outbox: Mapping[str, OutboxItem] | None = None,
) -> dict[str, Any]:
    """`outbox`: the ticket's outgoing messages by Message-ID, for the delivery of each "out" message."""
    data: dict[str, Any] = {
        "id": ticket.id,
        "status": ticket.status,
        "held_reason": ticket.held_reason,
        "held_detail": ticket.held_detail,
        "entitlement": ticket.entitlement,
        "sender_auth": ticket.sender_auth,
        "released_at": iso(ticket.released_at),
        "subject": ticket.subject,
        "requester": ticket.requester,
        "organization": organization,
        "specialist": specialist,
        "created_at": iso(ticket.created_at),
        "confirmation_due_at": iso(ticket.confirmation_due_at),
        "confirmation_sent_at": iso(ticket.confirmation_sent_at),
        "assign_due_at": iso(ticket.assign_due_at),
        "introduction_due_at": iso(ticket.introduction_due_at),
        "introduction_sent_at": iso(ticket.introduction_sent_at),
        "resolved_at": iso(ticket.resolved_at),
        "sla_breach": ticket.sla_breach,
        "sla_breached_at": iso(ticket.sla_breached_at),
        "auto_reply_refused": ticket.auto_reply_refused,
    }
    if messages:
        data["messages"] = [
            {
                "direction": m.direction,
                "kind": m.kind,
                "message_id": m.message_id,
                "from": m.from_address,
                "to": list(m.to),
                "subject": m.subject,
                "at": iso(m.at),
                "text": m.text,
                "attachments": [
                    {"filename": a.filename, "content_type": a.content_type, "size": a.size,
                     "sha256": a.sha256, "inline": a.inline}
                    for a in m.attachments
                ],
                **(_delivery_json(outbox.get(m.message_id)) if outbox is not None and m.direction == "out" else {}),
            }
            for m in ticket.messages
        ]
    return data


def _delivery_json(item: OutboxItem | None) -> dict[str, str | None]:
    state, detail = delivery(item)
    return {"delivery": state, "delivery_detail": detail}
