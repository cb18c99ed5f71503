"""The outbox: every message mailbot will send, durable until it is sent."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, func, or_, select, update
from sqlalchemy.orm import Session

from mailbot.addresses import key_of
from mailbot.compose import Outgoing
from mailbot.store.schema import OutboxItem


def plan(
    session: Session,
    outgoing: Outgoing,
    *,
    ticket_id: int | None,
    now: datetime,
    due_at: datetime | None = None,
    deadline_at: datetime | None = None,
    withheld: str | None = None,
) -> OutboxItem:
    """Queue `outgoing`; `withheld`: kept back for that reason (the loop governor), never sent as it stands."""
    item = OutboxItem(
        ticket_id=ticket_id,
        kind=outgoing.kind,
        message_id=outgoing.message_id,
        envelope_from=outgoing.envelope_from,
        recipients=outgoing.recipients,
        recipient=key_of(outgoing.recipients[0]) if outgoing.recipients else None,
        body=outgoing.body,
        created_at=now,
        due_at=due_at or now,
        deadline_at=deadline_at,
        status="withheld" if withheld else "pending",
        last_error=withheld,
        attempts=0,
        next_attempt_at=due_at or now,
    )
    session.add(item)  # written with the caller's next flush; read `item.id` only after one
    return item


def _claimable(now: datetime) -> ColumnElement[bool]:
    return (
        (OutboxItem.status == "pending")
        & (OutboxItem.next_attempt_at <= now)
        & or_(OutboxItem.claimed_until.is_(None), OutboxItem.claimed_until < now)
    )


def claim_due(session: Session, now: datetime, worker: str, lease: timedelta, limit: int = 50) -> list[OutboxItem]:
    """Take due items for sending. The conditional UPDATE is the lock: with several instances on one
    database, exactly one wins each item, so nothing is sent twice. On PostgreSQL the candidates are read with
    FOR UPDATE SKIP LOCKED, so instances claiming at the same moment take different items instead of all
    queueing for the same ones and giving up."""
    candidates = session.scalars(
        select(OutboxItem.id)
        .where(_claimable(now))
        .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    claimed = [
        item_id
        for item_id in candidates
        if cast(
            CursorResult[Any],
            session.execute(
                update(OutboxItem)
                .where(OutboxItem.id == item_id)
                .where(_claimable(now))
                .values(claimed_by=worker, claimed_until=now + lease, attempts=OutboxItem.attempts + 1)
            ),
        ).rowcount
    ]
    return list(session.scalars(select(OutboxItem).where(OutboxItem.id.in_(claimed)).order_by(OutboxItem.id)))


def mark_sent(session: Session, item_id: int, now: datetime) -> OutboxItem:
    item = session.get_one(OutboxItem, item_id)
    item.status, item.sent_at, item.claimed_until, item.last_error = "sent", now, None, None
    return item


def mark_attempt_failed(session: Session, item_id: int, error: str, retry_at: datetime | None) -> OutboxItem:
    """Record a failed attempt; retry_at None means permanent failure (the relay refused it for good)."""
    item = session.get_one(OutboxItem, item_id)
    item.last_error = error[:2000]
    item.claimed_until = None
    if retry_at is None:
        item.status = "failed"
    else:
        item.next_attempt_at = retry_at
    return item


def release(session: Session, ids: list[int], owner: str) -> None:
    """Give back items `owner` claimed and did not send: due again at once, for any instance."""
    session.execute(
        update(OutboxItem)
        .where(OutboxItem.id.in_(ids), OutboxItem.status == "pending", OutboxItem.claimed_by == owner)
        .values(claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )


def next_due(session: Session) -> datetime | None:
    """When the earliest pending item becomes due (to wake the sender then)."""
    return session.scalar(select(func.min(OutboxItem.next_attempt_at)).where(OutboxItem.status == "pending"))


def for_ticket(session: Session, ticket_id: int) -> list[OutboxItem]:
    return list(session.scalars(select(OutboxItem).where(OutboxItem.ticket_id == ticket_id).order_by(OutboxItem.id)))
