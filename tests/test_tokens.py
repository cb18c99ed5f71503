"""Reply tokens: signed per-ticket plus-addresses of the support address."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from mailbot.tokens import MAC_HEX_DIGITS, Claim, ReplyTokens, Side

SUPPORT = ("herosupport@schoolmint.com", "help@herok12.com")


@pytest.fixture
def tokens() -> ReplyTokens:
    return ReplyTokens(b"a site secret of some length", SUPPORT)


class TestAddress:
    def test_shape(self, tokens: ReplyTokens) -> None:
        """The token hangs on the first support address as a plus tag: t<ticket>-<16 hex digits>."""
        address = tokens.address(123)
        local, _, domain = address.partition("@")
        assert domain == "schoolmint.com"
        base, _, tag = local.partition("+")
        assert base == "herosupport"
        number, _, mac = tag.partition("-")
        assert number == "t123"
        assert len(mac) == MAC_HEX_DIGITS and all(c in "0123456789abcdef" for c in mac)

    def test_is_hmac_sha256_of_the_ticket(self, tokens: ReplyTokens) -> None:
        """The mac is HMAC-SHA256 keyed with the secret, truncated: recomputable only with the secret."""
        expected = hmac.new(
            b"a site secret of some length", b"mailbot reply token v1\x00" + b"7", hashlib.sha256
        )
        assert tokens.mac(7) == expected.hexdigest()[:MAC_HEX_DIGITS]

    def test_differs_per_ticket_and_per_secret(self, tokens: ReplyTokens) -> None:
        other_site = ReplyTokens(b"another secret", SUPPORT)
        assert tokens.address(1) != tokens.address(2)
        assert tokens.address(1) != other_site.address(1)

    def test_stable(self, tokens: ReplyTokens) -> None:
        """Several instances with one secret hand out the same address for a ticket."""
        assert tokens.address(42) == ReplyTokens(b"a site secret of some length", SUPPORT).address(42)

    def test_empty_secret_refused(self) -> None:
        with pytest.raises(ValueError, match="secret"):
            ReplyTokens(b"", SUPPORT)


class TestRead:
    def test_own_token_verifies(self, tokens: ReplyTokens) -> None:
        address = tokens.address(123)
        assert tokens.read(address) == Claim(123, address, True)

    def test_specialist_token_verifies_on_its_side_only(self, tokens: ReplyTokens) -> None:
        """The specialist's reply address is keyed for that side: the customer's mac does not serve for it."""
        address = tokens.address(123, Side.SPECIALIST)
        assert "+s123-" in address and tokens.read(address) == Claim(123, address, True, Side.SPECIALIST)
        borrowed = f"herosupport+s123-{tokens.mac(123)}@schoolmint.com"
        assert tokens.read(borrowed) == Claim(123, borrowed, False, Side.SPECIALIST)

    def test_case_folded_by_a_mail_system_still_verifies(self, tokens: ReplyTokens) -> None:
        address = tokens.address(5).upper()
        claim = tokens.read(address)
        assert claim is not None and claim.valid and claim.ticket_id == 5

    def test_on_another_support_address(self, tokens: ReplyTokens) -> None:
        mac = tokens.mac(9)
        claim = tokens.read(f"help+t9-{mac}@herok12.com")
        assert claim is not None and claim.valid

    def test_guessed_mac_is_a_claim_that_does_not_verify(self, tokens: ReplyTokens) -> None:
        claim = tokens.read("herosupport+t123-0123456789abcdef@schoolmint.com")
        assert claim == Claim(123, "herosupport+t123-0123456789abcdef@schoolmint.com", False)

    def test_token_of_another_ticket_does_not_verify(self, tokens: ReplyTokens) -> None:
        """A customer's own token, edited to name another ticket, is refused."""
        mac = tokens.mac(1)
        claim = tokens.read(f"herosupport+t2-{mac}@schoolmint.com")
        assert claim is not None and not claim.valid

    def test_truncated_mac_does_not_verify(self, tokens: ReplyTokens) -> None:
        claim = tokens.read(tokens.address(3).replace(tokens.mac(3), tokens.mac(3)[:8]))
        assert claim is not None and not claim.valid

    @pytest.mark.parametrize(
        "address",
        [
            "herosupport@schoolmint.com",  # no tag
            "herosupport+billing@schoolmint.com",  # an ordinary tag
            "herosupport+t12@schoolmint.com",  # no mac
            "someone+t1-0123456789abcdef@schoolmint.com",  # not a support address
            "herosupport+t1-0123456789abcdef@elsewhere.example",  # not our domain
            "not an address",
        ],
    )
    def test_other_addresses_are_not_claims(self, tokens: ReplyTokens, address: str) -> None:
        assert tokens.read(address) is None

    def test_claims_dedupe_and_put_valid_first(self, tokens: ReplyTokens) -> None:
        forged = "herosupport+t8-0000000000000000@schoolmint.com"
        good = tokens.address(4)
        claims = tokens.claims([forged, "ana@lincoln.example", good, good.upper()])
        assert [(c.ticket_id, c.valid) for c in claims] == [(4, True), (8, False)]
