"""The intake's conversation step: a message that names an existing ticket joins it, or is held away from it.

`Followups.follow` reads the message's thread clues, asks the rules of mailbot.threads which ticket they
name and whether the sender may join it, and acts:

- a participant's message (requester, a contact the requester brought in) is stored on the ticket with
  its quoted history and signature split off (mailbot.quotes), sends no confirmation, reopens a ticket
  resolved within `sla.reopen_within`, and notifies the assigned specialist by email; a reply to a ticket
  resolved longer ago becomes a new ticket linked to the old one (the intake opens it, entitlement first);
- the assigned specialist's message is stored on the ticket and relayed to the customer from the support
  address under the specialist's name, on the customer's thread, with the specialist's quoted history,
  signature and team addresses left out;
- anyone else's message that names a ticket is a new held ticket whose detail names the attempt: nothing
  of the ticket reaches them and nothing of theirs reaches its customer;
- a participant's automatic mail (an out-of-office) is kept on the ticket and does nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbot import threads
from mailbot.authn import AuthVerdict
from mailbot.automatic import automatic_reason
from mailbot.compose import ticket_subject
from mailbot.errors import TransientDNSError
from mailbot.parse import ParsedMessage
from mailbot.quotes import split_reply
from mailbot.reading import Reading
from mailbot.redact import hide_addresses
from mailbot.store import conversations
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import InboundMessage, Specialist, Ticket, TicketMessage
from mailbot.threads import Continuation, Match, Refusal, Role
from mailbot.tokens import ReplyTokens
from mailbot.workflow import Workflow, address_of


@dataclass(frozen=True)
class Decided:
    """The message joined a ticket ("threaded") or was held away from the one it named ("held")."""

    action: str
    ticket_id: int
    detail: str


@dataclass(frozen=True)
class Continues:
    """A participant wrote on a ticket resolved before the reopen window: a new ticket, linked to this one."""

    parent_id: int


class Followups:
    def __init__(
        self,
        workflow: Workflow,
        tokens: ReplyTokens,
        *,
        reopen_within: timedelta,
        auth_retry_for: timedelta,
    ) -> None:
        self.workflow = workflow
        self.tokens = tokens
        self.reopen_within = reopen_within
        self.auth_retry_for = auth_retry_for

    def follow(
        self, session: Session, inbound: InboundMessage, reading: Reading, now: datetime
    ) -> Decided | Continues | None:
        """What the message does to the ticket it names; None when it names none (a new ticket)."""
        parsed, key = reading.parsed, reading.key
        found = self.find(session, inbound, parsed)
        if found is None:
            return None
        ticket = ticket_store.get(session, found.ticket_id)
        assert ticket is not None  # threads.match names only tickets the store has
        sender = parsed.author.address if parsed.author else ""  # whom it trusts, never whom it shows
        people = threads.participants(
            requester=ticket.requester,
            specialist=ticket_store.specialist_address(session, ticket.specialist_id),
            messages=[(m.from_address, [*m.to, *m.cc]) for m in ticket.messages if m.direction == "in"],
            colleagues=conversations.colleagues(session, ticket),
        )
        authenticated = self._authenticated(inbound, reading.verdict, now)
        admitted = threads.admit(sender, found, people, authenticated=authenticated)
        if isinstance(admitted, Refusal):
            return self._hold(session, inbound, parsed, key, now, admitted, found)
        if automatic_reason(parsed.message, inbound.envelope_from) is not None:
            # mailbot.loops rule 3: kept on its ticket, automatic mail relays, notifies and reopens nothing,
            # so a customer's and a specialist's out-of-office replies cannot answer each other through us.
            kind = "specialist" if admitted is Role.SPECIALIST else "customer"
            self._store(session, ticket, inbound, parsed, key, now, kind=kind)
            return Decided("threaded", ticket.id, f"joined {found.describe()}; automatic mail, nothing sent")
        if admitted is Role.SPECIALIST:
            return self._from_specialist(session, ticket, inbound, parsed, key, now, found)
        step = threads.continuation(ticket.status, ticket.resolved_at, now, self.reopen_within)
        if step is Continuation.NEW:
            return Continues(ticket.id)
        if step is Continuation.REOPEN:
            self.workflow.reopen(ticket, now)
        message = self._store(session, ticket, inbound, parsed, key, now, kind="customer")
        self._notify(session, ticket, message, now, reopened=step is Continuation.REOPEN)
        return Decided("threaded", ticket.id, f"joined {found.describe()}")

    def find(self, session: Session, inbound: InboundMessage, parsed: ParsedMessage) -> Match | None:
        """The ticket the message names, by the most trusted of its clues (mailbot.threads)."""
        clues = threads.read_clues(
            in_reply_to=parsed.in_reply_to,
            references=parsed.references,
            recipients=[*inbound.envelope_to, *(a.address for a in (*parsed.to, *parsed.cc))],
            subject=parsed.subject,
            tokens=self.tokens,
        )
        if clues.message_ids or clues.ticket_ids():
            session.flush()  # the ticket it names may have been opened earlier in this batch, not written yet
        return threads.match(
            clues,
            owners=conversations.owners(session, clues.message_ids),
            existing=conversations.existing(session, clues.ticket_ids()),
        )

    def _authenticated(self, inbound: InboundMessage, verdict: AuthVerdict, now: datetime) -> bool:
        if (
            verdict.temporary
            and not verdict.authenticated
            and now - inbound.received_at < self.auth_retry_for
        ):
            raise TransientDNSError(verdict.reason)  # the same patience as entitlement: try again later
        return verdict.authenticated

    def _store(
        self,
        session: Session,
        ticket: Ticket,
        inbound: InboundMessage,
        parsed: ParsedMessage,
        key: str,
        now: datetime,
        *,
        kind: str,
    ) -> TicketMessage:
        """The message on the ticket: the new text shown, the quoted history and signature kept apart."""
        text, quoted = split_reply(parsed.text)
        sender = parsed.from_
        return ticket_store.add_message(
            session,
            ticket,
            direction="in",
            kind=kind,
            message_id=key,
            inbound_id=inbound.id,
            from_address=sender.address.lower() if sender else (inbound.envelope_from or "").lower(),
            from_name=sender.name if sender else "",
            to=[a.address for a in parsed.to],
            cc=[a.address for a in parsed.cc],
            subject=parsed.subject,
            at=now,
            text=text,
            quoted=quoted,
            attachments=parsed.attachments,
        )

    def _hold(
        self,
        session: Session,
        inbound: InboundMessage,
        parsed: ParsedMessage,
        key: str,
        now: datetime,
        refusal: Refusal,
        found: Match,
    ) -> Decided:
        """A new held ticket for a message that named a ticket it may not join; the detail names the attempt."""
        sender = parsed.from_
        requester = sender.address.lower() if sender else (inbound.envelope_from or "").lower()
        detail = threads.refusal_detail(requester, found, refusal)
        ticket = self.workflow.open_ticket(
            session,
            requester=requester,
            requester_name=sender.name if sender else "",
            subject=parsed.subject,
            now=now,
            held=(refusal.value, detail),
        )
        self._store(session, ticket, inbound, parsed, key, now, kind="customer")
        return Decided("held", ticket.id, detail)

    def _notify(
        self, session: Session, ticket: Ticket, message: TicketMessage, now: datetime, *, reopened: bool
    ) -> None:
        """The assigned specialist hears of the customer's message; their reply comes back to this ticket."""
        specialist = session.get(Specialist, ticket.specialist_id) if ticket.specialist_id else None
        if specialist is None:
            return  # nobody has the ticket yet: whoever is assigned reads the conversation then
        notification = self.workflow.composer.compose(
            "notification",
            to=[address_of(specialist.address, specialist.name)],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.workflow.specialist_thread(ticket),
            context={
                **self.workflow.context(ticket),
                "specialist_name": specialist.name,
                "sender_name": message.from_name,
                "sender_address": message.from_address,
                "requester": ticket.requester,
                "text": message.text,
                "reopened": reopened,
            },
            reply_to=self.workflow.reply_to(ticket),
            auto_submitted="auto-generated",
        )
        self.workflow.react(session, ticket, notification, now=now)

    def _from_specialist(
        self,
        session: Session,
        ticket: Ticket,
        inbound: InboundMessage,
        parsed: ParsedMessage,
        key: str,
        now: datetime,
        found: Match,
    ) -> Decided:
        """Store the specialist's message and relay its new text to the customer on their thread."""
        message = self._store(session, ticket, inbound, parsed, key, now, kind="specialist")
        specialist = session.get_one(Specialist, ticket.specialist_id)
        team = session.scalars(select(Specialist.address)).all()
        text = hide_addresses(message.text, team, self.workflow.composer.identity.address)
        if not text.strip():
            return Decided("threaded", ticket.id, f"joined {found.describe()}; nothing new to relay")
        relay = self.workflow.composer.compose(
            "relay",
            to=[address_of(ticket.requester, ticket.requester_name)],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.workflow.thread_of(ticket),
            context={**self.workflow.context(ticket), "specialist_name": specialist.name, "text": text},
            from_name=self.workflow.signed_by(specialist),
            reply_to=self.workflow.reply_to(ticket),
            auto_submitted="auto-generated",
        )
        self.workflow.react(session, ticket, relay, now=now)
        return Decided("threaded", ticket.id, f"joined {found.describe()}; relayed to {ticket.requester}")
