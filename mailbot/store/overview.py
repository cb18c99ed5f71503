"""What an operator watches, read from the database in one go: the inbound backlog, the outbox, tickets by
status, the SLA findings on running tickets, the last message received.

The one source of `mailbot status` and of the gauges of /metrics (mailbot.metrics), so both say the same, and
every instance on one database agrees. Each count runs on an index (status, id / status, next attempt) or
the primary key, so a scrape every few seconds costs little even with a large history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbot.sla import AT_RISK, BREACHED, RUNNING
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket

STATUSES = ("new", "open", "held", "resolved")


@dataclass(frozen=True)
class Overview:
    now: datetime
    inbound_pending: int
    inbound_oldest_pending: datetime | None  # when the oldest message still waiting for the intake came in
    inbound_failed: int
    outbox_due: int  # pending and due now (waiting for the sender or for a retry that is due)
    outbox_oldest_due: datetime | None
    outbox_failing: int  # pending, and the last attempt failed: the relay is refusing or unreachable
    outbox_refused: int  # refused for good (5xx): will not go out without a person
    tickets: dict[str, int]
    sla_at_risk: int  # running tickets with an AT RISK finding on record (mailbot.sla)
    sla_breached: int  # running tickets with a missed deadline on record
    last_received: datetime | None

    @property
    def inbound_oldest_pending_seconds(self) -> float | None:
        return _age(self.now, self.inbound_oldest_pending)

    @property
    def outbox_oldest_due_seconds(self) -> float | None:
        return _age(self.now, self.outbox_oldest_due)

    def to_json(self) -> dict[str, Any]:
        """`mailbot status --json` (INTERFACE.md, "Operations")."""
        return {
            "inbound": {
                "pending": self.inbound_pending,
                "oldest_pending_seconds": self.inbound_oldest_pending_seconds,
                "failed": self.inbound_failed,
            },
            "outbox": {
                "due": self.outbox_due,
                "oldest_due_seconds": self.outbox_oldest_due_seconds,
                "failing": self.outbox_failing,
                "refused": self.outbox_refused,
            },
            "tickets": dict(self.tickets),
            "sla": {"at_risk": self.sla_at_risk, "breached": self.sla_breached},
            "last_received_at": self.last_received.isoformat() if self.last_received else None,
        }


def _age(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else round(max(0.0, (now - since).total_seconds()), 1)


def _count(session: Session, *where: Any, model: type = InboundMessage) -> int:
    return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _first_received(session: Session, *where: Any, newest: bool = False) -> datetime | None:
    """received_at of the first (or last) inbound row by id: ids follow arrival, and the id index answers."""
    order = InboundMessage.id.desc() if newest else InboundMessage.id
    return session.scalar(select(InboundMessage.received_at).where(*where).order_by(order).limit(1))


def read(session: Session, now: datetime) -> Overview:
    pending = InboundMessage.status == "pending"
    due = (OutboxItem.status == "pending", OutboxItem.next_attempt_at <= now)
    by_status = {status: count for status, count in session.execute(
        select(Ticket.status, func.count()).group_by(Ticket.status))}
    running = Ticket.status.in_(RUNNING)
    return Overview(
        now=now,
        inbound_pending=_count(session, pending),
        inbound_oldest_pending=_first_received(session, pending),
        inbound_failed=_count(session, InboundMessage.status == "failed"),
        outbox_due=_count(session, *due, model=OutboxItem),
        outbox_oldest_due=session.scalar(select(func.min(OutboxItem.due_at)).where(*due)),
        outbox_failing=_count(
            session, OutboxItem.status == "pending", OutboxItem.last_error.is_not(None), model=OutboxItem
        ),
        outbox_refused=_count(session, OutboxItem.status == "failed", model=OutboxItem),
        tickets={status: int(by_status.get(status, 0)) for status in STATUSES},
        # The findings recorded on a ticket (mailbot.sla.describe): "AT RISK: ...; BREACHED: ...".
        sla_at_risk=_count(session, running, Ticket.sla_breach.contains(AT_RISK), model=Ticket),
        sla_breached=_count(session, running, Ticket.sla_breach.contains(BREACHED), model=Ticket),
        last_received=_first_received(session, newest=True),
    )
