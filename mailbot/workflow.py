"""What happens to a ticket: opened, confirmed, assigned and introduced, resolved, released.

Each transition runs inside the caller's transaction, so a ticket and the mail it owes the customer are
stored together or not at all (the outbox is the promise, written down).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Protocol, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session, object_session
from sqlalchemy.orm.attributes import set_committed_value

from mailbot import promises, sla
from mailbot.compose import (
    Composer,
    File,
    Outgoing,
    Thread,
    base_subject,
    one_line,
    thread_index,
    thread_index_header,
    ticket_reference,
    ticket_subject,
)
from mailbot.config import SlaConfig
from mailbot.errors import RefusedError
from mailbot.facts import Facts
from mailbot.governor import Governor
from mailbot.held import Held
from mailbot.hours import BusinessHours, shown
from mailbot.loops import Opening
from mailbot.parse import Attachment as ReadAttachment
from mailbot.store import outbox, registry
from mailbot.store import sla as sla_store
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import Attachment, OutboxItem, Specialist, Ticket, TicketMessage, fresh
from mailbot.tokens import ReplyTokens, Side

# Messages between mailbot and the support team: never part of the customer's thread (their Message-IDs may
# name internal hosts), and threaded among themselves for the specialist.
INTERNAL_KINDS = frozenset({"notification", "specialist", "assignment", "handover", "notice"})
# What a specialist reads of the conversation when a ticket becomes theirs: what people wrote.
CONVERSATION_KINDS = frozenset({"customer", "specialist"})


@dataclass(frozen=True)
class Passed:
    """Attachments passed on in one message: the files that fit the size limit, and (name, size) of the rest."""

    files: list[File]
    left_out: list[tuple[str, int]]


class Described(Protocol):
    """An attachment as stored (schema.Attachment) or as just read (parse.Attachment)."""

    @property
    def filename(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


A = TypeVar("A", bound=Described)


def within_limit(attachments: Sequence[A], limit: int) -> tuple[list[A], list[A]]:
    """(attached, left out): each attachment in order if it still fits `limit` bytes in all, so one big file
    does not keep the small ones after it out. The same bytes twice (a logo in every message) go once."""
    attached: list[A] = []
    left_out: list[A] = []
    total, seen = 0, set()
    for attachment in attachments:
        if attachment.sha256 in seen:
            continue
        seen.add(attachment.sha256)
        if total + attachment.size <= limit:
            attached.append(attachment)
            total += attachment.size
        else:
            left_out.append(attachment)
    return attached, left_out

_ARMED = "mailbot.workflow.armed"  # session.info: the earliest SLA instant of the tickets started in it


def _outlook_block(message: Message) -> bytes | None:
    """The conversation header block of the Thread-Index an Outlook client wrote on `message`, if any."""
    value = message.get("Thread-Index")
    return thread_index_header(str(value)) if value else None


# The deadlines a batch's tickets are told in mail are the same instants (see `Workflow._business_add`).
_shown = functools.lru_cache(maxsize=256)(shown)


def address_of(addr_spec: str, name: str = "") -> Address:
    username, _, domain = addr_spec.rpartition("@")
    return Address(display_name=one_line(name), username=username, domain=domain)  # a name is customer text


class Workflow:
    def __init__(
        self,
        composer: Composer,
        hours: BusinessHours,
        sla: SlaConfig,
        *,
        tokens: ReplyTokens,
        governor: Governor,
        sender_domains: Sequence[str] = (),
        attachments_limit: int = 10 * 10**6,
    ) -> None:
        self.composer = composer
        self.hours = hours
        self.sla = sla
        self.tokens = tokens
        self.governor = governor
        self.attachments_limit = attachments_limit
        # What every template may say, from the configuration (mailbot.promises).
        self.facts: dict[str, object] = {
            "open_hours": promises.open_hours(hours),
            "time_zone": promises.zone_words(hours),
            "confirmation_within": promises.in_words(sla.confirmation_within),
            "introduction_within": promises.in_words(sla.introduction_within, business=True),
            "reopen_within": promises.in_words(sla.reopen_within),
            "sender_domains": promises.listed([f"@{d}" for d in sender_domains or [composer.identity.domain]]),
            "attachments_limit": promises.size_words(attachments_limit),
            "support_address": composer.identity.address,
        }
        # Told, once the transaction that starts a ticket's clock committed, the first instant its SLA verdict
        # can change (its automatic assignment, an at-risk instant): the daemon's sweep runs then.
        self.deadlines: Callable[[datetime], None] | None = None
        # The tickets of an intake batch start their clocks at the batch's one `now`: their business-time
        # deadlines are worked out once (BusinessHours.add is pure: the result depends on the instant alone).
        self._business_add = functools.lru_cache(maxsize=64)(hours.add)

    def local_time(self, instant: datetime) -> str:
        """An instant as people read it, in mail as on the command line: '2026-11-30 11:00 -05:00'."""
        return _shown(instant, self.hours.zone)

    def thread_of(self, ticket: Ticket) -> Thread:
        """Our next message replies to the customer's latest and references the whole conversation."""
        customer_side = [m for m in ticket.messages if m.kind not in INTERNAL_KINDS]
        ids = [m.message_id for m in customer_side if m.message_id.startswith("<")]
        inbound = [m.message_id for m in customer_side if m.direction == "in" and m.message_id.startswith("<")]
        root = ids[0] if ids else f"ticket {ticket.id}"
        outlook = self._outlook(ticket, root, header=self._customer_index(ticket))
        return Thread.continuing(ids, inbound[-1] if inbound else (ids[-1] if ids else None), **outlook)

    def specialist_thread(self, ticket: Ticket) -> Thread:
        """Our next mail to the team continues the ticket's thread with the support team."""
        ids = [m.message_id for m in ticket.messages if m.kind in INTERNAL_KINDS and m.message_id.startswith("<")]
        return Thread.continuing(ids, ids[-1] if ids else None, **self._outlook(ticket, f"team {ticket.id}"))

    def _outlook(self, ticket: Ticket, conversation: str, *, header: bytes | None = None) -> dict[str, str]:
        """Thread-Topic and Thread-Index, so that Outlook groups the thread even where References do not
        reach (it threads by these); the conversation is the customer's own when their client named one,
        else named by the site and the thread's root."""
        topic = base_subject(ticket_subject(ticket.id, ticket.subject))
        started = ticket.created_at or ticket.updated_at
        if started is None:  # a ticket not stored yet (the CLI's previews, tests): the topic alone
            return {"topic": topic}
        name = f"{self.composer.identity.domain} {conversation}"
        return {"topic": topic, "index": thread_index(name, started, ticket.updated_at or started, header=header)}

    def _customer_index(self, ticket: Ticket) -> bytes | None:
        """The Thread-Index header block of the customer's first message, when their client (Outlook) wrote
        one: our replies continue their conversation instead of starting one beside it. Kept on the ticket
        when it was opened; a ticket opened before that was kept reads it from its stored opening message."""
        if ticket.customer_thread_index is not None:
            return ticket.customer_thread_index or None
        session = object_session(ticket)
        head = ticket_store.opening_head(session, ticket) if session is not None else None
        return _outlook_block(BytesHeaderParser(policy=compat32).parsebytes(head)) if head else None

    def addressed(
        self, session: Session, ticket: Ticket, facts: Facts | None = None
    ) -> tuple[Address, dict[str, object]]:
        """The requester as we write to them, by the name registered with `contact add --name`, else the
        display name of their mail; and what templates know of the ticket, greeting them so (read once)."""
        name = self.greeting_name(session, ticket, facts)
        return address_of(ticket.requester, name), {**self.context(ticket), "requester_name": name}

    def greeting_name(self, session: Session, ticket: Ticket, facts: Facts | None = None) -> str:
        """`facts`: the intake's batch (mailbot.facts), which knows its senders' names already."""
        if facts is not None:
            contact = facts.contact(ticket.requester)
            return (contact.name if contact is not None else "") or ticket.requester_name
        return registry.contact_name(session, ticket.requester) or ticket.requester_name

    def files(self, session: Session, attachments: Sequence[Attachment], facts: Facts | None = None) -> Passed:
        """Stored attachments to pass on within `support.max_attachments_size`, with their bytes (`facts`:
        the intake's batch, whose own attachments are not written yet)."""
        attached, left_out = within_limit(attachments, self.attachments_limit)
        hashes = [a.sha256 for a in attached]
        data = facts.blob_data(hashes) if facts is not None else ticket_store.blobs(session, hashes)
        return Passed(
            [File(a.filename, a.content_type, data[a.sha256]) for a in attached],
            [(a.filename, a.size) for a in left_out],
        )

    def files_read(self, attachments: Sequence[ReadAttachment]) -> Passed:
        """The same for the attachments of a message being taken in (their bytes are at hand)."""
        attached, left_out = within_limit(attachments, self.attachments_limit)
        return Passed(
            [File(a.filename, a.content_type, a.data) for a in attached], [(a.filename, a.size) for a in left_out]
        )

    def reply_to(self, ticket: Ticket) -> Address:
        """The ticket's signed reply address (mailbot.tokens): replies find the ticket without any header."""
        return address_of(self.tokens.address(ticket.id), self.composer.identity.name)

    def specialist_reply_to(self, ticket: Ticket) -> Address:
        """The Reply-To of mail sent only to the ticket's specialist (a notification, the assignment): the
        specialist token, which a reply must be addressed to before it reaches the customer as the support
        team (mailbot.threads.admit). Never put it on mail that anyone else receives."""
        return address_of(self.tokens.address(ticket.id, Side.SPECIALIST), self.composer.identity.name)

    def signed_by(self, specialist: Specialist) -> str:
        """The From name of mail a specialist writes: 'Sam Lee (Hero Support)'; the address stays ours."""
        return f"{specialist.name} ({self.composer.identity.name})"

    def context(self, ticket: Ticket, session: Session | None = None) -> dict[str, object]:
        """What templates know of a ticket; with a session, the requester's registered name too."""
        due = ticket.introduction_due_at
        return {
            **self.facts,
            "ticket_id": ticket.id,
            "reference": ticket_reference(ticket.id),
            "subject": ticket.subject or "(no subject)",
            "requester": ticket.requester,
            "requester_name": self.greeting_name(session, ticket) if session else ticket.requester_name,
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
        opening: Opening | None = None,
        facts: Facts | None = None,
    ) -> OutboxItem | None:
        """Queue mail the loop governor (mailbot.governor) lets go, in the ticket's conversation too.

        Refused: nothing is queued, the ticket keeps the reason, None. A promised message refused is queued
        `withheld` instead (never sent; its deadline stands, so the SLA check sees it). `opening`: the
        message being answered, when the caller has it parsed. `facts`: the intake's batch (mailbot.facts),
        which the governor counts with and which learns of what is queued."""
        limit = self.governor.limit(session, ticket, outgoing.kind, outgoing.recipients, now, opening, facts)
        if limit is None:
            return self.queue(session, ticket, outgoing, now=now, deadline=deadline, facts=facts)
        ticket.auto_reply_refused = limit.reason
        if not limit.withholds:
            return None
        return self.queue(session, ticket, outgoing, now=now, deadline=deadline, withheld=limit.reason, facts=facts)

    def queue(
        self,
        session: Session,
        ticket: Ticket,
        outgoing: Outgoing,
        *,
        now: datetime,
        deadline: datetime | None = None,
        withheld: str | None = None,
        facts: Facts | None = None,
    ) -> OutboxItem:
        """Queue an outgoing message as it is, and record it in the ticket's conversation, in one transaction:
        a person's mail (a resolution), or what `send` let go. `facts`: the intake's batch (mailbot.facts),
        which learns of it and has it written at the batch's end (mailbot.store.batch); without it, the
        session's next flush writes it."""
        message = ticket_store.add_message(
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
        item = outbox.item(outgoing, ticket_id=ticket.id, now=now, deadline_at=deadline, withheld=withheld)
        if facts is None:
            return outbox.plan(session, item)
        # Kept out of the session: its add and expunge cascades cost more than the batch's write of the row.
        facts.recorded(message, ticket.id)
        facts.queued(item)
        return item

    def answer(
        self,
        session: Session,
        ticket: Ticket,
        kind: str,
        *,
        now: datetime,
        deadline: datetime | None = None,
        opening: Opening | None = None,
        facts: Facts | None = None,
        **extra: object,
    ) -> OutboxItem | None:
        """Queue automatic mail to the requester (a confirmation, an explanation: templates/<kind>.*) as the
        loop governor allows (`send`). `opening`: the message being answered, when the caller has it parsed."""
        outgoing = self.to_requester(session, ticket, kind, now=now, facts=facts, **extra)
        return self.send(session, ticket, outgoing, now=now, deadline=deadline, opening=opening, facts=facts)

    def to_requester(
        self, session: Session, ticket: Ticket, kind: str, *, now: datetime, facts: Facts | None = None, **extra: object
    ) -> Outgoing:
        requester, context = self.addressed(session, ticket, facts)
        return self.composer.compose(
            kind,
            to=[requester],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.thread_of(ticket),
            context={**context, **extra},
            reply_to=self.reply_to(ticket),
        )

    def to_specialist(
        self,
        session: Session,
        ticket: Ticket,
        kind: str,
        specialist: Specialist,
        *,
        files: Sequence[File] = (),
        **extra: object,
    ) -> Outgoing:
        """Mail to a specialist about a ticket (templates/<kind>.*), on the team's thread of it; its Reply-To
        is the ticket's specialist reply address, so their answer goes to the customer as the team."""
        return self.composer.compose(
            kind,
            to=[address_of(specialist.address, specialist.name)],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.specialist_thread(ticket),
            context={**self.context(ticket, session), "specialist_name": specialist.name, **extra},
            reply_to=self.specialist_reply_to(ticket),
            auto_submitted="auto-generated",
            files=files,
        )

    def start_clock(
        self, session: Session, ticket: Ticket, now: datetime, opening: Opening | None = None, facts: Facts | None = None
    ) -> None:
        """The promise starts: deadlines set, the confirmation queued to go out at once."""
        ticket.clock_started_at = now
        ticket.confirmation_due_at = now + self.sla.confirmation_within
        ticket.assign_due_at = self._business_add(now, self.sla.auto_assign_after)
        ticket.introduction_due_at = self._business_add(now, self.sla.introduction_within)
        due = ticket.confirmation_due_at
        if self.answer(session, ticket, "confirmation", now=now, deadline=due, opening=opening, facts=facts) is None:
            # Nothing is promised to a machine or an unverifiable sender (a withheld one is still owed).
            ticket.confirmation_due_at = None
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
        facts: Facts | None = None,
        held: Held | None = None,
        parent_id: int | None = None,
        opening: Message | None = None,
    ) -> Ticket:
        """A new ticket: held ones wait without a clock; the others start it now.

        `parent_id`: the resolved ticket this one continues (a reply after the reopen window). `opening`: the
        customer's message that opens it, parsed (its Outlook Thread-Index is kept for our replies). `facts`:
        the intake's batch (mailbot.facts), which allocates its id, learns of it and has it written at the batch's
        end (mailbot.store.batch); without it, the session's next flush writes it.
        """
        batch, facts = facts, facts or self.governor.facts(session, now)
        ticket = fresh(
            Ticket,
            id=facts.next_ticket_id(),
            status="held" if held else "new",
            held_reason=held.reason.value if held else None,
            held_detail=held.detail if held else None,
            subject=subject,
            requester=requester,
            requester_name=requester_name,
            organization_id=organization_id,
            parent_id=parent_id,
            customer_thread_index=(_outlook_block(opening) or b"") if opening is not None else None,
            created_at=now,
            updated_at=now,
        )
        set_committed_value(ticket, "messages", [])  # it has none: else its first message costs a SELECT
        if batch is None:
            session.add(ticket)  # written with the caller's next flush: its id is known already
        facts.opened(ticket)
        return ticket

    def release(self, session: Session, ticket: Ticket, now: datetime) -> None:
        """A held ticket enters the normal flow now: status new, clock started, confirmation queued."""
        if ticket.status != "held":
            raise RefusedError(f"ticket {ticket.id} is not held (its status is {ticket.status})")
        ticket.status, ticket.held_reason, ticket.held_detail = "new", None, None
        ticket.released_at = ticket.updated_at = now
        self.start_clock(session, ticket, now)

    def assign(
        self,
        session: Session,
        ticket: Ticket,
        specialist: Specialist,
        now: datetime,
        *,
        how: str = "claimed",
        note: str = "",
        facts: Facts | None = None,
    ) -> OutboxItem | None:
        """The specialist takes the ticket (`how`: "claimed", "by turn", "handed over by NAME"): they get the
        conversation so far with its attachments (kind `assignment`), whoever had it before is told (kind
        `handover`), and the customer is introduced to them: the first introduction, or one that says who
        takes over. `note`: what the previous holder wrote to them. Returns the customer's introduction (None
        when the loop governor refused it, e.g. to one of our own addresses)."""
        if not specialist.active:
            raise RefusedError(f"{specialist.address} is away: mark them back first (`mailbot specialist back ...`)")
        previous = session.get(Specialist, ticket.specialist_id) if ticket.specialist_id else None
        if previous is not None and previous.id == specialist.id:
            raise RefusedError(f"ticket {ticket.id} is already assigned to {specialist.address}")
        ticket.specialist_id = specialist.id
        specialist.last_assigned_at = now
        specialist.last_turn = sla_store.next_turn(session)  # round-robin counts claims too
        if ticket.status == "new":
            ticket.status = "open"
        introduced = outbox.introduced(session, ticket.id)
        taking_over = previous.name if introduced and previous is not None else None
        requester, context = self.addressed(session, ticket, facts)
        introduction = self.composer.compose(
            "introduction",
            to=[requester],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.thread_of(ticket),
            context={**context, "specialist_name": specialist.name, "previous_name": taking_over},
            from_name=self.signed_by(specialist),
            reply_to=self.reply_to(ticket),
        )
        # Only the first introduction is the promise (its deadline); one that says who takes over is a courtesy.
        deadline = None if introduced else ticket.introduction_due_at
        item = self.send(session, ticket, introduction, now=now, deadline=deadline, facts=facts)
        self._tell_assigned(
            session, ticket, specialist, now, how=how, previous=previous, note=note, introduced_before=introduced,
            facts=facts,
        )
        if previous is not None:
            handover = self.to_specialist(session, ticket, "handover", previous, new_name=specialist.name, how=how)
            self.send(session, ticket, handover, now=now, facts=facts)
        return item

    def _tell_assigned(
        self,
        session: Session,
        ticket: Ticket,
        specialist: Specialist,
        now: datetime,
        *,
        how: str,
        previous: Specialist | None,
        note: str,
        introduced_before: bool,
        facts: Facts | None,
    ) -> None:
        """The `assignment` mail: the conversation so far, each message with its attachments, attached within
        the size limit (the rest named, with the command that saves them)."""
        said = [m for m in ticket.messages if m.direction == "in" and m.kind in CONVERSATION_KINDS]
        passed = self.files(session, [a for m in said for a in m.attachments], facts)
        assignment = self.to_specialist(
            session,
            ticket,
            "assignment",
            specialist,
            files=passed.files,
            how=how,
            note=note,
            previous_name=previous.name if previous is not None else None,
            messages=[self.message_view(m) for m in said],
            left_out=[(name, promises.size_words(size)) for name, size in passed.left_out],
            introduced=introduced_before,
        )
        self.send(session, ticket, assignment, now=now, facts=facts)

    def message_view(self, message: TicketMessage) -> dict[str, object]:
        """One message of the conversation as templates show it."""
        return {
            "from": message.from_address,
            "from_name": message.from_name,
            "at": self.local_time(message.at),
            "text": message.text,
            "attachments": [(a.filename, promises.size_words(a.size)) for a in message.attachments],
        }

    def resolve(
        self, session: Session, ticket: Ticket, now: datetime, note: str = "", facts: Facts | None = None
    ) -> OutboxItem:
        """The ticket is resolved; the customer is told, with the note, on their thread."""
        if ticket.status in ("held", "resolved"):
            raise RefusedError(f"ticket {ticket.id} is {ticket.status}; only a new or open ticket can be resolved")
        ticket.status, ticket.resolved_at, ticket.updated_at = "resolved", now, now
        specialist = session.get(Specialist, ticket.specialist_id) if ticket.specialist_id else None
        requester, context = self.addressed(session, ticket, facts)
        resolution = self.composer.compose(
            "resolution",
            to=[requester],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.thread_of(ticket),
            context={
                **context,
                "note": note.strip(),
                "specialist_name": specialist.name if specialist else None,
            },
            from_name=self.signed_by(specialist) if specialist else None,
            reply_to=self.reply_to(ticket),
            auto_submitted="auto-generated",
        )
        return self.queue(session, ticket, resolution, now=now, facts=facts)

    def reopen(self, ticket: Ticket, now: datetime) -> None:
        """A resolved ticket is worked on again: open with its specialist, else new (to be assigned)."""
        ticket.status = "open" if ticket.specialist_id else "new"
        ticket.resolved_at, ticket.updated_at = None, now

