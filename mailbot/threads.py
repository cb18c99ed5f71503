"""Which ticket a message continues, and whether its sender may join it: the rules, as pure functions.

Matching, in order of trust; the first rule that finds an existing ticket decides:

1. `message-id`: In-Reply-To, then References from the newest, names a message of a ticket: one we sent or
   one we received (RFC 5322 section 3.6.4; the store keeps every Message-ID of every conversation).
2. `token`: a recipient is a reply token of ours whose signature verifies (mailbot.tokens).
3. `subject`: the subject carries the readable reference "[Ticket #N]".
4. `forged-token`: a recipient is shaped like a reply token of an existing ticket but does not verify.

A Message-ID used by several messages (anyone can write any: mailbot.identity) names the ticket among
them that the sender takes part in, else the first that used it: a later message cannot pull a thread
away from its ticket, nor an earlier one capture the thread of a genuine message.

Anything else is a new ticket. A match is only a claim on a ticket, never access to it: the sender joins
only as one of the ticket's participants (the requester; a named contact of the requester's organization
whom the requester addressed in one of their messages on the ticket; the assigned specialist), only with
an authenticated From, and never through a forged token. The assigned specialist speaks as the support
team (their message is relayed to the customer) only when it was sent to the ticket's specialist reply
address (mailbot.tokens), which only mail sent to that specialist carries: a signature aligned with the
support domain is not enough (any platform the domain delegates DKIM to has one), and nothing a stranger
can obtain from our customer-side mail serves. Message-IDs travel in every copy of a thread and
ticket numbers count up, so both are guessable: letting a match grant access is how the 2017 "Ticket
Trick" and the 2024 support-desk spoofing reports read other people's tickets. Participants are derived
from the ticket's own record each time, so a reassigned ticket or a removed contact loses access at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mailbot.addresses import normalize
from mailbot.held import HeldReason
from mailbot.tokens import Claim, ReplyTokens, Side

MAX_THREAD_IDS = 50  # Message-IDs looked up per message: In-Reply-To plus the newest References
MAX_TICKET_ID = 2**31 - 1  # ticket ids are 32-bit integers in the store
_SUBJECT_REFERENCE = re.compile(r"\[\s*ticket\s*#\s*(\d{1,10})\s*\]", re.IGNORECASE)


class How(StrEnum):
    MESSAGE_ID = "message-id"
    TOKEN = "token"
    SUBJECT = "subject"
    FORGED_TOKEN = "forged-token"


class Role(StrEnum):
    REQUESTER = "requester"
    CONTACT = "contact"
    SPECIALIST = "specialist"


@dataclass(frozen=True)
class Clues:
    """What a message says about the conversation it belongs to."""

    message_ids: tuple[str, ...]  # In-Reply-To first, then References from the newest
    claims: tuple[Claim, ...]  # reply-token recipients, valid ones first
    subject_ticket: int | None

    def speaks_for(self, ticket_id: int) -> bool:
        """Whether the message went to the specialist reply address of `ticket_id`, and it verifies."""
        return any(c.valid and c.side is Side.SPECIALIST and c.ticket_id == ticket_id for c in self.claims)

    def ticket_ids(self) -> set[int]:
        """The ticket numbers named outright (tokens, subject): the caller says which of them exist."""
        named = {claim.ticket_id for claim in self.claims}
        if self.subject_ticket is not None:
            named.add(self.subject_ticket)
        return {ticket_id for ticket_id in named if ticket_id <= MAX_TICKET_ID}


@dataclass(frozen=True)
class Match:
    ticket_id: int
    how: How
    evidence: str  # the Message-ID, the recipient address or the subject reference that matched

    def describe(self) -> str:
        """How the message names its ticket, for people: 'ticket #3 by its Message-ID <x@y>'."""
        by = {
            How.MESSAGE_ID: f"by its Message-ID {self.evidence}",
            How.TOKEN: f"by its reply address {self.evidence}",
            How.SUBJECT: f"by the reference {self.evidence} in the subject",
            How.FORGED_TOKEN: f"by the reply address {self.evidence}, whose token does not verify",
        }[self.how]
        return f"ticket #{self.ticket_id} {by}"


@dataclass(frozen=True)
class Participants:
    """Who may write on a ticket; addresses as mailbot.addresses.normalize keys them."""

    requester: str
    specialist: str | None
    contacts: frozenset[str]

    def role_of(self, address: str) -> Role | None:
        key = address_key(address)
        if key is None:
            return None
        if key == self.requester:
            return Role.REQUESTER
        if key == self.specialist:
            return Role.SPECIALIST
        return Role.CONTACT if key in self.contacts else None


class Continuation(StrEnum):
    """What a participant's message does to its ticket."""

    APPEND = "append"  # the ticket is not resolved: the message joins it
    REOPEN = "reopen"  # resolved within the reopen window: the ticket opens again
    NEW = "new"  # resolved longer ago: a new ticket that links to the old one


def address_key(address: str) -> str | None:
    """The identity of an address (case and plus tags folded), None when it is not an address."""
    try:
        return normalize(address)
    except ValueError:
        return None


