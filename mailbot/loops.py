"""Mail written by machines: what the intake does with it, and the guard on every automatic reply mailbot plans.

The rules (RFC 3834; README, "A hostile world: the limits"):

1. **Our own mail coming back** (forwarded to the support address, or looping through a list) is ignored:
   no ticket, no reply. It is ours when its `X-Mailbot-Loop` value is `automatic.loop_mark` of its own
   Message-ID under the site's secret, so nobody can make a customer's message look like ours.
2. **A bounce** (`bounces.read_bounce`: an RFC 3464 report or a mail system's plain-text notice) is ignored
   too, and tied to the outgoing message it reports on, found by that message's Message-ID: its delivery
   becomes `bounced` (or `delayed`, for a warning) with the status and the remote server's words, shown by
   `ticket show`. A hard (5.x.x) bounce counts once per outgoing message against the named contact at the
   failed address; after `security.bouncing_after` of them the contact is marked `bouncing`.
3. **Other automatic mail** (`automatic.automatic_reason`: out-of-office, lists, bulk, no-reply senders...)
   goes on through the intake: a reply to one of our messages threads onto its ticket and is kept there,
   but it relays, notifies and reopens nothing (mailbot.followups); one that starts nothing becomes a
   *held* ticket, reason `automatic`, where a person can see it (nothing accepted is dropped) and nothing
   is sent back.
4. **The guard.** Mail mailbot sends on its own in answer to a message (a confirmation, an explanation)
   goes out only when the message that opened the ticket was written by a person, From names the
   requester and `automatic.may_auto_reply_to` agrees that an automatic reply may go there, and the
   requester is not a contact marked bouncing (`refusal`). The loop governor (mailbot.governor) applies it,
   with the limits on how much automatic mail goes to one address and passes through one ticket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage

from sqlalchemy.orm import Session

from mailbot.addresses import same_person
from mailbot.automatic import LOOP_HEADER, aligned_author, automatic_reason, is_own_mail, loop_mark
from mailbot.bounces import Bounce, delivery_after
from mailbot.facts import Facts
from mailbot.parse import ParsedMessage
from mailbot.store import registry
from mailbot.store.schema import OutboxItem

log = logging.getLogger("mailbot.loops")

def delivery_detail(bounce: Bounce) -> str:
    """One line for people: the status, the remote server's words, the addresses that failed."""
    parts = [bounce.status or "", bounce.diagnostic or ""]
    if bounce.recipients:
        parts.append(f"({', '.join(bounce.recipients)})")
    return " ".join(part for part in parts if part) or "the receiving system gave no reason"


def refusal(opening: Opening, requester: str) -> str | None:
    """Why no automatic reply may go to `requester` about the message `opening`, or None when one may
    (rule 4).

    Without any return path (a message read from a file or a mailbox that kept none) there is no envelope
    to hold From against: From stands, once the message is known to be a person's.
    """
    if opening.automatic is not None:
        return f"automatic mail: {opening.automatic}"
    message, envelope_sender = opening.headers, opening.envelope_from
    has_return_path = envelope_sender is not None or "Return-Path" in message
    allowed = aligned_author(message, envelope_sender) if has_return_path else requester
    if allowed is None or not same_person(allowed, requester):
        return "the sender's address cannot be trusted with a reply (From and the return path disagree)"
    if opening.bouncing:
        return f"{requester} is marked bouncing"
    return None


@dataclass(frozen=True)
class Opening:
    """The message that opened a ticket as rule 4 reads it: its header fields, its envelope sender, whether
    the requester is a named contact marked bouncing, and why the message is automatic (None: a person
    wrote it). The intake has all of it in hand as it opens the ticket; otherwise (a release)
    `Governor.opening` reads it from the store."""

    headers: EmailMessage
    envelope_from: str | None
    bouncing: bool
    automatic: str | None

    @classmethod
    def read(cls, headers: EmailMessage, envelope_from: str | None, *, bouncing: bool) -> Opening:
        return cls(headers, envelope_from, bouncing, automatic_reason(headers, envelope_from))


class MachineMail:
    """Rules 1 and 2: which message is our own (`Intake.read` asks), and what a bounce does to the store (the
    intake's write carries it out; the rule that ignores both is mailbot.intake.rules.machine_mail)."""

    def __init__(self, secret: bytes, *, bouncing_after: int) -> None:
        self.secret = secret
        self.bouncing_after = bouncing_after

    def own(self, parsed: ParsedMessage) -> bool:
        """Rule 1: whether the message is our own, coming back (its loop mark is ours)."""
        message_id = parsed.message_id
        if not message_id or LOOP_HEADER not in parsed.message:  # no mark at all: no HMAC to work out
            return False
        return is_own_mail(parsed.message, loop_mark(self.secret, message_id))

    def record(self, session: Session, item: OutboxItem, bounce: Bounce, facts: Facts) -> None:
        """Rule 2: the delivery of `item` as the bounce tells it, and a hard bounce against its contacts."""
        already_bounced = item.delivery == "bounced"
        if already_bounced and bounce.delayed:
            return  # a late warning says nothing new about a message that already failed
        item.delivery = delivery_after(item.delivery, bounce)
        item.delivery_detail = delivery_detail(bounce)[:2000]
        log.warning(
            "%s %s of ticket %s %s: %s", item.kind, item.message_id, item.ticket_id, item.delivery, item.delivery_detail
        )
        if not bounce.permanent or already_bounced:
            return  # one hard bounce per outgoing message, however many reports arrive about it
        failed = [r for r in item.recipients if any(same_person(r, b) for b in bounce.recipients)]
        for address in failed or item.recipients:
            contact = registry.find_contact(session, address)
            if contact is None:
                continue
            contact.bounces += 1
            if contact.bounces >= self.bouncing_after and not contact.bouncing:
                contact.bouncing = True
                facts.bounced(contact.address)
                log.warning("contact %s marked bouncing after %d hard bounces", contact.address, contact.bounces)
