"""The outbox: every message mailbot will send, durable until it is sent.

Planning goes through the ORM with the rest of the intake's write. Sending does not: the sender claims a
batch, then records what went out, many times a second under load, so those are Core statements built once
(a claim of 50 items is one statement, a record of a group two, each an executemany through the driver),
run on a bare connection (Database.statements) or a session's, and a claimed item is a small frozen value holding only what sending
needs.

A claim adds one to the item's `attempts`, and exactly one claimer wins each claim (a conditional UPDATE):
so (id, attempts) names one claim of one item, and a record of it as sent takes effect only while no later
claim took the item over. The sender's maildir relies on it (mailbot.sender).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple, cast

from sqlalchemy import Connection, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from mailbot.addresses import key_of
from mailbot.compose import Outgoing
from mailbot.store import driver
from mailbot.store.schema import OutboxItem, Ticket, fresh


def item(
    outgoing: Outgoing,
    *,
    ticket_id: int | None,
    now: datetime,
    due_at: datetime | None = None,
    deadline_at: datetime | None = None,
    withheld: str | None = None,
) -> OutboxItem:
    """The outbox row that queues `outgoing`, not in any session (`plan` adds it to one; the intake's batch
    writes it itself, mailbot.store.batch); `withheld`: kept back for that reason (the loop governor), never
    sent as it stands."""
    return fresh(
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


def plan(session: Session, queued: OutboxItem) -> OutboxItem:
    """Queue an `item` with the session's next flush."""
    session.add(queued)
    return queued


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


_outbox = cast(Table, OutboxItem.__table__)
_tickets = cast(Table, Ticket.__table__)
_CLAIMABLE = and_(
    _outbox.c.status == "pending",  # never "withheld": the loop governor's hold is only lifted by a person
    _outbox.c.next_attempt_at <= bindparam("now"),
    or_(_outbox.c.claimed_until.is_(None), _outbox.c.claimed_until < bindparam("now")),
)
# The candidates, a CTE: PostgreSQL then reads them once. As a plain subquery of the UPDATE it may read them
# again for each row, each time past the rows this statement just claimed, and claim more than `limit`.
_CANDIDATES = (
    select(_outbox.c.id)
    .where(_CLAIMABLE)
    .order_by(_outbox.c.next_attempt_at, _outbox.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
    .cte("candidates")
)
_CLAIM = (
    update(_outbox)
    .where(_outbox.c.id.in_(select(_CANDIDATES.c.id)), _CLAIMABLE)
    .values(claimed_by=bindparam("owner"), claimed_until=bindparam("until"), attempts=_outbox.c.attempts + 1)
    .returning(*(_outbox.c[name] for name in Claimed.__dataclass_fields__))
)


def claim_due(
    session: Session | Connection, now: datetime, worker: str, lease: timedelta, limit: int = 50
) -> list[Claimed]:
    """Take up to `limit` due items for sending, in id order. The conditional UPDATE is the lock: with several
    instances on one database, exactly one wins each item, so nothing is sent twice (one statement for the
    batch; its RETURNING gives the items this instance won). On PostgreSQL the candidates are read with
    FOR UPDATE SKIP LOCKED, so instances claiming at the same moment take different items instead of all
    queueing for the same ones and giving up."""
    values = {"now": now, "limit": limit, "until": now + lease, "owner": worker}
    claimed = [_claimed(*row) for row in _connection(session).execute(_CLAIM, values)]
    return sorted(claimed, key=lambda item: item.id)


def _connection(session: Session | Connection) -> Connection:
    return session if isinstance(session, Connection) else session.connection()


def _claimed(
    id: int, ticket_id: int | None, kind: str, message_id: str, envelope_from: str, recipients: list[str], body: bytes,
    attempts: int,
) -> Claimed:
    """A row of _CLAIM's RETURNING (Claimed's fields, in order), taken by position: a dict per row cost more."""
    return Claimed(id, ticket_id, kind, message_id, envelope_from, tuple(recipients), body, attempts)


# Statements with a fixed text, run as executemany: an expanding IN list is rendered anew on each run (its
# cost, not the database's, was most of a record's), and a list of (id, attempts) pairs is no index look-up
# for SQLite.
_SENT = (
    update(_outbox)
    .where(_outbox.c.id == bindparam("item"), _outbox.c.attempts == bindparam("claim"), _outbox.c.status == "pending")
    .values(status="sent", sent_at=bindparam("at"), claimed_until=None, last_error=None)
)
_SENT_BY = select(_outbox.c.id, _outbox.c.attempts).where(
    _outbox.c.id.in_(bindparam("ids", expanding=True)), _outbox.c.status == "sent"
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


def record_sent(session: Session | Connection, items: Sequence[Claimed], at: datetime) -> set[int]:
    """Mark these claimed items sent at `at` and note on their tickets when a promised message first went out;
    returns the ids recorded: each item whose claim is still the latest one (no other instance claimed it
    since: a stalled sender's lease ran out), and not recorded already."""
    connection = _connection(session)
    marked = driver.run_many(connection, _SENT, [{"item": i.id, "claim": i.attempts} for i in items], at=at)
    if marked.rowcount == len(items):
        recorded = {item.id for item in items}
    else:  # some claim was not the latest (or the driver does not count an executemany's rows): which
        claims = {(item.id, item.attempts) for item in items}
        recorded = {id for id, attempts in connection.execute(_SENT_BY, {"ids": [i.id for i in items]}) if (id, attempts) in claims}
    for kind, statement in _TICKET_SENT.items():
        rows = [{"ticket": i.ticket_id} for i in items if i.id in recorded and i.kind == kind and i.ticket_id]
        if rows:
            driver.run_many(connection, statement, rows, at=at)
    return recorded


class ItemState(NamedTuple):
    """Where an item stands, as a transport that finds its own leftovers asks (mailbot.sender)."""

    message_id: str
    attempts: int
    sent: bool
    kind: str


_STATES = select(
    _outbox.c.id, _outbox.c.message_id, _outbox.c.attempts, _outbox.c.status == "sent", _outbox.c.kind
).where(
    _outbox.c.id.in_(bindparam("ids", expanding=True))
)


def states(session: Session | Connection, ids: Sequence[int]) -> dict[int, ItemState]:
    """These items (those that exist), by id."""
    rows = _connection(session).execute(_STATES, {"ids": list(ids)})
    return {row[0]: ItemState(row[1], row[2], bool(row[3]), row[4]) for row in rows}


def mark_attempt_failed(
    session: Session | Connection, item_id: int, error: str, retry_at: datetime | None
) -> None:
    """Record a failed attempt; retry_at None means permanent failure (the relay refused it for good)."""
    retry = {"status": "failed"} if retry_at is None else {"next_attempt_at": retry_at}
    _connection(session).execute(
        update(_outbox).where(_outbox.c.id == item_id).values(last_error=error[:2000], claimed_until=None, **retry)
    )


def release(session: Session | Connection, ids: list[int], owner: str) -> None:
    """Give back items `owner` claimed and did not send: due again at once, for any instance."""
    _connection(session).execute(
        update(_outbox)
        .where(_outbox.c.id.in_(ids), _outbox.c.status == "pending", _outbox.c.claimed_by == owner)
        .values(claimed_by=None, claimed_until=None)
    )


_NEXT_DUE = select(func.min(_outbox.c.next_attempt_at)).where(_outbox.c.status == "pending")


def next_due(session: Session | Connection) -> datetime | None:
    """When the earliest pending item becomes due (to wake the sender then)."""
    return _connection(session).scalar(_NEXT_DUE)


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
