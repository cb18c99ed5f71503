"""What the intake needs to know about conversations: the messages stored under a Message-ID (its
duplicates, the tickets it threads onto), which tickets exist, and the named contacts who may be brought
into a ticket. Asked once per batch for all of its messages (mailbot.facts)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from mailbot.identity import Use
from mailbot.store import chunks, registry
from mailbot.store.schema import Contact, Ticket, TicketMessage

# Built once, run on the session's connection for plain values (see mailbot.store.registry).
_USES = (
    select(
        TicketMessage.message_id,
        TicketMessage.identity,
        TicketMessage.ticket_id,
        TicketMessage.from_address,
        TicketMessage.direction,
    )
    .where(TicketMessage.message_id.in_(bindparam("ids", expanding=True)))
    .order_by(TicketMessage.id)
)
_EXISTING = select(Ticket.id).where(Ticket.id.in_(bindparam("ids", expanding=True)))


def uses(session: Session, message_ids: Collection[str]) -> dict[str, list[Use]]:
    """The messages stored under each of `message_ids` (sent or received), first use first; a Message-ID
    stored under none is left out. A Message-ID proves nothing: several messages may carry one."""
    found: dict[str, list[Use]] = {}
    for some in chunks(message_ids):
        rows = session.connection().execute(_USES, {"ids": some})
        for message_id, identity, ticket_id, from_address, direction in rows:
            found.setdefault(message_id, []).append(Use(identity, ticket_id, from_address, direction))
    return found


def existing(session: Session, ticket_ids: Collection[int]) -> set[int]:
    """Which of `ticket_ids` are stored tickets."""
    return {found for some in chunks(ticket_ids) for found in session.connection().scalars(_EXISTING, {"ids": some})}


def colleagues(session: Session, ticket: Ticket) -> list[str]:
    """The named contacts of the requester's organization (the ticket's, else the requester's own)."""
    organization_id = ticket.organization_id
    if organization_id is None:
        contact = registry.find_contact(session, ticket.requester)
        organization_id = contact.organization_id if contact is not None else None
    if organization_id is None:
        return []
    return list(session.scalars(select(Contact.address).where(Contact.organization_id == organization_id)))
