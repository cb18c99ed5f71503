"""One stored raw message -> parsed, deduplicated, turned into a ticket (or a follow-up, a hold...).

A pipeline, one module per stage:

1. reading (mailbot.intake.reading): parse the bytes, authenticate the sender, and work out each verdict
   once (automatic mail, bounce, our own mail, thread clues) into a `Reading`; no database, and it may wait
   on DNS, so a runner does it outside any transaction.
2. the batch's facts (mailbot.facts): what the rules look up, loaded once for all the batch's readings
   and updated as each decision is written, so a message sees what the messages before it in the batch did
   although nothing is written until the batch's end.
3. the rules (mailbot.intake.rules): pure functions of a reading and the facts, in order, each deciding
   (mailbot.intake.decisions) or passing; each notes its step on the message's decision trail.
4. the write (mailbot.intake.write): the decision carried out through the workflow and the store, the
   only stage that writes. Outcomes are values: the inbound row records them.

`decide` runs a batch (the caller keeps it in one savepoint: any failure raises, and the caller runs each
message alone); `process` runs one message alone, a batch of one in a savepoint of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbot.admission import Gate
from mailbot.facts import Facts
from mailbot.followups import Followups
from mailbot.intake.decisions import Found
from mailbot.intake.reading import read
from mailbot.intake.rules import Rules
from mailbot.intake.write import Outcome, Write
from mailbot.loops import MachineMail
from mailbot.parse import ParseLimits
from mailbot.reading import Reading
from mailbot.store.schema import InboundMessage
from mailbot.store.tickets import TicketIds
from mailbot.trail import Trail
from mailbot.workflow import Workflow

__all__ = ["Intake", "Outcome"]


class Intake:
    def __init__(
        self,
        workflow: Workflow,
        limits: ParseLimits | None = None,
        *,
        gate: Gate,
        followups: Followups,
        machines: MachineMail,
    ) -> None:
        self.workflow = workflow
        self.gate = gate
        self.followups = followups
        self.machines = machines
        self.limits = limits or ParseLimits()
        security = gate.security
        self.rules = Rules(
            reopen_within=followups.reopen_within,
            auth_retry_for=security.auth_retry_for,
            require_sender_auth=security.require_sender_auth,
            zone=gate.zone,
        )
        self.write = Write(workflow, gate, followups, machines)
        self.ticket_ids = TicketIds()  # drawn a batch at a time on PostgreSQL, shared by the batches

    def read(self, inbound: InboundMessage) -> Reading:
        """Parse the stored bytes and authenticate the From address: no database involved."""
        return read(inbound, self.limits, gate=self.gate, followups=self.followups, machines=self.machines)

    def facts(self, session: Session, readings: list[Reading], now: datetime) -> Facts:
        """The facts the rules will ask about `readings`, loaded at once (mailbot.facts)."""
        counts_from = self.workflow.governor.counts_from(now)
        return Facts.load(session, readings, now=now, counts_from=counts_from, ticket_ids=self.ticket_ids)

    def decide(
        self, session: Session, inbound: list[InboundMessage], readings: list[Reading], now: datetime, *, owner: str
    ) -> list[Outcome]:
        """Decide a batch, in order, with the facts loaded once for all of it; the inbound rows, claimed by
        `owner`, record the outcomes. Written at the end, a few Core statements for the whole batch
        (mailbot.store.batch). The caller keeps the batch in one savepoint: any failure raises (the unique
        index on message identities included, and TakenOver when `owner` no longer holds a row), and the
        caller then runs each message alone (`process`)."""
        facts = self.facts(session, readings, now)
        outcomes = [
            self._recorded(row, reading, now, partial(self._decide, session, row, reading, facts))
            for row, reading in zip(inbound, readings, strict=True)
        ]
        self.write.finish(session, facts, inbound, owner)
        return outcomes

    def process(
        self, session: Session, inbound: InboundMessage, now: datetime, *, reading: Reading | None = None
    ) -> Outcome:
        """Decide one message alone and store the result; the inbound row records the outcome.

        `reading`: what `read` made of it, when the caller read it beforehand (outside the transaction).
        In a savepoint of its own, so a failure undoes this message's writes and nothing else, and the same
        message another instance stored a moment ago is a duplicate.
        """
        try:
            reading = reading or self.read(inbound)
        except Exception:
            inbound.trail = []  # nothing read: the runner adds how it ended
            raise
        return self._recorded(inbound, reading, now, partial(self._isolated, session, inbound, reading, now))

    def _recorded(
        self, inbound: InboundMessage, reading: Reading, now: datetime, decide: Callable[[Trail], Outcome]
    ) -> Outcome:
        """Run `decide` on the message's trail and record the outcome on its row."""
        trail = Trail(reading.steps)
        try:
            outcome = decide(trail)
        except Exception:
            inbound.trail = trail.to_json()  # the steps up to the failure; the runner adds how it ended
            raise
        trail.add("decision", outcome.action, _decision_detail(outcome, trail))
        inbound.trail = trail.to_json()
        # Set after the decision, so the row is written once with its outcome (at the batch's end); nothing in
        # the decision reads the row's stored message_id.
        inbound.message_id = reading.key
        inbound.status = "processed"
        inbound.action = outcome.action
        inbound.error = None
        inbound.ticket_id = outcome.ticket_id
        inbound.processed_at = now
        inbound.claimed_until = None
        return outcome

    def _isolated(
        self, session: Session, inbound: InboundMessage, reading: Reading, now: datetime, trail: Trail
    ) -> Outcome:
        """`_decide` in a savepoint, with facts read for this one message. A unique index that refuses the
        write means another instance stored a row a moment ago (this very message, or the same attachment):
        decided again, with facts read again, seeing it."""
        for _ in range(2):
            del trail.steps[len(reading.steps):]  # a second attempt's steps replace the first's
            try:
                with session.begin_nested():
                    facts = self.facts(session, [reading], now)
                    outcome = self._decide(session, inbound, reading, facts, trail)
                    self.write.finish(session, facts)
                    return outcome
            except IntegrityError:
                continue
        trail.add("duplicate", "duplicate", f"{reading.key} was stored by another instance meanwhile")
        return Outcome("duplicate")

    def _decide(self, session: Session, inbound: InboundMessage, reading: Reading, facts: Facts, trail: Trail) -> Outcome:
        """The rules in order until one decides, each rule's notes on the trail as it ends; then the write."""
        found = Found()
        for rule in self.rules.in_order:
            result = rule(reading, facts, found)
            notes = result.notes if isinstance(result, Found) else result.found.notes
            for note in notes[len(found.notes):]:
                trail.add(*note)
            if not isinstance(result, Found):
                return self.write.carry(session, inbound, reading, result, facts, trail)
            found = result
        raise AssertionError("the last rule always decides")  # Rules.new_conversation


def _decision_detail(outcome: Outcome, trail: Trail) -> str:
    """Why, in one line: the outcome's own detail, else what the last rule found (e.g. who is entitled)."""
    ticket = f"ticket {outcome.ticket_id}" if outcome.ticket_id else ""
    why = outcome.detail or trail.reason
    return "; ".join(part for part in (ticket, why) if part)
