"""The outbox: every message mailbot will send, durable until it is sent.

Planning goes through the ORM with the rest of the intake's write. Sending does not: the sender claims a
batch, then records what went out, many times a second under load, so those are Core statements built once
(a claim of 50 items is two statements, a record of several deliveries three), and a claimed item is a small
frozen value holding only what sending needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from mailbot.addresses import key_of
from mailbot.compose import Outgoing
from mailbot.store.schema import OutboxItem, Ticket, fresh


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
    item = fresh(
        OutboxItem,
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
    session.add(item)  # written with the caller's batch (mailbot.store.batch) or next flush; its id is not read
    return item


@dataclass(frozen=True, slots=True)
class Claimed:
    """An outbox item this instance now holds the lease on: what sending it takes, nothing more."""

    id: int
    ticket_id: int | None
    kind: str
    message_id: str
    envelope_from: str
    recipients: tuple[str, ...]
    body: bytes  # without Date and DKIM-Signature, added at send time
    attempts: int  # this one included


@dataclass(frozen=True, slots=True)
class Delivered:
    """A claimed item the transport took at `at` (the relay's 250, the maildir's rename)."""

    item: Claimed
    at: datetime


_outbox = cast(Table, OutboxItem.__table__)
_tickets = cast(Table, Ticket.__table__)
_CLAIMABLE = and_(
    _outbox.c.status == "pending",  # never "withheld": the loop governor's hold is only lifted by a person
    _outbox.c.next_attempt_at <= bindparam("now"),
    or_(_outbox.c.claimed_until.is_(None), _outbox.c.claimed_until < bindparam("now")),
)
_CANDIDATES = (
    select(_outbox.c.id)
    .where(_CLAIMABLE)
    .order_by(_outbox.c.next_attempt_at, _outbox.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(_outbox)
    .where(_outbox.c.id.in_(bindparam("ids", expanding=True)), _CLAIMABLE)
    .values(claimed_by=bindparam("owner"), claimed_until=bindparam("until"), attempts=_outbox.c.attempts + 1)
    .returning(*(_outbox.c[name] for name in Claimed.__dataclass_fields__))
)


def claim_due(session: Session, now: datetime, worker: str, lease: timedelta, limit: int = 50) -> list[Claimed]:
    """Take up to `limit` due items for sending, in id order. The conditional UPDATE is the lock: with several
    instances on one database, exactly one wins each item, so nothing is sent twice (one statement for the
    batch; its RETURNING gives the items this instance won). On PostgreSQL the candidates are read with
    FOR UPDATE SKIP LOCKED, so instances claiming at the same moment take different items instead of all
    queueing for the same ones and giving up."""
    connection = session.connection()
    candidates = connection.scalars(_CANDIDATES, {"now": now, "limit": limit}).all()
    if not candidates:
        return []
    values = {"ids": list(candidates), "now": now, "until": now + lease, "owner": worker}
    claimed = [_claimed(row._asdict()) for row in connection.execute(_CLAIM, values)]
    return sorted(claimed, key=lambda item: item.id)


def _claimed(row: dict[str, Any]) -> Claimed:
    return Claimed(**{**row, "recipients": tuple(row["recipients"])})


_SENT = (
    update(_outbox)
    .where(_outbox.c.id == bindparam("item"))
    .values(status="sent", sent_at=bindparam("at"), claimed_until=None, last_error=None)
)
# A ticket's first confirmation or introduction sent is its promise kept: a later one (a resend) changes nothing.
_TICKET_SENT = {
    kind: update(_tickets)
    .where(_tickets.c.id == bindparam("ticket"), column.is_(None))
    .values({column: bindparam("at")})
    for kind, column in (
        ("confirmation", _tickets.c.confirmation_sent_at),
        ("introduction", _tickets.c.introduction_sent_at),
    )
}


def record_sent(session: Session, delivered: Sequence[Delivered]) -> None:
    """Mark these items sent and note on their tickets when a promised message first went out."""
    connection = session.connection()
    connection.execute(_SENT, [{"item": d.item.id, "at": d.at} for d in delivered])
    for kind, statement in _TICKET_SENT.items():
        rows = [{"ticket": d.item.ticket_id, "at": d.at} for d in delivered if d.item.kind == kind and d.item.ticket_id]
        if rows:
            connection.execute(statement, rows)


def mark_attempt_failed(session: Session, item_id: int, error: str, retry_at: datetime | None) -> None:
    """Record a failed attempt; retry_at None means permanent failure (the relay refused it for good)."""
    retry = {"status": "failed"} if retry_at is None else {"next_attempt_at": retry_at}
    session.connection().execute(
        update(_outbox).where(_outbox.c.id == item_id).values(last_error=error[:2000], claimed_until=None, **retry)
    )


def release(session: Session, ids: list[int], owner: str) -> None:
    """Give back items `owner` claimed and did not send: due again at once, for any instance."""
    session.connection().execute(
        update(_outbox)
        .where(_outbox.c.id.in_(ids), _outbox.c.status == "pending", _outbox.c.claimed_by == owner)
        .values(claimed_by=None, claimed_until=None)
    )


def next_due(session: Session) -> datetime | None:
    """When the earliest pending item becomes due (to wake the sender then)."""
    return session.scalar(select(func.min(OutboxItem.next_attempt_at)).where(OutboxItem.status == "pending"))


def for_ticket(session: Session, ticket_id: int) -> list[OutboxItem]:
    return list(session.scalars(select(OutboxItem).where(OutboxItem.ticket_id == ticket_id).order_by(OutboxItem.id)))


def introduced(session: Session, ticket_id: int) -> bool:
    """Whether the customer was introduced to a specialist on this ticket: an introduction planned to go out
    (a withheld one never reaches them, so the next is still their first)."""
    return session.scalar(
        select(OutboxItem.id)
        .where(OutboxItem.ticket_id == ticket_id, OutboxItem.kind == "introduction", OutboxItem.status != "withheld")
        .limit(1)
    ) is not None
