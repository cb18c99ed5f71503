"""The queries behind keeping the promise on time: tickets due for assignment, the team's rotation, the
tickets whose deadlines are still being watched, and the SLA record on a ticket.

Locks, so that several instances on one PostgreSQL database assign each ticket once and in turn: an
automatic assignment locks the whole team (SELECT ... FOR UPDATE, in id order) before any ticket, and a
claim locks its specialist before its ticket, so the two always take locks in the same order. SQLite has one
writer at a time anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, func, or_, select, update
from sqlalchemy.orm import Session

from mailbot.sla import RUNNING, Delivery, Promise
from mailbot.store.schema import OutboxItem, Specialist, Ticket

PROMISED = ("confirmation", "introduction")  # the outbox kinds the promise is made of


def next_turn(session: Session) -> int:
    """The position the next assignment takes in the team's sequence (assignment.py)."""
    return int(session.scalar(select(func.max(Specialist.last_turn))) or 0) + 1


def due_for_assignment(session: Session, now: datetime) -> list[int]:
    """Tickets nobody claimed whose automatic assignment is due, the most overdue first."""
    return list(
        session.scalars(
            select(Ticket.id)
            .where(
                Ticket.status.in_(RUNNING),
                Ticket.clock_started_at.is_not(None),
                Ticket.specialist_id.is_(None),
                Ticket.assign_due_at <= now,
            )
            .order_by(Ticket.assign_due_at, Ticket.id)
        )
    )


def lock_team(session: Session) -> list[Specialist]:
    """Every specialist, locked for this transaction, in id order."""
    return list(
        session.scalars(
            select(Specialist)
            .order_by(Specialist.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )


def lock_specialist(session: Session, specialist_id: int) -> Specialist:
    return session.scalars(
        select(Specialist)
        .where(Specialist.id == specialist_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def lock_ticket(session: Session, ticket_id: int) -> Ticket | None:
    """The ticket, locked for this transaction and read afresh."""
    return session.scalars(
        select(Ticket)
        .where(Ticket.id == ticket_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def active_specialists(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Specialist).where(Specialist.active)) or 0)


def watched(session: Session) -> list[Ticket]:
    """The tickets whose SLA verdict may still change: running, and a message still owed, a deadline met
    late, or a finding on record (a late one stays until the ticket is resolved)."""
    return list(
        session.scalars(
            select(Ticket)
            .where(
                Ticket.status.in_(RUNNING),
                Ticket.clock_started_at.is_not(None),
                or_(
                    and_(Ticket.confirmation_sent_at.is_(None), Ticket.confirmation_due_at.is_not(None)),
                    Ticket.introduction_sent_at.is_(None),
                    Ticket.sla_breach.is_not(None),
                    Ticket.confirmation_sent_at > Ticket.confirmation_due_at,
                    Ticket.introduction_sent_at > Ticket.introduction_due_at,
                ),
            )
            .order_by(Ticket.id)
        )
    )


def deliveries(session: Session, ticket_ids: Sequence[int]) -> dict[tuple[int, str], Delivery]:
    """How sending goes for each ticket's confirmation and introduction (the latest outbox row of each)."""
    if not ticket_ids:
        return {}
    rows = session.execute(
        select(OutboxItem.ticket_id, OutboxItem.kind, OutboxItem.status, OutboxItem.last_error)
        .where(OutboxItem.ticket_id.in_(ticket_ids), OutboxItem.kind.in_(PROMISED))
        .order_by(OutboxItem.id)
    ).all()
    return {(cast(int, ticket_id), kind): Delivery(status, error) for ticket_id, kind, status, error in rows}


def promise(ticket: Ticket, sending: dict[tuple[int, str], Delivery]) -> Promise:
    """The ticket as the SLA rules see it."""
    return Promise(
        status=ticket.status,
        started_at=ticket.clock_started_at,
        confirmation_due_at=ticket.confirmation_due_at,
        confirmation_sent_at=ticket.confirmation_sent_at,
        assign_due_at=ticket.assign_due_at,
        introduction_due_at=ticket.introduction_due_at,
        introduction_sent_at=ticket.introduction_sent_at,
        assigned=ticket.specialist_id is not None,
        confirmation=sending.get((ticket.id, "confirmation")),
        introduction=sending.get((ticket.id, "introduction")),
    )


def record(session: Session, ticket_id: int, was: str | None, finding: str | None, now: datetime) -> bool:
    """Replace the ticket's SLA record `was` by `finding`; False when another instance changed it first
    (the conditional UPDATE decides, so each change is recorded, and reported, once)."""
    changed = cast(
        CursorResult[Any],
        session.execute(
            update(Ticket)
            .where(Ticket.id == ticket_id, Ticket.sla_breach.is_not_distinct_from(was))
            .values(sla_breach=finding, sla_breached_at=now if finding else None)
            .execution_options(synchronize_session=False)
        ),
    )
    return bool(changed.rowcount)
