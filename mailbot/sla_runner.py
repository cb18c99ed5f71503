"""Keeping the promise on time: tickets nobody claimed are assigned by turn when due, a specialist's claim
takes a ticket at once, and every deadline missed or about to be is recorded on its ticket and reported once.

The shell around mailbot.sla and mailbot.assignment (the rules). The daemon runs `sweep` periodically and at
the next instant a verdict can change (`Sweep.next_check`); `ticket assign` runs `claim`. Everything it acts
on is read from the database at each run, so a restart or a day of downtime only delays: the first sweep
assigns whatever fell due meanwhile and records what was missed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from mailbot import assignment, sla
from mailbot.clock import Clock
from mailbot.config import SlaConfig
from mailbot.errors import RefusedError
from mailbot.store import Database, registry
from mailbot.store import sla as sla_store
from mailbot.store import tickets as ticket_store
from mailbot.workflow import Workflow

log = logging.getLogger("mailbot.sla")


@dataclass(frozen=True)
class Change:
    """A ticket's SLA record replaced: `finding` is the new text, None when the risk is over."""

    ticket_id: int
    was: str | None
    finding: str | None


@dataclass(frozen=True)
class Sweep:
    """What one sweep did, and when the next one is worth running."""

    assigned: list[tuple[int, str]]  # (ticket id, specialist address)
    changes: list[Change]
    next_check: datetime | None


@dataclass(frozen=True)
class Claim:
    """A ticket taken by a specialist; `introduction_id` is the outbox row queued, None when none was owed."""

    ticket_id: int
    address: str
    name: str
    previous: str | None  # who had it before (their own address: they had it already, nothing changed)
    introduction_id: int | None  # None when nothing changed, or the loop governor refused the introduction


class SlaRunner:
    def __init__(self, db: Database, workflow: Workflow, clock: Clock, config: SlaConfig) -> None:
        self.db = db
        self.workflow = workflow
        self.clock = clock
        self.config = config

    async def sweep(self) -> Sweep:
        """Assign what is due and record findings, on a database thread (the daemon's job)."""
        result = await self.db.run(self._sweep, self.clock.now())
        _report(result)
        return result

    def sweep_once(self) -> Sweep:
        """The same, synchronously (the CLI and tests)."""
        result = self.db.call(self._sweep, self.clock.now())
        _report(result)
        return result

    def claim(self, ticket_id: int, address: str) -> Claim:
        """The specialist at `address` takes the ticket: the introduction (or, for a ticket that changes hands,
        the customer's word of who takes over), their assignment mail and the previous holder's are queued.

        Refused (RefusedError) for an address that is not a specialist, one marked away, a held or a resolved
        ticket.
        """
        return self.db.call(self._claim, ticket_id, address, self.clock.now())

    def _sweep(self, session: Session, now: datetime) -> Sweep:
        assigned = self._assign_due(session, now)
        changes, next_check = self._check(session, now)
        return Sweep(assigned, changes, next_check)

    def _assign_due(self, session: Session, now: datetime) -> list[tuple[int, str]]:
        due = sla_store.due_for_assignment(session, now)
        if not due:
            return []
        team = sla_store.lock_team(session)
        assigned = []
        for ticket_id in due:
            chosen = assignment.choose(assignment.Candidate(s.id, s.active, s.last_turn) for s in team)
            if chosen is None:
                break  # nobody active: _check reports the risk on each of these tickets
            # The query found it; the rule decides, on the row as it is now that it is locked: a specialist
            # (or another instance) may have taken it meanwhile.
            ticket = sla_store.lock_ticket(session, ticket_id)
            if ticket is None or not sla.needs_assignment(sla_store.promise(ticket, {}), now):
                continue
            specialist = next(s for s in team if s.id == chosen.id)
            self.workflow.assign(session, ticket, specialist, now, how="by turn")  # to the back of the rotation
            assigned.append((ticket_id, specialist.address))
        return assigned

    def _check(self, session: Session, now: datetime) -> tuple[list[Change], datetime | None]:
        tickets = sla_store.watched(session)
        sending = sla_store.deliveries(session, [t.id for t in tickets])
        active = sla_store.active_specialists(session)
        margin, zone = self.config.at_risk_margin, self.workflow.hours.zone
        changes, instants = [], []
        for ticket in tickets:
            promise = sla_store.promise(ticket, sending)
            findings = sla.assess(promise, now, active_specialists=active, margin=margin, zone=zone)
            finding = sla.describe(findings)
            if finding != ticket.sla_breach and sla_store.record(
                session, ticket.id, ticket.sla_breach, finding, now
            ):
                changes.append(Change(ticket.id, ticket.sla_breach, finding))
            if (at := sla.next_check(promise, now, margin)) is not None:
                instants.append(at)
        return changes, min(instants, default=None)

    def _claim(self, session: Session, ticket_id: int, address: str, now: datetime) -> Claim:
        found = registry.find_specialist(session, address)
        if found is None:
            raise RefusedError(f"{address} is not a specialist (see `mailbot specialist list`)")
        # The specialist is locked before the ticket, in the same order as a sweep: see store/sla.py.
        specialist = sla_store.lock_specialist(session, found.id)
        ticket = sla_store.lock_ticket(session, ticket_id)
        if ticket is None:
            raise RefusedError(f"no ticket {ticket_id}")
        if ticket.status == "held":
            raise RefusedError(
                f"ticket {ticket_id} is held ({ticket.held_reason}): release it first (`mailbot ticket release {ticket_id}`)"
            )
        if ticket.status not in sla.RUNNING:
            raise RefusedError(f"ticket {ticket_id} is {ticket.status}")
        if ticket.specialist_id == specialist.id:
            return Claim(ticket_id, specialist.address, specialist.name, specialist.address, None)
        previous = ticket_store.specialist_address(session, ticket.specialist_id)
        item = self.workflow.assign(session, ticket, specialist, now)
        session.flush()  # the introduction's id
        return Claim(ticket_id, specialist.address, specialist.name, previous, item.id if item else None)


def _report(sweep: Sweep) -> None:
    """Log what a sweep did: each SLA finding once, at error level, when it is first recorded."""
    for ticket_id, address in sweep.assigned:
        log.info("ticket %d assigned to %s by turn; introduction queued", ticket_id, address)
    for change in sweep.changes:
        if change.finding:
            log.error("ticket %d: %s", change.ticket_id, change.finding)
        else:
            log.info("ticket %d: back on time (was: %s)", change.ticket_id, change.was)
