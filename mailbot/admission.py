"""The intake's entitlement step: is a new ticket's sender who they claim to be, and are they entitled?

`Gate.authenticate` authenticates the From address (the intake does it before it opens a database
transaction: it may wait on DNS); the intake's rule for a new conversation (mailbot.intake.rules) looks the
sender up in the batch's facts (mailbot.facts: the registry's named contacts, read once per batch) and
decides with `mailbot.entitlement.decide` (today being the date in the business time zone), into an
`Admission`. Authentication is, by the configuration's `[security]`:

- `require_sender_auth = true` (the default): `mailbot.authn.authenticate`, trusted Authentication-Results
  or an aligned DKIM signature, checked on the address of the From header (RFC 7489 section 3.1);
- `trust_local_submission = true` (a trial switch): a message submitted over SMTP from a loopback address
  counts as authenticated; anything else still needs the check above;
- `require_sender_auth = false`: `authn.trusted_path`, the site trusts its receiving path.

A DNS failure while authenticating decides nothing: the rule raises TransientDNSError so the message stays
pending and is tried again later, until `auth_retry_for` after it was received; past that it is held as
`auth-temporarily-unavailable`, where people see it and can release it.

`Gate.record` stores the decision on the ticket and answers a held ticket's sender with the explanation
(templates/explanation.*), only when senders are authenticated at all (`require_sender_auth`) and this one
is (a forged From must get no backscatter), and the loop governor lets it go (`Workflow.answer`,
mailbot.governor: written by a person, not to ourselves, `explanations_per_day`, the per-address limit).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from mailbot.authn import AuthVerdict, authenticate, trusted_path
from mailbot.config import SecurityConfig
from mailbot.dns import Resolver
from mailbot.entitlement import ENTITLED, Entitled
from mailbot.facts import Facts
from mailbot.held import Held
from mailbot.loops import Opening
from mailbot.parse import ParsedMessage
from mailbot.store.registry import ContactRecord
from mailbot.store.schema import InboundMessage, Ticket
from mailbot.workflow import Workflow

EXPLANATION = "explanation"  # the kind of mail (templates/explanation.*) that tells a held sender why


@dataclass(frozen=True)
class Admission:
    """The entitlement decision for one new ticket, with what the intake needs to act on it."""

    decision: Entitled | Held
    auth: AuthVerdict
    contact: ContactRecord | None  # the named contact the From address belongs to, authenticated or not

    @property
    def organization_id(self) -> int | None:
        """The sender's organization, once the sender is known and authenticated."""
        return self.contact.organization_id if self.contact is not None and self.auth.authenticated else None

    @property
    def held(self) -> Held | None:
        """Why the ticket is held, or None when entitled."""
        return self.decision if isinstance(self.decision, Held) else None


def submitted_locally(inbound: InboundMessage) -> bool:
    """Whether the message came over SMTP from a loopback address.

    LMTP never counts: it is how a local MTA delivers mail that came from anywhere.
    """
    return inbound.source == "smtp" and bool(inbound.peer) and _loopback(inbound.peer)


@functools.lru_cache(maxsize=256)
def _loopback(address: str) -> bool:
    """Whether an address is a loopback one; the same few peers send all day, so each is parsed once."""
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
    return peer.is_loopback


def trust_warnings(security: SecurityConfig) -> list[str]:
    """What `run` must say loudly at start about senders it believes without checking."""
    warnings = []
    if not security.require_sender_auth:
        warnings.append(
            "require_sender_auth = false: any From address is believed. Use this only when the receiving path "
            "is trusted (a local MTA that authenticates senders); never on a public-facing listener."
        )
    elif security.trust_local_submission:
        warnings.append(
            "trust_local_submission = true: TRIAL MODE. Mail submitted over SMTP from 127.0.0.1/::1 is believed "
            "to come from its From address without DKIM. Never use this where an MTA relays mail to mailbot "
            "over loopback; set it to false (the default) in production."
        )
    return warnings


class Gate:
    """Judges new tickets' senders and records the outcome (see the module docstring)."""

    def __init__(
        self, security: SecurityConfig, zone: ZoneInfo, workflow: Workflow, resolver: Resolver | None
    ) -> None:
        if security.require_sender_auth and resolver is None:
            raise ValueError("require_sender_auth needs a DNS resolver")
        self.security = security
        self.zone = zone
        self.workflow = workflow
        self.resolver = resolver

    def authenticate(self, inbound: InboundMessage, parsed: ParsedMessage, sender: str) -> AuthVerdict:
        """Whether `sender`, the From address, provably wrote the message (see the module docstring)."""
        if not sender:
            # No trusted author (mailbot.senders): a missing, ambiguous or malformed From, or a header block
            # that needed repairs. Whatever the reader shows, nothing here can be authenticated.
            return AuthVerdict(False, "none", None, "the From header names no single well-formed mailbox")
        if not self.security.require_sender_auth:
            return trusted_path(sender)
        if self.security.trust_local_submission and submitted_locally(inbound):
            return AuthVerdict(
                True,
                "local-submission",
                sender.rpartition("@")[2].lower(),
                f"trust_local_submission: submitted over SMTP from {inbound.peer}",
            )
        assert self.resolver is not None  # guaranteed by __init__ when authentication is required
        return authenticate(
            inbound.raw,
            sender,
            fields=list(parsed.message.raw_items()),  # the parser's reading, which dkimpy's must match
            trusted_authserv_ids=self.security.trusted_authserv_ids,
            resolver=self.resolver,
        )

    def record(
        self, session: Session, ticket: Ticket, admission: Admission, now: datetime, opening: Opening, facts: Facts
    ) -> None:
        """Store the decision on the new ticket; explain a hold to its sender when that is allowed."""
        held = admission.held
        ticket.entitlement = ENTITLED if held is None else held.reason
        auth = admission.auth
        ticket.sender_auth = (
            f"{auth.method}: {auth.reason}" if auth.authenticated else f"failed: {auth.reason}"
        )
        if held is None or not auth.authenticated or not self.security.require_sender_auth:
            # Entitled; or the From may be forged (no backscatter), which is every From when the site
            # believes them all without a check (`require_sender_auth = false`).
            return
        # The loop governor has the last word (mailbot.governor: explanations_per_day, loops, limits).
        self.workflow.answer(
            session, ticket, EXPLANATION, now=now, opening=opening, facts=facts, reason=str(held.reason)
        )
