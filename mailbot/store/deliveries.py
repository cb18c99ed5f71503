"""Mail mailbot sent, as bounces and the automatic-mail guard need it (mailbot.loops)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbot.store.schema import InboundMessage, OutboxItem, Ticket


def by_message_id(session: Session, message_id: str) -> OutboxItem | None:
    """The outgoing message with this Message-ID, if mailbot sent (or planned) it."""
    return session.scalar(select(OutboxItem).where(OutboxItem.message_id == message_id))


def count_to_requester(session: Session, requester: str, kinds: Collection[str], since: datetime) -> int:
    """Messages of `kinds` planned (sent or not) since `since` on tickets whose requester is `requester`."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(OutboxItem)
            .join(Ticket, OutboxItem.ticket_id == Ticket.id)
            .where(OutboxItem.kind.in_(kinds), OutboxItem.created_at >= since, Ticket.requester == requester)
        )
        or 0
    )


def count_on_ticket(session: Session, ticket_id: int, kinds: Collection[str], since: datetime) -> int:
    """Messages of `kinds` planned on one ticket since `since`."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(OutboxItem)
            .where(OutboxItem.ticket_id == ticket_id, OutboxItem.kind.in_(kinds), OutboxItem.created_at >= since)
        )
        or 0
    )


def opening_message(session: Session, ticket: Ticket) -> InboundMessage | None:
    """The stored raw message that opened `ticket` (its first inbound message), if it is still kept."""
    first = next((m for m in ticket.messages if m.direction == "in" and m.inbound_id is not None), None)
    return session.get(InboundMessage, first.inbound_id) if first is not None else None
