"""Internal addresses out of relayed text."""

from __future__ import annotations

from mailbot.redact import hide_addresses

TEAM = ["sam@schoolmint.com", "kim@schoolmint.com"]
SUPPORT = "herosupport@schoolmint.com"


class TestHideAddresses:
    def test_team_addresses_become_the_support_address(self) -> None:
        text = "Write to Sam@SchoolMint.com or <kim+urgent@schoolmint.com>.\n-- \nSam | sam@schoolmint.com"
        assert hide_addresses(text, TEAM, SUPPORT) == (
            f"Write to {SUPPORT} or <{SUPPORT}>.\n-- \nSam | {SUPPORT}"
        )

    def test_other_addresses_stay(self) -> None:
        """The customer's own address, or a vendor's, is the specialist's to mention."""
        text = "We wrote to ana@lincoln.example and billing@schoolmint.com (mailto:ana@lincoln.example)."
        assert hide_addresses(text, TEAM, SUPPORT) == text

    def test_lookalikes_stay(self) -> None:
        text = "asam@schoolmint.com, sam@schoolmint.com.evil.example"
        assert hide_addresses(text, TEAM, SUPPORT) == text

    def test_no_team(self) -> None:
        assert hide_addresses("sam@schoolmint.com", [], SUPPORT) == "sam@schoolmint.com"