def read_clues(
    *,
    in_reply_to: str | None,
    references: Iterable[str],
    recipients: Iterable[str],
    subject: str,
    tokens: ReplyTokens,
) -> Clues:
    """The thread clues of a message: its Message-ID references, token recipients and subject reference."""
    ids = [in_reply_to] if in_reply_to else []
    ids.extend(reversed(list(references)))
    unique = tuple(dict.fromkeys(ids))[:MAX_THREAD_IDS]
    references_in_subject = _SUBJECT_REFERENCE.findall(subject)
    # Our subjects end with the reference; a forward of another ticket's mail may carry an older one before it.
    subject_ticket = int(references_in_subject[-1]) if references_in_subject else None
    return Clues(unique, tuple(tokens.claims(recipients)), subject_ticket)


def match(
    clues: Clues,
    *,
    owners: Mapping[str, Sequence[int]],
    existing: Container[int],
    joins: Callable[[int], bool] = lambda _ticket_id: False,
) -> Match | None:
    """The ticket the message names, by the most trusted rule that finds one (see the module docstring).

    `owners` maps the Message-IDs of `clues` that belong to tickets to those tickets, in the order of their
    first use; `existing` holds the tickets of `clues.ticket_ids()` that exist; `joins(ticket_id)` says
    whether the sender is a participant of that ticket (asked only of a Message-ID several tickets use).
    """
    for message_id in clues.message_ids:
        if tickets := owners.get(message_id):
            chosen = next((t for t in tickets if joins(t)), tickets[0]) if len(tickets) > 1 else tickets[0]
            return Match(chosen, How.MESSAGE_ID, message_id)
    for claim in clues.claims:
        if claim.valid and claim.ticket_id in existing:
            return Match(claim.ticket_id, How.TOKEN, claim.address)
    if clues.subject_ticket is not None and clues.subject_ticket in existing:
        return Match(clues.subject_ticket, How.SUBJECT, f"[Ticket #{clues.subject_ticket}]")
    for claim in clues.claims:
        if not claim.valid and claim.ticket_id in existing:
            return Match(claim.ticket_id, How.FORGED_TOKEN, claim.address)
    return None


def participants(
    *,
    requester: str,
    specialist: str | None,
    messages: Iterable[tuple[str, Iterable[str]]],
    colleagues: Collection[str],
) -> Participants:
    """The participants of a ticket.

    `messages` are the (sender, addressed To and Cc) of the ticket's inbound messages; `colleagues` the
    addresses of the named contacts of the requester's organization. A colleague joins once the requester
    has addressed them: only the requester brings people in, and only people the customer has named.
    """
    requester_key = address_key(requester) or requester.lower()
    colleague_keys = {key for key in map(address_key, colleagues) if key}
    brought_in = {
        key
        for sender, addressed in messages
        if address_key(sender) == requester_key
        for key in map(address_key, addressed)
        if key in colleague_keys
    }
    return Participants(
        requester=requester_key,
        specialist=address_key(specialist) if specialist else None,
        contacts=frozenset(brought_in - {requester_key}),
    )


def admit(
    sender: str, found: Match, people: Participants, *, authenticated: bool, speaks_for: bool = False
) -> Role | HeldReason:
    """Whether `sender` may write on the ticket `found` names: their role, or why not.

    `authenticated` is the sender-authentication verdict on the From address (always True where the
    configuration trusts the receiving path); without it anyone could write as a participant.
    `speaks_for`: the message went to the ticket's specialist reply address (`Clues.speaks_for`), which
    the specialist's role needs on top of an authenticated From.
    """
    if found.how is How.FORGED_TOKEN:
        return HeldReason.FORGED_TOKEN
    role = people.role_of(sender)
    if role is None:
        return HeldReason.NOT_A_PARTICIPANT
    if not authenticated:
        return HeldReason.NOT_AUTHENTICATED
    if role is Role.SPECIALIST and not speaks_for:
        return HeldReason.NO_SPECIALIST_TOKEN
    return role


def refusal_detail(sender: str, found: Match, refusal: HeldReason) -> str:
    """The held ticket's detail: who tried to join which ticket, how, and why they may not."""
    why = {
        HeldReason.NOT_A_PARTICIPANT: "the sender is not a participant of that ticket",
        HeldReason.NOT_AUTHENTICATED: "the From address passed no trusted DKIM or DMARC check",
        HeldReason.FORGED_TOKEN: "the reply token was not signed by us",
        HeldReason.NO_SPECIALIST_TOKEN: (
            "it was not sent to the ticket's specialist reply address (the Reply-To of the mail sent to the "
            "specialist), so it is not relayed to the customer"
        ),
    }[refusal]
    return f"{sender or '(no sender)'} tried to join {found.describe()}; {why}"


def continuation(status: str, resolved_at: datetime | None, now: datetime, window: timedelta) -> Continuation:
    """Whether a participant's message appends to its ticket, reopens it, or starts a linked new one."""
    if status != "resolved":
        return Continuation.APPEND
    if resolved_at is not None and now - resolved_at <= window:
        return Continuation.REOPEN
    return Continuation.NEW
