"""Per-ticket reply tokens: a plus-address of the support address that nobody can forge.

Every message mailbot sends about ticket 123 carries `Reply-To: herosupport+t123-<mac>@schoolmint.com`, where
`<mac>` is HMAC-SHA256 over the ticket number, keyed with the site's secret and truncated to 64 bits (16 hex
digits). A reply to that address names its ticket even when the client drops In-Reply-To and References;
without the secret nobody can make the token of another ticket (RFC 2104 section 5: a truncated HMAC keeps
its strength up to the bits kept, and each guess costs the guesser a whole email). Hex digits survive mail
systems that fold the case of local parts. Subaddresses are RFC 5233's convention; the listener accepts them.

**Two sides.** Mail to the customer (confirmation, introduction, explanation, relay, resolution) carries the
customer token, `+t123-<mac>`; mail sent only to the ticket's specialist (the notification, the assignment)
carries the specialist token, `+s123-<mac>`, whose mac is keyed for that side alone. Anyone can obtain our
customer-side mail (write to us and read the explanation, be cc'd on a confirmation), so a customer token
names a ticket and nothing more; the specialist token is what a specialist's reply must be addressed to before
it is relayed to the customer under the support team's name (mailbot.threads.admit).

Pure: the secret comes in as bytes, nothing here touches the database or the configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

MAC_HEX_DIGITS = 16
_TOKEN = re.compile(r"^([ts])(\d{1,18})-([0-9a-z]+)$")


class Side(StrEnum):
    """Who a reply address was handed to; the value is its tag's first letter."""

    CUSTOMER = "t"
    SPECIALIST = "s"


# Domain separation: the same secret keys the loop marks, and each side's macs are useless for the other.
_CONTEXT = {Side.CUSTOMER: b"mailbot reply token v1\x00", Side.SPECIALIST: b"mailbot specialist token v1\x00"}


@dataclass(frozen=True)
class Claim:
    """What a token-shaped recipient claims: the ticket it names, whether its signature verifies, which side."""

    ticket_id: int
    address: str
    valid: bool
    side: Side = Side.CUSTOMER


@dataclass(frozen=True)
class ReplyTokens:
    """Signs and reads the reply tokens of one site: its secret and its support addresses."""

    secret: bytes
    support_addresses: tuple[str, ...]  # the first one carries the tokens we hand out

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the reply-token secret is empty")
        if not self.support_addresses:
            raise ValueError("reply tokens need a support address")

    def mac(self, ticket_id: int, side: Side = Side.CUSTOMER) -> str:
        digest = hmac.new(self.secret, _CONTEXT[side] + str(ticket_id).encode(), hashlib.sha256).hexdigest()
        return digest[:MAC_HEX_DIGITS]

    def address(self, ticket_id: int, side: Side = Side.CUSTOMER) -> str:
        """The reply address of a ticket: herosupport+t123-0123456789abcdef@schoolmint.com (the specialist's:
        herosupport+s123-...)."""
        local, _, domain = self.support_addresses[0].rpartition("@")
        return f"{local}+{side.value}{ticket_id}-{self.mac(ticket_id, side)}@{domain}"

    def read(self, address: str) -> Claim | None:
        """The claim of a recipient shaped like a token of ours, or None for any other address."""
        local, at, domain = address.strip().lower().rpartition("@")
        base, plus, tag = local.partition("+")
        if not (at and plus) or f"{base}@{domain}" not in {a.lower() for a in self.support_addresses}:
            return None
        match = _TOKEN.match(tag)
        if match is None:
            return None
        side, ticket_id = Side(match[1]), int(match[2])
        # compare_digest: the time taken says nothing about how much of a guessed mac was right.
        valid = hmac.compare_digest(match[3].encode(), self.mac(ticket_id, side).encode())
        return Claim(ticket_id, address, valid, side)

    def claims(self, addresses: Iterable[str]) -> list[Claim]:
        """The token claims among `addresses`, each ticket and side once, valid ones first."""
        found: dict[tuple[int, bool, Side], Claim] = {}
        for address in addresses:
            claim = self.read(address)
            if claim is not None:
                found.setdefault((claim.ticket_id, claim.valid, claim.side), claim)
        return sorted(found.values(), key=lambda c: not c.valid)
