"""What the threading rules need to know about tickets: who owns a Message-ID, which tickets exist, and
the named contacts who may be brought into a ticket."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from mailbot.identity import Use
from mailbot.store import registry
from mailbot.store.schema import Contact, Ticket, TicketMessage

_USES = (
    select(TicketMessage.identity, TicketMessage.ticket_id, TicketMessage.from_address, TicketMessage.direction)
    .where(TicketMessage.message_id == bindparam("message_id"))
    .order_by(TicketMessage.id)
)  # built once: the intake asks it of every message (see mailbot.store.registry)


def owners(session: Session, message_ids: Collection[str]) -> dict[str, list[int]]:
    """The tickets of each of `message_ids` that belongs to conversations (sent or received), in the order
    of the Message-ID's first use (a Message-ID proves nothing: several messages may carry one)."""
    if not message_ids:
        return {}
    rows = session.execute(
        select(TicketMessage.message_id, TicketMessage.ticket_id)
        .where(TicketMessage.message_id.in_(message_ids))
        .order_by(TicketMessage.id)
    )
    found: dict[str, list[int]] = {}
    for message_id, ticket_id in rows:
        tickets = found.setdefault(message_id, [])
        if ticket_id not in tickets:
            tickets.append(ticket_id)
    return found


def uses(session: Session, message_id: str) -> list[Use]:
    """The messages stored under `message_id`, first use first, with those of this session not written yet
    (the intake writes a batch in one flush, mailbot.processor)."""
    stored = [Use(*row) for row in session.connection().execute(_USES, {"message_id": message_id})]
    with session.no_autoflush:
        pending = [
            Use(m.identity, m.ticket.id, m.from_address, m.direction)
            for m in list(session.new)
            if isinstance(m, TicketMessage) and m.message_id == message_id
        ]
    return stored + pending


def existing(session: Session, ticket_ids: Collection[int]) -> set[int]:
    if not ticket_ids:
        return set()
    return set(session.scalars(select(Ticket.id).where(Ticket.id.in_(ticket_ids))))


def colleagues(session: Session, ticket: Ticket) -> list[str]:
    """The named contacts of the requester's organization (the ticket's, else the requester's own)."""
    organization_id = ticket.organization_id
    if organization_id is None:
        contact = registry.find_contact(session, ticket.requester)
        organization_id = contact.organization_id if contact is not None else None
    if organization_id is None:
        return []
    return list(session.scalars(select(Contact.address).where(Contact.organization_id == organization_id)))
