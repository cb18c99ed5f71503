"""Per-ticket reply tokens: a plus-address of the support address that nobody can forge.

Every message mailbot sends about ticket 123 carries `Reply-To: herosupport+t123-<mac>@schoolmint.com`, where
`<mac>` is HMAC-SHA256 over the ticket number, keyed with the site's secret and truncated to 64 bits (16 hex
digits). A reply to that address names its ticket even when the client drops In-Reply-To and References;
without the secret nobody can make the token of another ticket (RFC 2104 section 5: a truncated HMAC keeps
its strength up to the bits kept, and each guess costs the guesser a whole email). Hex digits survive mail
systems that fold the case of local parts. Subaddresses are RFC 5233's convention; the listener accepts them.

Pure: the secret comes in as bytes, nothing here touches the database or the configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

MAC_HEX_DIGITS = 16
_CONTEXT = b"mailbot reply token v1\x00"  # domain separation: the same secret may key other things later
_TOKEN = re.compile(r"^t(\d{1,18})-([0-9a-z]+)$")


@dataclass(frozen=True)
class Claim:
    """What a token-shaped recipient claims: the ticket it names, and whether its signature verifies."""

    ticket_id: int
    address: str
    valid: bool


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

    def mac(self, ticket_id: int) -> str:
        digest = hmac.new(self.secret, _CONTEXT + str(ticket_id).encode(), hashlib.sha256).hexdigest()
        return digest[:MAC_HEX_DIGITS]

    def address(self, ticket_id: int) -> str:
        """The reply address of a ticket: herosupport+t123-0123456789abcdef@schoolmint.com."""
        local, _, domain = self.support_addresses[0].rpartition("@")
        return f"{local}+t{ticket_id}-{self.mac(ticket_id)}@{domain}"

    def read(self, address: str) -> Claim | None:
        """The claim of a recipient shaped like a token of ours, or None for any other address."""
        local, at, domain = address.strip().lower().rpartition("@")
        base, plus, tag = local.partition("+")
        if not (at and plus) or f"{base}@{domain}" not in {a.lower() for a in self.support_addresses}:
            return None
        match = _TOKEN.match(tag)
        if match is None:
            return None
        ticket_id = int(match[1])
        # compare_digest: the time taken says nothing about how much of a guessed mac was right.
        valid = hmac.compare_digest(match[2].encode(), self.mac(ticket_id).encode())
        return Claim(ticket_id, address, valid)

    def claims(self, addresses: Iterable[str]) -> list[Claim]:
        """The token claims among `addresses`, each ticket once, valid ones first."""
        found: dict[tuple[int, bool], Claim] = {}
        for address in addresses:
            claim = self.read(address)
            if claim is not None:
                found.setdefault((claim.ticket_id, claim.valid), claim)
        return sorted(found.values(), key=lambda c: not c.valid)
