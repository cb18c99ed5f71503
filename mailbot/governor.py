"""The loop governor: one gate for all the mail mailbot sends on its own. It stops machines, not people.

Every confirmation, introduction, explanation, notification, relay, notice (to a specialist whose emailed
command could not be carried out), assignment and hand-over passes `Governor.limit` as the workflow queues it
(`Workflow.send`). The rules, in order; the first that refuses decides:

1. **Never to ourselves.** Nothing goes to one of the support addresses (or `support.from`), plus forms
   included: mail whose From is our own address would otherwise start a loop with ourselves.
2. **Answers go to people** (confirmations, explanations: mailbot.loops rule 4): the message that opened the
   ticket was written by a person, From names the requester and the return path agrees, the requester is
   not a contact marked bouncing.
3. **Explanations**: at most `security.explanations_per_day` to one address in any 24 hours.
4. **Per address**: confirmations, explanations and introductions to one address (case and plus tags
   folded) within `security.auto_reply_window` (24h): at most `security.contact_mail_limit` (100) when the
   ticket is a named contact's entitled issue, `security.auto_reply_limit` (10) otherwise. A responder that
   answers each of our mails with a new thread and marks nothing opens a ticket per answer, each owing a
   confirmation and an introduction; machine speed meets either cap within minutes and the loop ends with
   the mail we stop sending. A person writing real issues does not send fifty in a day.
5. **Per ticket**: notifications, relays and notices (sent on receipt of a message, so responders on both
   sides could keep them going): at most `security.ticket_mail_per_hour` on one ticket in an hour.

A limit that stops a promised message (a confirmation or an introduction of a ticket whose clock runs)
**withholds** it: it is composed and kept in the outbox as `withheld`, never sent, and its deadline stands,
so the SLA check reports the ticket at risk at once and breached at the deadline (mailbot.sla): a person's
genuine issue that ever meets a cap is a recorded breach, not a silence. Any other refusal composes nothing
and the ticket keeps the reason (`auto_reply_refused`). Every limit hit is logged with its reason.

The counts are the batch's facts (mailbot.facts): counted by the database once per batch, for each window's
start (`counts_from`), on an index (`outbox.recipient`, `created_at`), so they cost the same whatever an
address's history, and kept up to date as the batch plans mail, so what an earlier message of the batch
queued counts though it is not written yet. A caller outside
the intake (a command, the SLA sweep) gives none: they are read for the one message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesParser
from typing import cast

from sqlalchemy.orm import Session

from mailbot.addresses import key_of
from mailbot.config import SecurityConfig
from mailbot.entitlement import ENTITLED
from mailbot.facts import Facts
from mailbot.loops import Opening, refusal
from mailbot.store import deliveries, registry
from mailbot.store.schema import Ticket

log = logging.getLogger("mailbot.governor")

ANSWERS = frozenset({"confirmation", "explanation"})  # mail sent on receipt of a message, to its writer
COUNTED = frozenset({"confirmation", "explanation", "introduction"})  # counted per address (rule 4)
REACTIVE = frozenset({"notification", "relay", "notice"})  # mail sent on receipt of a message (rule 5)
TEAM = frozenset({"assignment", "handover"})  # to a specialist when a ticket changes hands: rule 1 only
GOVERNED = COUNTED | REACTIVE | TEAM  # a resolution is a person's act, sent on their command
PROMISED = frozenset({"confirmation", "introduction"})  # the promise's messages (mailbot.sla)
EXPLANATION = "explanation"
EXPLANATION_WINDOW = timedelta(days=1)
TICKET_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Limit:
    """Why a message may not go out now; `withholds`: it is promised, so it is kept back, not dropped."""

    reason: str
    withholds: bool = False


class Governor:
    def __init__(self, security: SecurityConfig, own_addresses: Collection[str]) -> None:
        self.security = security
        self.own = frozenset(key_of(address) for address in own_addresses)

    def counts_from(self, now: datetime) -> tuple[datetime, ...]:
        """The instants the rules count planned mail from at `now`: now less each of their windows (the
        facts count by these, mailbot.facts)."""
        return tuple(now - window for window in (self.security.auto_reply_window, EXPLANATION_WINDOW, TICKET_WINDOW))

    def facts(self, session: Session, now: datetime) -> Facts:
        """Facts for a caller outside the intake's batches (a command, the SLA sweep), read as the rules ask:
        what its transaction planned so far is written first, so the counts read it."""
        session.flush()
        return Facts(session, counts_from=self.counts_from(now))

    def limit(
        self,
        session: Session,
        ticket: Ticket,
        kind: str,
        recipients: Sequence[str],
        now: datetime,
        opening: Opening | None = None,
        facts: Facts | None = None,
    ) -> Limit | None:
        """Why `kind` mail to `recipients` about `ticket` may not go out now, or None; a limit is logged.

        `opening`: the message that opened the ticket, when the caller has it parsed (else read from the
        store, for answers only). `facts`: the batch's (mailbot.facts), else read for this message."""
        if kind not in GOVERNED:
            return None
        found = self._rules(session, ticket, kind, recipients, now, opening, facts or self.facts(session, now))
        if found is not None:
            fate = "withheld (its deadline stands)" if found.withholds else "not sent"
            log.warning(
                "ticket %s: %s to %s %s: %s", ticket.id, kind, ", ".join(recipients), fate, found.reason
            )
        return found

    def _rules(
        self,
        session: Session,
        ticket: Ticket,
        kind: str,
        recipients: Sequence[str],
        now: datetime,
        opening: Opening | None,
        facts: Facts,
    ) -> Limit | None:
        if own := [r for r in recipients if key_of(r) in self.own]:
            return Limit(f"{own[0]} is one of our own support addresses")
        if kind in ANSWERS:
            opening = opening or self.opening(session, ticket)
            if opening is None:
                return Limit("no stored message to answer")
            if (why := refusal(opening, ticket.requester)) is not None:
                return Limit(why)
        if kind == EXPLANATION:
            count = facts.sent_to(ticket.requester, {EXPLANATION}, now - EXPLANATION_WINDOW)
            if count >= (cap := self.security.explanations_per_day):
                return Limit(f"{cap} explanations already went to {ticket.requester} in 24 hours")
        if kind in COUNTED and recipients:
            return self._per_address(ticket, kind, recipients[0], now, facts)
        if kind in REACTIVE:
            count = facts.sent_on(ticket.id, REACTIVE, now - TICKET_WINDOW)
            if count >= (cap := self.security.ticket_mail_per_hour):
                return Limit(
                    f"mail loop suspected: {count} notifications and relays in the last hour (the limit is {cap})"
                )
        return None

    def _per_address(self, ticket: Ticket, kind: str, address: str, now: datetime, facts: Facts) -> Limit | None:
        """Rule 4; a promised message of a running clock is withheld, not dropped."""
        contact = ticket.entitlement == ENTITLED
        cap = self.security.contact_mail_limit if contact else self.security.auto_reply_limit
        window = self.security.auto_reply_window
        count = facts.sent_to(address, COUNTED, now - window)
        if count < cap:
            return None
        whose = "a named contact's issues" if contact else "a sender who is not an entitled named contact"
        return Limit(
            f"{count} automatic messages already went to {address} within {_span(window)} "
            f"(the limit is {cap} for {whose})",
            withholds=kind in PROMISED and ticket.clock_started_at is not None,
        )

    def opening(self, session: Session, ticket: Ticket) -> Opening | None:
        """The stored message that opened `ticket` and its requester's contact; None if it is not kept."""
        stored = deliveries.opening_message(session, ticket)
        if stored is None:
            return None
        with session.no_autoflush:  # registry.add_contact flushes what it adds
            contact = registry.find_contact(session, ticket.requester)
        return Opening.read(
            _headers(stored.raw), stored.envelope_from, bouncing=contact is not None and contact.bouncing
        )


def _span(window: timedelta) -> str:
    """'24 hours', '1 hour', '90 seconds': a window as the log and the ticket say it."""
    seconds = window.total_seconds()
    amount, unit = (seconds / 3600, "hour") if seconds >= 3600 else (seconds, "second")
    return f"{amount:g} {unit}{'' if amount == 1 else 's'}"


def _headers(raw: bytes) -> EmailMessage:
    # Only the header block: the message already passed parse()'s limits when it was taken in. Each field is
    # parsed once: the rules read From and Content-Type several times, and policy.default parses every read.
    fields = policy.default.clone(header_factory=functools.lru_cache(maxsize=None)(HeaderRegistry()))
    return cast(EmailMessage, BytesParser(policy=fields).parsebytes(raw, headersonly=True))
