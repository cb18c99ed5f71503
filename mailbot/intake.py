"""One stored raw message -> parsed, deduplicated, turned into a ticket (or a follow-up, a hold...).

First `read`: parse the bytes and authenticate the sender, work that needs no database (and may wait on
DNS), so a runner does it outside any transaction. Then `process`, in one transaction: the steps are rules
applied in order; each either decides the outcome or passes. Outcomes are values: the inbound row records
them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbot.admission import ENTITLED, Admission, Gate
from mailbot.authn import AuthVerdict
from mailbot.automatic import automatic_reason
from mailbot.followups import Continues, Decided, Followups
from mailbot.identity import collision, identity, same_message
from mailbot.loops import MachineMail, Opening, automatic_hold
from mailbot.parse import ParseLimits, content_key
from mailbot.reading import Reading
from mailbot.salvage import read as read_message
from mailbot.store import conversations
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
        key = parsed.message_id or content_key(inbound.raw)
        read_as = f"{key} from {sender or '(no trusted sender)'}, subject {parsed.subject!r}"
        if parsed.degraded:
            trail.add("reading", "degraded", f"{read_as}; {parsed.degraded}")
        else:
            trail.add("reading", "parsed", read_as)
        verdict = self.gate.authenticate(inbound, parsed, sender)
        trail.add("authentication", _auth_verdict(verdict), f"{verdict.method}: {verdict.reason}")
        same = identity(key, parsed, authenticated=verdict.authenticated)
        return Reading(parsed, key, verdict, same, tuple(trail.steps))

    def process(
        self,
        session: Session,
        inbound: InboundMessage,
        now: datetime,
        *,
        isolated: bool = True,
        reading: Reading | None = None,
    ) -> Outcome:
        """Decide what the message is and store the result; the inbound row records the outcome.

        `reading`: what `read` made of it, when the caller read it beforehand (outside the transaction).
        `isolated`: in a savepoint of its own, so a failure undoes this message's writes and nothing else,
        and the same message another instance stored a moment ago is a duplicate. Without it (a batch that
        the caller keeps in one savepoint and writes in one flush, mailbot.processor), any failure raises,
        the unique index on message identities included.
        """
        trail = Trail()
        try:
            reading = reading or self.read(inbound)
            trail = Trail(reading.steps)
            if not isolated:
                outcome = self._decide(session, inbound, reading, now, trail)
            else:
                outcome = self._isolated(session, inbound, reading, now, trail)
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
        """`_decide` in a savepoint. A unique index that refuses the write means another instance stored a
        row a moment ago (this very message, or the same attachment): decided again, seeing it."""
        for _ in range(2):
            del trail.steps[len(reading.steps):]  # a second attempt's steps replace the first's
            try:
                with session.begin_nested():
                    return self._decide(session, inbound, reading, now, trail)
            except IntegrityError:
                continue
        trail.add("duplicate", "duplicate", f"{reading.key} was stored by another instance meanwhile")
        return Outcome("duplicate")

    def _decide(self, session: Session, inbound: InboundMessage, reading: Reading, now: datetime, trail: Trail) -> Outcome:
        parsed, key = reading.parsed, reading.key
        # Before the duplicate check: our own message coming back has a Message-ID we already keep.
        if (ignored := self.machines.screen(session, parsed, now)) is not None:
            trail.add("automatic mail", "ignored", ignored.detail)
            return Outcome("ignored", ignored.ticket_id, ignored.detail)
        automatic = automatic_reason(parsed.message, inbound.envelope_from)
        trail.add("automatic mail", "automatic" if automatic else "written by a person", automatic or "")
        # A Message-ID proves nothing (mailbot.identity): only the same message again is a duplicate.
        uses = conversations.uses(session, key)
        if same_message(reading.identity, key, uses) is not None:
            trail.add("duplicate", "duplicate", f"{key} is already stored, the same message")
            return Outcome("duplicate")
        if uses:
            inbound.collision = collision(key, uses)
            trail.add("duplicate", "collision", inbound.collision)
            log.warning("inbound %s: %s", inbound.id, inbound.collision)
        else:
            trail.add("duplicate", "new", "")
        followup = self.followups.follow(session, inbound, reading, now, automatic=automatic is not None)
        if isinstance(followup, Decided):
            trail.add("threading", followup.action, followup.detail)
            return Outcome(followup.action, followup.ticket_id, followup.detail)
        if isinstance(followup, Continues):
            trail.add("threading", "continues", f"ticket #{followup.parent_id} was resolved before the reopen "
                      "window: a new ticket linked to it")
        else:
            trail.add("threading", "new conversation", "names no ticket")
        parent_id = followup.parent_id if isinstance(followup, Continues) else None
        return self._new_ticket(session, inbound, reading, now, trail, automatic, parent_id=parent_id)

    def _new_ticket(
        self,
        session: Session,
        inbound: InboundMessage,
        reading: Reading,
        now: datetime,
        trail: Trail,
        automatic: str | None,
        *,
        parent_id: int | None = None,
    ) -> Outcome:
        parsed, key = reading.parsed, reading.key
        sender = parsed.from_
        requester = sender.address.lower() if sender else (inbound.envelope_from or "").lower()
        held = None if requester else ("no-sender-address", "the message names no sender to answer")
        held = held or automatic_hold(automatic)  # automatic mail starts no conversation
        judged = requester and not held
        admission = self.gate.judge(session, inbound, parsed, now, reading.verdict) if judged else None
        if admission is not None:
            held = admission.held
            trail.add("entitlement", held[0] if held else ENTITLED, held[1] if held else _entitled(admission))
        elif held:
            trail.add("entitlement", "not judged", f"held as {held[0]}: {held[1]}")
        ticket = self.workflow.open_ticket(
            session,
            requester=requester,
            requester_name=sender.name if sender else "",
            subject=parsed.subject,
            now=now,
            organization_id=admission.organization_id if admission else None,
            held=held,
            parent_id=parent_id,
            opening=parsed.message,
        )
        ticket_store.add_message(
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
        )
        # What the guard on automatic replies reads (mailbot.loops rule 4), already in hand.
        bouncing = admission is not None and admission.contact is not None and admission.contact.bouncing
        opening = Opening(parsed.message, inbound.envelope_from, bouncing, automatic)
        if admission is not None:
            self.gate.record(session, ticket, admission, now, opening)
        if held:
            return Outcome("held", ticket.id, held[1])
        self.workflow.start_clock(session, ticket, now, opening)
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
