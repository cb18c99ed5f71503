"""What a message that names an existing ticket does to it, or how it is held away from it.

The threading rule (mailbot.intake.rules) decides, from the message's thread clues, the rules of
mailbot.threads and the batch's facts, which ticket it joins and how; the intake's write
(mailbot.intake.write) carries that out with the pieces here (`store`, `notify`, `from_specialist`):

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
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbot import commands, promises, richtext, threads
from mailbot.compose import ticket_subject
from mailbot.errors import RefusedError
from mailbot.facts import Facts
from mailbot.parse import Attachment as ReadAttachment
from mailbot.parse import ParsedMessage
from mailbot.quotes import split_reply
from mailbot.reading import Reading
from mailbot.redact import hide_addresses
from mailbot.store import registry
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import InboundMessage, Specialist, Ticket, TicketMessage
from mailbot.threads import Match
from mailbot.tokens import ReplyTokens
from mailbot.workflow import Workflow


class Followups:
    def __init__(
        self,
        workflow: Workflow,
        tokens: ReplyTokens,
        *,
        reopen_within: timedelta,
    ) -> None:
        self.workflow = workflow
        self.tokens = tokens
        self.reopen_within = reopen_within  # read by the threading rule (mailbot.intake.rules)

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
        return Facts(session).match(self.clues(inbound, parsed), sender)

    def store(
        self,
        session: Session,
        ticket: Ticket,
        inbound: InboundMessage,
        reading: Reading,
        facts: Facts,
        *,
        kind: str,
        split: bool = True,
    ) -> TicketMessage:
        """The message on the ticket: the new text shown, the quoted history and signature kept apart (`split`;
        a new ticket's opening message is kept whole)."""
        parsed = reading.parsed
        text, quoted = split_reply(parsed.text) if split else (parsed.text, "")
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
            at=facts.now,
            text=text,
            quoted=quoted,
            attachments=parsed.attachments,
            blobs=facts,
        )
        facts.recorded(message, ticket.id)
        return message

    def notify(
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

    def from_specialist(
        self, session: Session, ticket: Ticket, message: TicketMessage, reading: Reading, now: datetime, facts: Facts
    ) -> str:
        """Carry out the specialist's commands, else relay the message's new text, formatting and attachments
        to the customer on their thread."""
        parsed = reading.parsed
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
            return self._command(session, ticket, specialist, command, text, now, facts)
        passed = self.workflow.files_read(parsed.attachments)
        if not text.strip() and not passed.files:
            return "nothing new to relay"
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
        return f"relayed to {ticket.requester}"

    def _command(
        self,
        session: Session,
        ticket: Ticket,
        specialist: Specialist,
        command: commands.Command,
        text: str,
        now: datetime,
        facts: Facts,
    ) -> str:
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
            return f"#{command.verb} refused: {refused}"
        return done

