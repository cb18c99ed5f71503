"""One stored raw message -> parsed, deduplicated, turned into a ticket (or a follow-up, a hold...).

First `read`: parse the bytes and authenticate the sender, work that needs no database (and may wait on
DNS), so a runner does it outside any transaction. Then `process`, in one transaction: the steps are rules
applied in order; each either decides the outcome or passes. Outcomes are values: the inbound row records
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbot.admission import Gate
from mailbot.automatic import automatic_reason
from mailbot.followups import Continues, Decided, Followups
from mailbot.loops import MachineMail, Opening, automatic_hold
from mailbot.parse import ParseLimits, content_key
from mailbot.reading import Reading
from mailbot.salvage import read as read_message
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import InboundMessage
from mailbot.workflow import Workflow


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
        parsed = read_message(inbound.raw, self.limits)
        # Whom it trusts (mailbot.senders), never the lenient reading shown as the requester.
        sender = parsed.author.address if parsed.author else ""
        key = parsed.message_id or content_key(inbound.raw)
        return Reading(parsed, key, self.gate.authenticate(inbound, parsed, sender))

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
        and a Message-ID another instance stored a moment ago is a duplicate. Without it (a batch that the
        caller keeps in one savepoint and writes in one flush, mailbot.processor), any failure raises, the
        unique Message-ID index included.
        """
        reading = reading or self.read(inbound)
        if not isolated:
            outcome = self._decide(session, inbound, reading, now, isolated=False)
        else:
            try:
                with session.begin_nested():
                    outcome = self._decide(session, inbound, reading, now, isolated=True)
            except IntegrityError:
                # Another instance stored the same Message-ID a moment ago (the unique index is the guard).
                outcome = Outcome("duplicate")
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

    def _decide(
        self, session: Session, inbound: InboundMessage, reading: Reading, now: datetime, *, isolated: bool
    ) -> Outcome:
        parsed, key = reading.parsed, reading.key
        # Before the duplicate check: our own message coming back has a Message-ID we already keep.
        if (ignored := self.machines.screen(session, parsed, now)) is not None:
            return Outcome("ignored", ignored.ticket_id, ignored.detail)
        # In a batch (not isolated) the unique Message-ID index alone finds a duplicate, at the batch's flush,
        # and the batch then runs isolated: a look-up per message would cost more than the rare rerun.
        if isolated and ticket_store.message_id_known(session, key):
            return Outcome("duplicate")
        followup = self.followups.follow(session, inbound, reading, now)
        if isinstance(followup, Decided):
            return Outcome(followup.action, followup.ticket_id, followup.detail)
        parent_id = followup.parent_id if isinstance(followup, Continues) else None
        return self._new_ticket(session, inbound, reading, now, parent_id=parent_id)

    def _new_ticket(
        self,
        session: Session,
        inbound: InboundMessage,
        reading: Reading,
        now: datetime,
        *,
        parent_id: int | None = None,
    ) -> Outcome:
        parsed, key = reading.parsed, reading.key
        sender = parsed.from_
        requester = sender.address.lower() if sender else (inbound.envelope_from or "").lower()
        held = None if requester else ("no-sender-address", "the message names no sender to answer")
        automatic = automatic_reason(parsed.message, inbound.envelope_from)
        held = held or automatic_hold(automatic)  # automatic mail starts no conversation
        judged = requester and not held
        admission = self.gate.judge(session, inbound, parsed, now, reading.verdict) if judged else None
        if admission is not None:
            held = admission.held
        ticket = self.workflow.open_ticket(
            session,
            requester=requester,
            requester_name=sender.name if sender else "",
            subject=parsed.subject,
            now=now,
            organization_id=admission.organization_id if admission else None,
            held=held,
            parent_id=parent_id,
        )
        ticket_store.add_message(
            session,
            ticket,
            direction="in",
            kind="customer",
            message_id=key,
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
