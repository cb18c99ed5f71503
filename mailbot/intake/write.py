"""The intake's last stage: one decision (mailbot.intake.decisions) carried out through the workflow and the
store. The only part of the intake that writes: the ticket opened or joined, the message recorded on it, the
mail it sends queued, a bounce recorded, and the batch's facts (mailbot.facts) told of each, so the next
message of the batch sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from mailbot.admission import Gate
from mailbot.facts import Facts
from mailbot.followups import Followups
from mailbot.intake.decisions import Decision, Duplicate, FollowUp, Ignore, Joining, Open, Refuse
from mailbot.loops import MachineMail, Opening
from mailbot.reading import Reading
from mailbot.store import batch
from mailbot.store.schema import InboundMessage
from mailbot.trail import Trail
from mailbot.workflow import Workflow

log = logging.getLogger("mailbot.intake")


@dataclass(frozen=True)
class Outcome:
    action: str  # created | threaded | held | duplicate | ignored | deferred, or failed (mailbot.processor: a bug)
    ticket_id: int | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"ticket": self.ticket_id, "action": self.action}
        if self.detail:
            data["detail"] = self.detail
        return data


@dataclass(frozen=True)
class Write:
    workflow: Workflow
    gate: Gate
    followups: Followups
    machines: MachineMail

    def carry(
        self, session: Session, inbound: InboundMessage, reading: Reading, decision: Decision, facts: Facts, trail: Trail
    ) -> Outcome:
        """Carry `decision` out; `trail` has its notes already, and gets what only the write can tell."""
        if isinstance(decision, Ignore):
            if decision.bounce is not None and decision.item is not None:
                self.machines.record(session, decision.item, decision.bounce, facts)
            return Outcome("ignored", decision.ticket_id, decision.detail)
        if isinstance(decision, Duplicate):
            return Outcome("duplicate")
        if (collision := decision.found.collision) is not None:
            inbound.collision = collision
            log.warning("inbound %s: %s", inbound.id, collision)
        if isinstance(decision, FollowUp):
            detail = self._join(session, inbound, reading, decision, facts)
            if decision.joining is Joining.SPECIALIST:
                trail.add("threading", "threaded", detail)
            return Outcome("threaded", decision.ticket_id, detail)
        if isinstance(decision, Refuse):
            return self._refuse(session, inbound, reading, decision, facts)
        return self._open(session, inbound, reading, decision, facts)

    def finish(self, session: Session, facts: Facts, inbound: Sequence[InboundMessage] = (), owner: str = "") -> None:
        """Write what the decisions made (the tickets and the mail the facts were told of, what the session
        holds new), with the outcomes `inbound` (claimed by `owner`) records: an executemany per table at the
        batch's end (mailbot.store.batch)."""
        batch.write(session, facts.opened_tickets, facts.planned_mail, inbound, owner)

    def _join(
        self, session: Session, inbound: InboundMessage, reading: Reading, follow_up: FollowUp, facts: Facts
    ) -> str:
        """The message on its ticket, and what joining does (mailbot.followups); how it ended, in words."""
        ticket = facts.ticket(follow_up.ticket_id)
        assert ticket is not None  # the rules found it in the facts
        now, joining = facts.now, follow_up.joining
        if joining is Joining.TAKEN:
            assert follow_up.taker is not None
            self.workflow.assign(session, ticket, follow_up.taker, now, how="taken by email", facts=facts)
            # Nothing of it reaches the customer: speaking as the team needs the specialist token, which the
            # assignment mail just queued for the taker carries (mailbot.threads.admit).
        if follow_up.reopen:
            self.workflow.reopen(ticket, now)
        message = self.followups.store(session, ticket, inbound, reading, facts, kind=follow_up.kind)
        if joining is Joining.SPECIALIST:
            ended = self.followups.from_specialist(session, ticket, message, reading, now, facts)
            return f"{follow_up.detail}; {ended}"
        if joining is Joining.REPLY:
            attachments = reading.parsed.attachments
            self.followups.notify(
                session, ticket, message, now, facts, reopened=follow_up.reopen, attachments=attachments
            )
        return follow_up.detail

    def _refuse(
        self, session: Session, inbound: InboundMessage, reading: Reading, refuse: Refuse, facts: Facts
    ) -> Outcome:
        """A new held ticket for a message that named a ticket it may not join; the detail names the attempt."""
        parsed = reading.parsed
        ticket = self.workflow.open_ticket(
            session,
            requester=reading.requester,
            requester_name=parsed.from_.name if parsed.from_ else "",
            subject=parsed.subject,
            now=facts.now,
            facts=facts,
            held=refuse.held,
            opening=parsed.message,
        )
        self.followups.store(session, ticket, inbound, reading, facts, kind="customer")
        return Outcome("held", ticket.id, refuse.held.detail)

    def _open(self, session: Session, inbound: InboundMessage, reading: Reading, open_: Open, facts: Facts) -> Outcome:
        parsed, now, held, admission = reading.parsed, facts.now, open_.held, open_.admission
        sender = parsed.from_
        ticket = self.workflow.open_ticket(
            session,
            requester=reading.requester,
            requester_name=sender.name if sender else "",
            subject=parsed.subject,
            now=now,
            organization_id=admission.organization_id if admission else None,
            facts=facts,
            held=held,
            parent_id=open_.found.continues,
            opening=parsed.message,
        )
        self.followups.store(session, ticket, inbound, reading, facts, kind="customer", split=False)
        # What the guard on automatic replies reads (mailbot.loops rule 4), already in hand.
        bouncing = admission is not None and admission.contact is not None and admission.contact.bouncing
        opening = Opening(parsed.message, inbound.envelope_from, bouncing, reading.automatic)
        if admission is not None:
            self.gate.record(session, ticket, admission, now, opening, facts)
        if held:
            return Outcome("held", ticket.id, held.detail)
        self.workflow.start_clock(session, ticket, now, opening, facts)
        return Outcome("created", ticket.id)
