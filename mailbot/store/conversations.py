"""What the threading rules need to know about tickets: who owns a Message-ID, which tickets exist, and
the named contacts who may be brought into a ticket."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbot.store import registry
from mailbot.store.schema import Contact, Ticket, TicketMessage


def owners(session: Session, message_ids: Collection[str]) -> dict[str, int]:
    """The ticket of each of `message_ids` that belongs to a conversation (sent or received)."""
    if not message_ids:
        return {}
    rows = session.execute(
        select(TicketMessage.message_id, TicketMessage.ticket_id).where(
            TicketMessage.message_id.in_(message_ids)
        )
    )
    return {message_id: ticket_id for message_id, ticket_id in rows}


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
