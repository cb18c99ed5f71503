"""What happens to a ticket: opened, confirmed, assigned and introduced, resolved, released.

Each transition runs inside the caller's transaction, so a ticket and the mail it owes the customer are
stored together or not at all (the outbox is the promise, written down).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from email.headerregistry import Address

from sqlalchemy import event
from sqlalchemy.orm import Session

from mailbot import sla
from mailbot.compose import Composer, Outgoing, Thread, one_line, ticket_reference, ticket_subject
from mailbot.config import SlaConfig
from mailbot.errors import RefusedError
from mailbot.hours import BusinessHours
from mailbot.loops import MachineMail, Opening
from mailbot.store import outbox
from mailbot.store import sla as sla_store
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import OutboxItem, Specialist, Ticket
from mailbot.tokens import ReplyTokens

# Messages between mailbot and the support team: never part of the customer's thread (their Message-IDs may
# name internal hosts), and threaded among themselves for the specialist.
INTERNAL_KINDS = frozenset({"notification", "specialist"})
_ARMED = "mailbot.workflow.armed"  # session.info: the earliest SLA instant of the tickets started in it


def address_of(addr_spec: str, name: str = "") -> Address:
    username, _, domain = addr_spec.rpartition("@")
    return Address(display_name=one_line(name), username=username, domain=domain)  # a name is customer text


class Workflow:
    def __init__(
        self, composer: Composer, hours: BusinessHours, sla: SlaConfig, *, tokens: ReplyTokens, guard: MachineMail
    ) -> None:
        self.composer = composer
        self.hours = hours
        self.sla = sla
        self.tokens = tokens
        self.guard = guard
        # Told, once the transaction that starts a ticket's clock committed, the first instant its SLA verdict
        # can change (its automatic assignment, an at-risk instant): the daemon's sweep runs then.
        self.deadlines: Callable[[datetime], None] | None = None

    def local_time(self, instant: datetime) -> str:
        """An instant as customers read it: 'Monday, November 30 at 11:00 AM EST'."""
        local = instant.astimezone(self.hours.zone)
        return f"{local:%A, %B} {local.day} at {local:%I:%M %p %Z}".replace(" 0", " ")

    def thread_of(self, ticket: Ticket) -> Thread:
        """Our next message replies to the customer's latest and references the whole conversation."""
        customer_side = [m for m in ticket.messages if m.kind not in INTERNAL_KINDS]
        ids = [m.message_id for m in customer_side if m.message_id.startswith("<")]
        inbound = [m.message_id for m in customer_side if m.direction == "in" and m.message_id.startswith("<")]
        return Thread.continuing(ids, inbound[-1] if inbound else (ids[-1] if ids else None))

    def specialist_thread(self, ticket: Ticket) -> Thread:
        """Our next notification continues the ticket's thread with the support team."""
        ids = [m.message_id for m in ticket.messages if m.kind in INTERNAL_KINDS and m.message_id.startswith("<")]
        return Thread.continuing(ids, ids[-1] if ids else None)

    def reply_to(self, ticket: Ticket) -> Address:
        """The ticket's signed reply address (mailbot.tokens): replies find the ticket without any header."""
        return address_of(self.tokens.address(ticket.id), self.composer.identity.name)

    def signed_by(self, specialist: Specialist) -> str:
        """The From name of mail a specialist writes: 'Sam Lee (Hero Support)'; the address stays ours."""
        return f"{specialist.name} ({self.composer.identity.name})"

    def context(self, ticket: Ticket) -> dict[str, object]:
        due = ticket.introduction_due_at
        return {
            "ticket_id": ticket.id,
            "reference": ticket_reference(ticket.id),
            "subject": ticket.subject or "(no subject)",
            "requester_name": ticket.requester_name,
            "introduction_due": self.local_time(due) if due else None,
        }

    def send(
        self,
        session: Session,
        ticket: Ticket,
        outgoing: Outgoing,
        *,
        now: datetime,
        deadline: datetime | None = None,
        due_at: datetime | None = None,
    ) -> OutboxItem:
        """Queue an outgoing message and record it in the ticket's conversation, in one transaction."""
        ticket_store.add_message(
            session,
            ticket,
            direction="out",
            kind=outgoing.kind,
            message_id=outgoing.message_id,
            from_address=outgoing.envelope_from,
            from_name=self.composer.identity.name,
            to=outgoing.recipients,
            subject=outgoing.subject,
            at=now,
            text=outgoing.text,
        )
        return outbox.plan(session, outgoing, ticket_id=ticket.id, now=now, due_at=due_at, deadline_at=deadline)

    def answer(
        self,
        session: Session,
        ticket: Ticket,
        kind: str,
        *,
        now: datetime,
        deadline: datetime | None = None,
        opening: Opening | None = None,
        **extra: object,
    ) -> OutboxItem | None:
        """Queue automatic mail to the requester (a confirmation, an explanation: templates/<kind>.*) only when
        mailbot.loops allows an automatic reply now; otherwise compose nothing, keep the reason on the ticket
        and return None. `opening`: the message being answered, when the caller has it parsed."""
        refused = self.guard.auto_reply_refusal(session, ticket, now, opening)
        if refused is not None:
            ticket.auto_reply_refused = refused
            return None
        outgoing = self.to_requester(session, ticket, kind, now=now, **extra)
        return self.send(session, ticket, outgoing, now=now, deadline=deadline)

    def react(self, session: Session, ticket: Ticket, outgoing: Outgoing, *, now: datetime) -> OutboxItem | None:
        """Queue mail that passes a message on (a notification, a relay) unless mailbot.loops sees a mail loop
        on the ticket; then queue nothing, keep the reason on the ticket, return None."""
        refused = self.guard.loop_refusal(session, ticket, now)
        if refused is not None:
            ticket.auto_reply_refused = refused
            return None
        return self.send(session, ticket, outgoing, now=now)

    def to_requester(self, session: Session, ticket: Ticket, kind: str, *, now: datetime, **extra: object) -> Outgoing:
        return self.composer.compose(
            kind,
            to=[address_of(ticket.requester, ticket.requester_name)],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.thread_of(ticket),
            context={**self.context(ticket), **extra},
            reply_to=self.reply_to(ticket),
        )

    def start_clock(self, session: Session, ticket: Ticket, now: datetime, opening: Opening | None = None) -> None:
        """The promise starts: deadlines set, the confirmation queued to go out at once."""
        ticket.clock_started_at = now
        ticket.confirmation_due_at = now + self.sla.confirmation_within
        ticket.assign_due_at = self.hours.add(now, self.sla.auto_assign_after)
        ticket.introduction_due_at = self.hours.add(now, self.sla.introduction_within)
        due = ticket.confirmation_due_at
        if self.answer(session, ticket, "confirmation", now=now, deadline=due, opening=opening) is None:
            ticket.confirmation_due_at = None  # nothing is promised to a machine or an unverifiable sender
        self._arm(session, ticket, now)

    def _arm(self, session: Session, ticket: Ticket, now: datetime) -> None:
        """Wake the sweep at this ticket's next SLA instant once it is stored (before, it would find nothing):
        the earliest of the transaction's new tickets, told once after its commit."""
        tell = self.deadlines
        at = sla.next_check(sla_store.promise(ticket, {}), now, self.sla.at_risk_margin) if tell else None
        if tell is None or at is None:
            return
        first = session.info.get(_ARMED)
        if first is None:
            event.listen(session, "after_commit", lambda done: tell(done.info.pop(_ARMED)), once=True)
        if first is None or at < first:
            session.info[_ARMED] = at

    def open_ticket(
        self,
        session: Session,
        *,
        requester: str,
        requester_name: str,
        subject: str,
        now: datetime,
        organization_id: int | None = None,
        held: tuple[str, str] | None = None,
        parent_id: int | None = None,
    ) -> Ticket:
        """A new ticket: held (reason, detail) ones wait without a clock; the others start it now.

        `parent_id`: the resolved ticket this one continues (a reply after the reopen window).
        """
        ticket = Ticket(
            id=ticket_store.allocate_id(session),
            status="held" if held else "new",
            held_reason=held[0] if held else None,
            held_detail=held[1] if held else None,
            subject=subject,
            requester=requester,
            requester_name=requester_name,
            organization_id=organization_id,
            parent_id=parent_id,
            created_at=now,
            updated_at=now,
            messages=[],  # a new ticket has none: without this, its first message costs a SELECT to find out
        )
        session.add(ticket)  # written with the caller's next flush: its id is known already
        return ticket

    def release(self, session: Session, ticket: Ticket, now: datetime) -> None:
        """A held ticket enters the normal flow now: status new, clock started, confirmation queued."""
        if ticket.status != "held":
            raise RefusedError(f"ticket {ticket.id} is not held (its status is {ticket.status})")
        ticket.status, ticket.held_reason, ticket.held_detail = "new", None, None
        ticket.released_at = ticket.updated_at = now
        self.start_clock(session, ticket, now)

    def assign(self, session: Session, ticket: Ticket, specialist: Specialist, now: datetime) -> OutboxItem | None:
        """The specialist takes the ticket; the introduction goes out now (once)."""
        ticket.specialist_id = specialist.id
        specialist.last_assigned_at = now
        specialist.last_turn = sla_store.next_turn(session)  # round-robin counts claims too
        if ticket.status == "new":
            ticket.status = "open"
        if any(m.kind == "introduction" for m in ticket.messages):
            return None
        introduction = self.composer.compose(
            "introduction",
            to=[address_of(ticket.requester, ticket.requester_name)],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.thread_of(ticket),
            context={**self.context(ticket), "specialist_name": specialist.name},
            from_name=self.signed_by(specialist),
            reply_to=self.reply_to(ticket),
        )
        return self.send(session, ticket, introduction, now=now, deadline=ticket.introduction_due_at)

    def resolve(self, session: Session, ticket: Ticket, now: datetime, note: str = "") -> OutboxItem:
        """The ticket is resolved; the customer is told, with the note, on their thread."""
        if ticket.status in ("held", "resolved"):
            raise RefusedError(f"ticket {ticket.id} is {ticket.status}; only a new or open ticket can be resolved")
        ticket.status, ticket.resolved_at, ticket.updated_at = "resolved", now, now
        specialist = session.get(Specialist, ticket.specialist_id) if ticket.specialist_id else None
        resolution = self.composer.compose(
            "resolution",
            to=[address_of(ticket.requester, ticket.requester_name)],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.thread_of(ticket),
            context={
                **self.context(ticket),
                "note": note.strip(),
                "specialist_name": specialist.name if specialist else None,
                "reopen_within": _in_words(self.sla.reopen_within),
            },
            from_name=self.signed_by(specialist) if specialist else None,
            reply_to=self.reply_to(ticket),
            auto_submitted="auto-generated",
        )
        return self.send(session, ticket, resolution, now=now)

    def reopen(self, ticket: Ticket, now: datetime) -> None:
        """A resolved ticket is worked on again: open with its specialist, else new (to be assigned)."""
        ticket.status = "open" if ticket.specialist_id else "new"
        ticket.resolved_at, ticket.updated_at = None, now


def _in_words(window: timedelta) -> str:
    """'14 days', '36 hours', '90 minutes': how long, as a customer reads it."""
    minutes = int(window.total_seconds() // 60)
    for size, unit in ((1440, "day"), (60, "hour"), (1, "minute")):
        if minutes % size == 0 and minutes >= size:
            count = minutes // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "a moment"
