"""The intake's conversation step: a message that names an existing ticket joins it, or is held away from it.

`Followups.follow` reads the message's thread clues, asks the rules of mailbot.threads which ticket they
name and whether the sender may join it, and acts:

- a participant's message (requester, a contact the requester brought in) is stored on the ticket with
  its quoted history and signature split off (mailbot.quotes), sends no confirmation, reopens a ticket
  resolved within `sla.reopen_within`, and notifies the assigned specialist by email; a reply to a ticket
  resolved longer ago becomes a new ticket linked to the old one (the intake opens it, entitlement first);
- the assigned specialist's message is stored on the ticket and relayed to the customer from the support
  address under the specialist's name, on the customer's thread, with its formatting (the HTML part,
  sanitized: mailbot.richtext) and attachments, and the specialist's quoted history, signature and team
  addresses left out; commands at its top (mailbot.commands) resolve the ticket or hand it over instead;
- another specialist's `#take` takes the ticket, whatever names it; the rest of that mail reaches the
  customer only when it was written to the ticket's reply address (any other message of theirs is held like a
  stranger's);
- anyone else's message that names a ticket is a new held ticket whose detail names the attempt: nothing
  of the ticket reaches them and nothing of theirs reaches its customer;
- a participant's automatic mail (an out-of-office) is kept on the ticket and does nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbot import commands, promises, richtext, threads
from mailbot.authn import AuthVerdict
from mailbot.compose import ticket_subject
from mailbot.errors import RefusedError, TransientDNSError
from mailbot.facts import Facts
from mailbot.held import Held, HeldReason
from mailbot.parse import Attachment as ReadAttachment
from mailbot.parse import ParsedMessage
from mailbot.quotes import split_reply
from mailbot.reading import Reading
from mailbot.redact import hide_addresses
from mailbot.sla import RUNNING
from mailbot.store import conversations, registry
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import InboundMessage, Specialist, Ticket, TicketMessage
from mailbot.threads import Continuation, How, Match, Role
from mailbot.tokens import ReplyTokens
from mailbot.workflow import Workflow


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
        self, session: Session, inbound: InboundMessage, reading: Reading, now: datetime, facts: Facts
    ) -> Decided | Continues | None:
        """What the message does to the ticket it names; None when it names none (a new ticket).
        Its thread clues and whether a machine wrote it are the reading's, worked out once."""
        parsed, sender, automatic = reading.parsed, reading.sender, reading.automatic is not None
        found = self._match(session, facts, reading.clues, sender)
        if found is None:
            return None
        ticket = facts.ticket(found.ticket_id)
        assert ticket is not None  # threads.match names only tickets the store has
        authenticated = self._authenticated(inbound, reading.verdict, now)
        admitted = threads.admit(
            sender,
            found,
            self._people(session, ticket),
            authenticated=authenticated,
            speaks_for=reading.clues.speaks_for(ticket.id),
        )
        if admitted is HeldReason.NOT_A_PARTICIPANT and authenticated and not automatic:
            taker = self._taker(session, sender, ticket, found, parsed)
            if taker is not None:  # a colleague's `#take`: the ticket is theirs now
                self.workflow.assign(session, ticket, taker, now, how="taken by email", facts=facts)
                # Nothing of it reaches the customer: speaking as the team needs the specialist token, which
                # the assignment mail just queued for the taker carries (mailbot.threads.admit).
                self._store(session, ticket, inbound, reading, now, facts, kind="specialist")
                return Decided("threaded", ticket.id, f"joined {found.describe()}; taken by {taker.address}")
        if isinstance(admitted, HeldReason):
            return self._hold(session, inbound, reading, now, facts, admitted, found)
        if automatic:
            # mailbot.loops rule 3: kept on its ticket, automatic mail relays, notifies and reopens nothing,
            # so a customer's and a specialist's out-of-office replies cannot answer each other through us.
            kind = "specialist" if admitted is Role.SPECIALIST else "customer"
            self._store(session, ticket, inbound, reading, now, facts, kind=kind)
            return Decided("threaded", ticket.id, f"joined {found.describe()}; automatic mail, nothing sent")
        if admitted is Role.SPECIALIST:
            return self._from_specialist(session, ticket, inbound, reading, now, facts, found)
        step = threads.continuation(ticket.status, ticket.resolved_at, now, self.reopen_within)
        if step is Continuation.NEW:
            return Continues(ticket.id)
        if step is Continuation.REOPEN:
            self.workflow.reopen(ticket, now)
        message = self._store(session, ticket, inbound, reading, now, facts, kind="customer")
        self._notify(
            session, ticket, message, now, facts, reopened=step is Continuation.REOPEN, attachments=parsed.attachments
        )
        return Decided("threaded", ticket.id, f"joined {found.describe()}")

    def clues(self, inbound: InboundMessage, parsed: ParsedMessage) -> threads.Clues:
        """What the message says about the conversation it continues (mailbot.threads)."""
        return threads.read_clues(
            in_reply_to=parsed.in_reply_to,
            references=parsed.references,
            recipients=[*inbound.envelope_to, *(a.address for a in (*parsed.to, *parsed.cc))],
            subject=parsed.subject,
            tokens=self.tokens,
        )

    def find(self, session: Session, inbound: InboundMessage, parsed: ParsedMessage) -> Match | None:
        """The ticket a stored message names, by the most trusted of its clues (mailbot.threads)."""
        sender = parsed.author.address if parsed.author else ""
        return self._match(session, Facts(session), self.clues(inbound, parsed), sender)

    def _match(self, session: Session, facts: Facts, clues: threads.Clues, sender: str) -> Match | None:
        """`sender`: whom the message trusts (mailbot.senders)."""

        def joins(ticket_id: int) -> bool:  # asked only of a Message-ID that several tickets use
            ticket = facts.ticket(ticket_id)
            return ticket is not None and self._people(session, ticket).role_of(sender) is not None

        return threads.match(
            clues, owners=facts.owners(clues.message_ids), existing=facts.existing(clues.ticket_ids()), joins=joins
        )

    def _people(self, session: Session, ticket: Ticket) -> threads.Participants:
        return threads.participants(
            requester=ticket.requester,
            specialist=ticket_store.specialist_address(session, ticket.specialist_id),
            messages=[(m.from_address, [*m.to, *m.cc]) for m in ticket.messages if m.direction == "in"],
            colleagues=conversations.colleagues(session, ticket),
        )

    def _taker(
        self, session: Session, sender: str, ticket: Ticket, found: Match, parsed: ParsedMessage
    ) -> Specialist | None:
        """The specialist who takes the ticket with `#take` at the top of their mail, when the sender is an
        active one and the ticket can be taken (new or open). Anything else: None (the usual rules hold it)."""
        if found.how is How.FORGED_TOKEN or ticket.status not in RUNNING:
            return None
        said, _ = commands.read(split_reply(parsed.text)[0])
        if not said or said[0].verb != "take":
            return None
        specialist = registry.find_specialist(session, sender)
        return specialist if specialist is not None and specialist.active else None

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
        reading: Reading,
        now: datetime,
        facts: Facts,
        *,
        kind: str,
    ) -> TicketMessage:
        """The message on the ticket: the new text shown, the quoted history and signature kept apart."""
        parsed = reading.parsed
        text, quoted = split_reply(parsed.text)
        sender = parsed.from_
        message = ticket_store.add_message(
            session,
            ticket,
            direction="in",
            kind=kind,
            message_id=reading.key,
            identity=reading.identity,
            inbound_id=inbound.id,
            from_address=reading.requester,
            from_name=sender.name if sender else "",
            to=[a.address for a in parsed.to],
            cc=[a.address for a in parsed.cc],
            subject=parsed.subject,
            at=now,
            text=text,
            quoted=quoted,
            attachments=parsed.attachments,
            blobs=facts,
        )
        facts.recorded(message, ticket.id)
        return message

    def _hold(
        self,
        session: Session,
        inbound: InboundMessage,
        reading: Reading,
        now: datetime,
        facts: Facts,
        refusal: HeldReason,
        found: Match,
    ) -> Decided:
        """A new held ticket for a message that named a ticket it may not join; the detail names the attempt."""
        parsed, requester = reading.parsed, reading.requester
        detail = threads.refusal_detail(requester, found, refusal)
        ticket = self.workflow.open_ticket(
            session,
            requester=requester,
            requester_name=parsed.from_.name if parsed.from_ else "",
            subject=parsed.subject,
            now=now,
            facts=facts,
            held=Held(refusal, detail),
            opening=parsed.message,
        )
        self._store(session, ticket, inbound, reading, now, facts, kind="customer")
        return Decided("held", ticket.id, detail)

    def _notify(
        self,
        session: Session,
        ticket: Ticket,
        message: TicketMessage,
        now: datetime,
        facts: Facts,
        *,
        reopened: bool,
        attachments: Sequence[ReadAttachment] = (),
    ) -> None:
        """The assigned specialist hears of the customer's message, with its attachments (within the size
        limit); their reply comes back to this ticket."""
        specialist = session.get(Specialist, ticket.specialist_id) if ticket.specialist_id else None
        if specialist is None:
            return  # nobody has the ticket yet: whoever is assigned reads the conversation then
        passed = self.workflow.files_read(attachments)
        notification = self.workflow.to_specialist(
            session,
            ticket,
            "notification",
            specialist,
            files=passed.files,
            message=self.workflow.message_view(message),
            left_out=[(name, promises.size_words(size)) for name, size in passed.left_out],
            reopened=reopened,
        )
        self.workflow.send(session, ticket, notification, now=now, facts=facts)

    def _from_specialist(
        self,
        session: Session,
        ticket: Ticket,
        inbound: InboundMessage,
        reading: Reading,
        now: datetime,
        facts: Facts,
        found: Match,
    ) -> Decided:
        """Store the specialist's message; carry out its commands, else relay its new text, formatting and
        attachments to the customer on their thread."""
        parsed = reading.parsed
        message = self._store(session, ticket, inbound, reading, now, facts, kind="specialist")
        specialist = session.get_one(Specialist, ticket.specialist_id)
        # The team's addresses, and the support addresses' plus forms: the specialist's reply address (its
        # token) is theirs alone, even when they quote it.
        team = [*session.scalars(select(Specialist.address)).all(), *self.tokens.support_addresses]
        support = self.workflow.composer.identity.address

        def hide(text: str) -> str:
            return hide_addresses(text, team, support)

        said, rest = commands.read(message.text)
        text = hide(rest)
        command = next((c for c in said if c.verb != "take"), None)  # `#take` of the one who has it: nothing
        if command is not None:
            if command.verb == "resolve":  # "#resolve Fixed." on one line: the note starts on it
                text = hide(f"{command.argument}\n{rest}".strip())
            return self._command(session, ticket, specialist, command, text, now, facts, found)
        passed = self.workflow.files_read(parsed.attachments)
        if not text.strip() and not passed.files:
            return Decided("threaded", ticket.id, f"joined {found.describe()}; nothing new to relay")
        html = richtext.relayed(
            None if said else parsed.html, text, text_had_history=bool(message.quoted), hide=hide
        )
        requester, context = self.workflow.addressed(session, ticket, facts)
        relay = self.workflow.composer.compose(
            "relay",
            to=[requester],
            subject=ticket_subject(ticket.id, ticket.subject),
            thread=self.workflow.thread_of(ticket),
            context={
                **context,
                "specialist_name": specialist.name,
                "text": text,
                "html": html,
                "left_out": [(name, promises.size_words(size)) for name, size in passed.left_out],
            },
            from_name=self.workflow.signed_by(specialist),
            reply_to=self.workflow.reply_to(ticket),
            auto_submitted="auto-generated",
            files=passed.files,
        )
        self.workflow.send(session, ticket, relay, now=now, facts=facts)
        return Decided("threaded", ticket.id, f"joined {found.describe()}; relayed to {ticket.requester}")

    def _command(
        self,
        session: Session,
        ticket: Ticket,
        specialist: Specialist,
        command: commands.Command,
        text: str,
        now: datetime,
        facts: Facts,
        found: Match,
    ) -> Decided:
        """`#resolve` (the text is the note) or `#assign EMAIL` (the text goes to the colleague); a command
        that cannot be carried out is explained to the specialist, and nothing reaches the customer."""
        try:
            if command.verb == "resolve":
                self.workflow.resolve(session, ticket, now, text, facts)
                done = "resolved by email"
            else:
                colleague = registry.find_specialist(session, command.argument)
                if colleague is None:
                    raise RefusedError(f"{command.argument or '(nobody)'} is not a specialist of the team")
                how = f"handed over by {specialist.name}"
                self.workflow.assign(session, ticket, colleague, now, how=how, note=text, facts=facts)
                done = f"handed over to {colleague.address} by email"
        except RefusedError as refused:
            notice = self.workflow.to_specialist(
                session, ticket, "notice", specialist, command=f"#{command.verb} {command.argument}".strip(),
                problem=str(refused),
            )
            self.workflow.send(session, ticket, notice, now=now, facts=facts)
            return Decided("threaded", ticket.id, f"joined {found.describe()}; #{command.verb} refused: {refused}")
        return Decided("threaded", ticket.id, f"joined {found.describe()}; {done}")

