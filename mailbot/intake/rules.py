"""The intake's rules: pure functions of one message's reading and the batch's facts, in order.

Each has one signature, `rule(reading, facts, found) -> Decision | Found`: it decides (mailbot.intake.decisions)
or passes, adding what it found to `found`. None holds a session or writes: what they look up is in the
batch's facts (mailbot.facts), and the write (mailbot.intake.write) carries the decision out. A DNS failure
still within its patience decides nothing: TransientDNSError, and the message is tried again later.

1. `machine_mail`: our own mail coming back and bounces are ignored (mailbot.loops rules 1 and 2);
2. `duplicate`: the same message again is a duplicate; another message under its Message-ID, a collision
   (mailbot.identity);
3. `threading`: a message that names a ticket joins it, or is held away from it (mailbot.threads; what
   joining does: mailbot.followups); a participant's reply to a ticket resolved before the reopen window
   passes, to open a new ticket linked to it;
4. `new_conversation`: a new ticket, held (no sender, automatic mail, not entitled) or entitled
   (mailbot.entitlement).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from mailbot import commands, threads
from mailbot.admission import Admission
from mailbot.bounces import delivery_after
from mailbot.entitlement import ENTITLED, decide
from mailbot.errors import TransientDNSError
from mailbot.facts import Facts
from mailbot.held import Held, HeldReason
from mailbot.identity import collision, same_message
from mailbot.intake.decisions import Decision, Duplicate, FollowUp, Found, Ignore, Joining, Open, Refuse
from mailbot.quotes import split_reply
from mailbot.reading import Reading
from mailbot.sla import RUNNING
from mailbot.threads import Continuation, How, Match, Role

Rule = Callable[[Reading, Facts, Found], Decision | Found]


@dataclass(frozen=True)
class Rules:
    """The rules with the settings they read (`[security]`, `[sla] reopen_within`, the business time zone)."""

    reopen_within: timedelta
    auth_retry_for: timedelta
    require_sender_auth: bool
    zone: ZoneInfo

    @property
    def in_order(self) -> tuple[Rule, ...]:
        return (machine_mail, duplicate, self.threading, self.new_conversation)

    def threading(self, reading: Reading, facts: Facts, found: Found) -> Decision | Found:
        sender, automatic = reading.sender, reading.automatic is not None
        match = facts.match(reading.clues, sender)
        if match is None:
            return found.note("threading", "new conversation", "names no ticket")
        ticket = facts.ticket(match.ticket_id)
        assert ticket is not None  # threads.match names only tickets the store has
        authenticated = self._authenticated(reading, facts.now)
        admitted = threads.admit(
            sender,
            match,
            facts.participants(ticket),
            authenticated=authenticated,
            speaks_for=reading.clues.speaks_for(ticket.id),
        )
        joined = f"joined {match.describe()}"
        if admitted is HeldReason.NOT_A_PARTICIPANT and authenticated and not automatic:
            taker = facts.specialist(sender) if takes(reading, match, ticket.status) else None
            if taker is not None and taker.active:  # a colleague's `#take`: the ticket is theirs now
                detail = f"{joined}; taken by {taker.address}"
                return FollowUp(_threaded(found, detail), ticket.id, Joining.TAKEN, detail, "specialist", taker=taker)
        if isinstance(admitted, HeldReason):
            detail = threads.refusal_detail(reading.requester, match, admitted)
            return Refuse(found.note("threading", "held", detail), Held(admitted, detail))
        if automatic:
            # mailbot.loops rule 3: kept on its ticket, automatic mail relays, notifies and reopens nothing,
            # so a customer's and a specialist's out-of-office replies cannot answer each other through us.
            kind = "specialist" if admitted is Role.SPECIALIST else "customer"
            detail = f"{joined}; automatic mail, nothing sent"
            return FollowUp(_threaded(found, detail), ticket.id, Joining.AUTOMATIC, detail, kind)
        if admitted is Role.SPECIALIST:  # the write notes how it ends: relayed, or a command
            return FollowUp(found, ticket.id, Joining.SPECIALIST, joined, "specialist")
        step = threads.continuation(ticket.status, ticket.resolved_at, facts.now, self.reopen_within)
        if step is Continuation.NEW:
            detail = f"ticket #{ticket.id} was resolved before the reopen window: a new ticket linked to it"
            return replace(found.note("threading", "continues", detail), continues=ticket.id)
        reopen = step is Continuation.REOPEN
        return FollowUp(_threaded(found, joined), ticket.id, Joining.REPLY, joined, reopen=reopen)

    def new_conversation(self, reading: Reading, facts: Facts, found: Found) -> Decision:
        held = None if reading.requester else Held(HeldReason.NO_SENDER, "the message names no sender to answer")
        held = held or automatic_hold(reading.automatic)  # automatic mail starts no conversation
        if held:
            return Open(found.note("entitlement", "not judged", f"held as {held.reason}: {held.detail}"), held, None)
        admission = self.admission(reading, facts)
        held = admission.held
        verdict, detail = (held.reason, held.detail) if held else (ENTITLED, entitled(admission))
        return Open(found.note("entitlement", verdict, detail), held, admission)

    def admission(self, reading: Reading, facts: Facts) -> Admission:
        """The sender of a new ticket looked up in the batch's facts, with the reading's authentication."""
        verdict = reading.verdict
        temporary = self._waiting(reading, facts.now)
        contact = facts.contact(reading.sender)  # whom it trusts, never whom it shows
        decision = decide(
            contact=contact.facts if contact is not None else None,
            authenticated=verdict.authenticated,
            auth_required=self.require_sender_auth,
            today=facts.now.astimezone(self.zone).date(),
            auth_temperror=temporary,
        )
        return Admission(decision, verdict, contact)

    def _authenticated(self, reading: Reading, now: datetime) -> bool:
        self._waiting(reading, now)
        return reading.verdict.authenticated

    def _waiting(self, reading: Reading, now: datetime) -> bool:
        """Whether authentication failed for now (DNS); within `auth_retry_for` of its arrival, the message
        is tried again later (TransientDNSError), after it the rules decide on the failure."""
        verdict = reading.verdict
        temporary = verdict.temporary and not verdict.authenticated
        if temporary and now - reading.received_at < self.auth_retry_for:
            raise TransientDNSError(verdict.reason)
        return temporary


def machine_mail(reading: Reading, facts: Facts, found: Found) -> Decision | Found:
    """Before the duplicate check: our own message coming back has a Message-ID we already keep."""
    parsed, bounce = reading.parsed, reading.bounce
    if reading.own:
        item = facts.outgoing(parsed.message_id) if parsed.message_id else None
        return _ignored(found, "our own message came back", item.ticket_id if item else None)
    if bounce is not None:
        item = facts.outgoing(bounce.original_message_id) if bounce.original_message_id else None
        if item is None:
            return _ignored(found, "bounce of a message mailbot did not send")
        detail = f"bounce: {item.kind} {item.message_id} {delivery_after(item.delivery, bounce)}"
        return Ignore(found.note("automatic mail", "ignored", detail), detail, item.ticket_id, bounce, item)
    automatic = reading.automatic
    return found.note("automatic mail", "automatic" if automatic else "written by a person", automatic or "")


def duplicate(reading: Reading, facts: Facts, found: Found) -> Decision | Found:
    """A Message-ID proves nothing (mailbot.identity): only the same message again is a duplicate."""
    key = reading.key
    uses = facts.uses(key)
    if same_message(reading.identity, key, uses) is not None:
        return Duplicate(found.note("duplicate", "duplicate", f"{key} is already stored, the same message"))
    if uses:
        clash = collision(key, uses)
        return replace(found.note("duplicate", "collision", clash), collision=clash)
    return found.note("duplicate", "new")


def takes(reading: Reading, match: Match, status: str) -> bool:
    """Whether the message says `#take` at its top, about a ticket that can be taken (new or open) by a
    clue other than a forged token."""
    if match.how is How.FORGED_TOKEN or status not in RUNNING:
        return False
    said, _ = commands.read(split_reply(reading.parsed.text)[0])
    return bool(said) and said[0].verb == "take"


def automatic_hold(reason: str | None) -> Held | None:
    """Why a new ticket opened by automatic mail is held (`automatic.automatic_reason` gave `reason`), or
    None for a person's mail."""
    return Held(HeldReason.AUTOMATIC, f"automatic mail: {reason}") if reason is not None else None


def entitled(admission: Admission) -> str:
    contact = admission.contact
    if contact is None:
        return "entitled"
    org = contact.facts.org
    return f"{contact.facts.address} is a named contact of {org.name} ({org.product}, {org.plan})"


def _threaded(found: Found, detail: str) -> Found:
    return found.note("threading", "threaded", detail)


def _ignored(found: Found, detail: str, ticket_id: int | None = None) -> Ignore:
    return Ignore(found.note("automatic mail", "ignored", detail), detail, ticket_id)
