"""One stored raw message -> parsed, deduplicated, turned into a ticket (or a follow-up, a hold...).

A pipeline in three stages:

1. `read`: parse the bytes, authenticate the sender, and work out each verdict once (automatic mail,
   bounce, thread clues: mailbot.reading); no database, and it may wait on DNS, so a runner does it
   outside any transaction.
2. the batch's facts (mailbot.facts): what the rules look up, loaded once for all the batch's readings
   and updated as each decision is made, so a message sees what the messages before it in the batch did
   although nothing is written until the batch's one flush.
3. the rules, in order, each deciding the outcome or passing; they ask the facts, never the session, about
   anything the batch may have written. Outcomes are values: the inbound row records them.

`decide` runs a batch (the caller keeps it in one savepoint: any failure raises, and the caller runs each
message alone); `process` runs one message alone, a batch of one in a savepoint of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbot.admission import ENTITLED, Admission, Gate
from mailbot.authn import AuthVerdict
from mailbot.automatic import automatic_reason
from mailbot.facts import Facts
from mailbot.followups import Continues, Decided, Followups
from mailbot.held import Held, HeldReason
from mailbot.identity import collision, identity, same_message
from mailbot.loops import MachineMail, Opening, automatic_hold
from mailbot.parse import ParseLimits, content_key
from mailbot.reading import Reading
from mailbot.salvage import read as read_message
from mailbot.store import tickets as ticket_store
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
        self.machines = machines
        self.gate = gate
        self.followups = followups
        self.limits = limits or ParseLimits()

    def read(self, inbound: InboundMessage) -> Reading:
        """Parse the stored bytes and authenticate the From address: no database involved.

        A message over the parse limits gets a degraded reading (mailbot.salvage), never a failure: the
        customer still gets a ticket. "failed" is left for our own bugs.
        """
        trail = Trail()
        parsed = read_message(inbound.raw, self.limits)
        # Whom it trusts (mailbot.senders), never the lenient reading shown as the requester.
        sender = parsed.author.address if parsed.author else ""
        requester = (parsed.from_.address if parsed.from_ else inbound.envelope_from or "").lower()
        key = parsed.message_id or content_key(inbound.raw)
        read_as = f"{key} from {sender or '(no trusted sender)'}, subject {parsed.subject!r}"
        if parsed.degraded:
            trail.add("reading", "degraded", f"{read_as}; {parsed.degraded}")
        else:
            trail.add("reading", "parsed", read_as)
        verdict = self.gate.authenticate(inbound, parsed, sender)
        trail.add("authentication", _auth_verdict(verdict), f"{verdict.method}: {verdict.reason}")
        same = identity(key, parsed, authenticated=verdict.authenticated)
        return Reading(
            parsed,
            key,
            verdict,
            same,
            tuple(trail.steps),
            requester=requester,
            automatic=automatic_reason(parsed.message, inbound.envelope_from),
            bounce=parsed.bounce_report,
            clues=self.followups.clues(inbound, parsed),
        )

    def facts(self, session: Session, readings: list[Reading], now: datetime) -> Facts:
        """The facts the rules will ask about `readings`, loaded at once (mailbot.facts)."""
        return Facts.load(session, readings, since=now - self.workflow.governor.horizon)

    def decide(
        self, session: Session, inbound: list[InboundMessage], readings: list[Reading], now: datetime
    ) -> list[Outcome]:
        """Decide a batch, in order, with the facts loaded once for all of it; the inbound rows record the
        outcomes. The caller keeps the batch in one savepoint and writes it in one flush: any failure
        raises (the unique index on message identities included), and the caller then runs each message
        alone (`process`)."""
        facts = self.facts(session, readings, now)
        return [
            self._recorded(row, reading, now, partial(self._decide, session, row, reading, now, facts))
            for row, reading in zip(inbound, readings, strict=True)
        ]

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
        # Set after the decision, so the row is written once with its outcome below (no flush of its own
        # before the savepoint); nothing in the decision reads the row's stored message_id.
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
                    return self._decide(session, inbound, reading, now, facts, trail)
            except IntegrityError:
                continue
        trail.add("duplicate", "duplicate", f"{reading.key} was stored by another instance meanwhile")
        return Outcome("duplicate")

    def _decide(
        self, session: Session, inbound: InboundMessage, reading: Reading, now: datetime, facts: Facts, trail: Trail
    ) -> Outcome:
        key = reading.key
        # Before the duplicate check: our own message coming back has a Message-ID we already keep.
        if (ignored := self.machines.screen(session, reading, facts)) is not None:
            trail.add("automatic mail", "ignored", ignored.detail)
            return Outcome("ignored", ignored.ticket_id, ignored.detail)
        automatic = reading.automatic
        trail.add("automatic mail", "automatic" if automatic else "written by a person", automatic or "")
        # A Message-ID proves nothing (mailbot.identity): only the same message again is a duplicate.
        uses = facts.uses(key)
        if same_message(reading.identity, key, uses) is not None:
            trail.add("duplicate", "duplicate", f"{key} is already stored, the same message")
            return Outcome("duplicate")
        if uses:
            inbound.collision = collision(key, uses)
            trail.add("duplicate", "collision", inbound.collision)
            log.warning("inbound %s: %s", inbound.id, inbound.collision)
        else:
            trail.add("duplicate", "new", "")
        followup = self.followups.follow(session, inbound, reading, now, facts)
        if isinstance(followup, Decided):
            trail.add("threading", followup.action, followup.detail)
            return Outcome(followup.action, followup.ticket_id, followup.detail)
        if isinstance(followup, Continues):
            trail.add("threading", "continues", f"ticket #{followup.parent_id} was resolved before the reopen "
                      "window: a new ticket linked to it")
        else:
            trail.add("threading", "new conversation", "names no ticket")
        parent_id = followup.parent_id if isinstance(followup, Continues) else None
        return self._new_ticket(session, inbound, reading, now, trail, facts, parent_id=parent_id)

    def _new_ticket(
        self,
        session: Session,
        inbound: InboundMessage,
        reading: Reading,
        now: datetime,
        trail: Trail,
        facts: Facts,
        *,
        parent_id: int | None = None,
    ) -> Outcome:
        parsed, key, requester = reading.parsed, reading.key, reading.requester
        sender = parsed.from_
        held = None if requester else Held(HeldReason.NO_SENDER, "the message names no sender to answer")
        held = held or automatic_hold(reading.automatic)  # automatic mail starts no conversation
        admission = self.gate.judge(inbound, reading, now, facts) if not held else None
        if admission is not None:
            held = admission.held
            trail.add("entitlement", held.reason if held else ENTITLED, held.detail if held else _entitled(admission))
        elif held:
            trail.add("entitlement", "not judged", f"held as {held.reason}: {held.detail}")
        ticket = self.workflow.open_ticket(
            session,
            requester=requester,
            requester_name=sender.name if sender else "",
            subject=parsed.subject,
            now=now,
            organization_id=admission.organization_id if admission else None,
            facts=facts,
            held=held,
            parent_id=parent_id,
            opening=parsed.message,
        )
        message = ticket_store.add_message(
            session,
            ticket,
            direction="in",
            kind="customer",
            message_id=key,
            identity=reading.identity,
            inbound_id=inbound.id,
            from_address=requester,
            from_name=sender.name if sender else "",
            to=[a.address for a in parsed.to],
            cc=[a.address for a in parsed.cc],
            subject=parsed.subject,
            at=now,
            text=parsed.text,
            attachments=parsed.attachments,
            blobs=facts,
        )
        facts.recorded(message, ticket.id)
        # What the guard on automatic replies reads (mailbot.loops rule 4), already in hand.
        bouncing = admission is not None and admission.contact is not None and admission.contact.bouncing
        opening = Opening(parsed.message, inbound.envelope_from, bouncing, reading.automatic)
        if admission is not None:
            self.gate.record(session, ticket, admission, now, opening, facts)
        if held:
            return Outcome("held", ticket.id, held.detail)
        self.workflow.start_clock(session, ticket, now, opening, facts)
        return Outcome("created", ticket.id)


def _auth_verdict(verdict: AuthVerdict) -> str:
    if verdict.authenticated:
        return "pass"
    return "temporary failure" if verdict.temporary else "fail"


def _entitled(admission: Admission) -> str:
    contact = admission.contact
    if contact is None:
        return "entitled"
    org = contact.facts.org
    return f"{contact.facts.address} is a named contact of {org.name} ({org.product}, {org.plan})"


def _decision_detail(outcome: Outcome, trail: Trail) -> str:
    """Why, in one line: the outcome's own detail, else what the last rule found (e.g. who is entitled)."""
    ticket = f"ticket {outcome.ticket_id}" if outcome.ticket_id else ""
    why = outcome.detail or trail.reason
    return "; ".join(part for part in (ticket, why) if part)
