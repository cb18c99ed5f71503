"""How many explanations mailbot queued to one requester recently: the cap on replies to non-entitled senders."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbot.store.schema import OutboxItem, Ticket

KIND = "explanation"


def count_since(session: Session, requester: str, since: datetime) -> int:
    """Explanations planned (sent or not) since `since` on tickets whose requester is `requester`."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(OutboxItem)
            .join(Ticket, OutboxItem.ticket_id == Ticket.id)
            .where(OutboxItem.kind == KIND, OutboxItem.created_at >= since, Ticket.requester == requester)
        )
        or 0
    )
