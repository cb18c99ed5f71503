"""What happens to a ticket: opened, confirmed, assigned and introduced, resolved, released.

Each transition runs inside the caller's transaction, so a ticket and the mail it owes the customer are
stored together or not at all (the outbox is the promise, written down).
"""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address

from sqlalchemy.orm import Session

from mailbot.compose import Composer, Outgoing, Thread, ticket_reference, ticket_subject
from mailbot.config import SlaConfig
from mailbot.hours import BusinessHours
from mailbot.store import outbox
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import OutboxItem, Specialist, Ticket


def address_of(addr_spec: str, name: str = "") -> Address:
    username, _, domain = addr_spec.rpartition("@")
    return Address(display_name=name, username=username, domain=domain)


class Workflow:
    def __init__(self, composer: Composer, hours: BusinessHours, sla: SlaConfig) -> None:
        self.composer = composer
        self.hours = hours
        self.sla = sla

    def local_time(self, instant: datetime) -> str:
        """An instant as customers read it: 'Monday, November 30 at 11:00 AM EST'."""
        local = instant.astimezone(self.hours.zone)
        return f"{local:%A, %B} {local.day} at {local:%I:%M %p %Z}".replace(" 0", " ")

    def thread_of(self, ticket: Ticket) -> Thread:
        """Our next message replies to the customer's latest and references the whole conversation."""
        ids = [m.message_id for m in ticket.messages if m.message_id.startswith("<")]
        inbound = [m.message_id for m in ticket.messages if m.direction == "in" and m.message_id.startswith("<")]
        references = ids[:1] + ids[1:][-19:]  # the root plus the latest, RFC 5322 3.6.4 allows trimming
        return Thread(in_reply_to=inbound[-1] if inbound else (ids[-1] if ids else None), references=tuple(references))

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
        item = outbox.plan(session, outgoing, ticket_id=ticket.id, now=now, due_at=due_at, deadline_at=deadline)
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
        return item

    def to_requester(self, session: Session, ticket: Ticket, kind: str, *, now: datetime, **extra: object) -> Outgoing:
        return self.composer.compose(
            kind,
            to=[address_of(ticket.requester, ticket.requester_name)],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.thread_of(ticket),
            context={**self.context(ticket), **extra},
        )

    def start_clock(self, session: Session, ticket: Ticket, now: datetime) -> None:
        """The promise starts: deadlines set, the confirmation queued to go out at once."""
        ticket.clock_started_at = now
        ticket.confirmation_due_at = now + self.sla.confirmation_within
        ticket.assign_due_at = self.hours.add(now, self.sla.auto_assign_after)
        ticket.introduction_due_at = self.hours.add(now, self.sla.introduction_within)
        confirmation = self.to_requester(session, ticket, "confirmation", now=now)
        self.send(session, ticket, confirmation, now=now, deadline=ticket.confirmation_due_at)

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
    ) -> Ticket:
        """A new ticket: held (reason, detail) ones wait without a clock; the others start it now."""
        ticket = Ticket(
            status="held" if held else "new",
            held_reason=held[0] if held else None,
            held_detail=held[1] if held else None,
            subject=subject,
            requester=requester,
            requester_name=requester_name,
            organization_id=organization_id,
            created_at=now,
            updated_at=now,
        )
        session.add(ticket)
        session.flush()
        return ticket

    def assign(self, session: Session, ticket: Ticket, specialist: Specialist, now: datetime) -> OutboxItem | None:
        """The specialist takes the ticket; the introduction goes out now (once)."""
        ticket.specialist_id = specialist.id
        specialist.last_assigned_at = now
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
            from_name=f"{specialist.name} ({self.composer.identity.name})",
        )
        return self.send(session, ticket, introduction, now=now, deadline=ticket.introduction_due_at)
