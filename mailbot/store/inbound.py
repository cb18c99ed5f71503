"""Raw inbound messages: stored first, processed after."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session

from mailbot.store.schema import InboundMessage


@dataclass(frozen=True)
class RawMessage:
    """What a door hands over: the bytes exactly as received, and the envelope."""

    raw: bytes
    source: str
    envelope_from: str | None = None
    envelope_to: Sequence[str] = ()
    peer: str | None = None  # the SMTP/LMTP client's IP address


def insert_many(session: Session, messages: Sequence[RawMessage], now: datetime) -> list[int]:
    """Store raw messages in one statement; returns their ids in the order given."""
    rows = [
        {
            "received_at": now,
            "source": m.source,
            "envelope_from": m.envelope_from,
            "envelope_to": list(m.envelope_to),
            "peer": m.peer,
            "size": len(m.raw),
            "raw": m.raw,
            "status": "pending",
            "attempts": 0,
        }
        for m in messages
    ]
    statement = insert(InboundMessage).returning(InboundMessage.id, sort_by_parameter_order=True)
    return list(session.scalars(statement, rows))


def claim_pending(session: Session, now: datetime, lease: timedelta, limit: int) -> list[InboundMessage]:
    """Take up to `limit` pending messages for processing; a lease keeps other instances off them.

    A lease that ran out (its holder died) makes the message claimable again.
    """
    candidates = session.scalars(
        select(InboundMessage.id)
        .where(InboundMessage.status == "pending")
        .where(or_(InboundMessage.claimed_until.is_(None), InboundMessage.claimed_until < now))
        .order_by(InboundMessage.id)
        .limit(limit)
    ).all()
    claimed = []
    for inbound_id in candidates:
        taken = session.execute(
            update(InboundMessage)
            .where(InboundMessage.id == inbound_id, InboundMessage.status == "pending")
            .where(or_(InboundMessage.claimed_until.is_(None), InboundMessage.claimed_until < now))
            .values(claimed_until=now + lease, attempts=InboundMessage.attempts + 1)
        ).rowcount
        if taken:
            claimed.append(inbound_id)
    return list(session.scalars(select(InboundMessage).where(InboundMessage.id.in_(claimed)).order_by(InboundMessage.id)))


def get(session: Session, inbound_id: int, *, lock: bool = False) -> InboundMessage | None:
    """One row; `lock` holds it (SELECT ... FOR UPDATE on PostgreSQL; SQLite's write lock already does)."""
    return session.get(InboundMessage, inbound_id, with_for_update=lock)


def retry_failed(session: Session, ids: Sequence[int] = ()) -> int:
    """Put failed messages back in the queue (all of them, or the ids given)."""
    statement = update(InboundMessage).where(InboundMessage.status == "failed")
    if ids:
        statement = statement.where(InboundMessage.id.in_(ids))
    return session.execute(statement.values(status="pending", claimed_until=None, error=None)).rowcount


def failed(session: Session) -> list[InboundMessage]:
    return list(session.scalars(select(InboundMessage).where(InboundMessage.status == "failed").order_by(InboundMessage.id)))
