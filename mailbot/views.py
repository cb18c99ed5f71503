"""Tickets as the JSON of INTERFACE.md (`ticket show --json`, `ticket list --json`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mailbot.store.schema import Ticket


def iso(instant: datetime | None) -> str | None:
    return instant.isoformat() if instant else None


def ticket_json(
    ticket: Ticket, *, organization: str | None, specialist: str | None, messages: bool = True
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": ticket.id,
        "status": ticket.status,
        "held_reason": ticket.held_reason,
        "held_detail": ticket.held_detail,
        "subject": ticket.subject,
        "requester": ticket.requester,
        "organization": organization,
        "specialist": specialist,
        "created_at": iso(ticket.created_at),
        "confirmation_due_at": iso(ticket.confirmation_due_at),
        "confirmation_sent_at": iso(ticket.confirmation_sent_at),
        "introduction_due_at": iso(ticket.introduction_due_at),
        "introduction_sent_at": iso(ticket.introduction_sent_at),
        "resolved_at": iso(ticket.resolved_at),
        "sla_breach": ticket.sla_breach,
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
            }
            for m in ticket.messages
        ]
    return data
