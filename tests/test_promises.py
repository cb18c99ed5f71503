"""What mail says about the promise comes from the configuration (mailbot.promises), and the templates use it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from email import message_from_bytes, policy

import pytest

from mailbot.app import App
from mailbot.compose import Thread
from mailbot.hours import BusinessHours
from mailbot.promises import in_words, listed, open_hours, sender_domains, size_words
from mailbot.store.schema import Ticket


def hours(**settings: object) -> BusinessHours:
    base: dict[str, object] = {"timezone": "America/New_York", "open_days": ["mon", "tue", "wed", "thu", "fri"],
                               "opens": "08:00", "closes": "18:00"}
    return BusinessHours.from_settings(**{**base, **settings})  # type: ignore[arg-type]


class TestWords:
    def test_open_hours(self) -> None:
        assert open_hours(hours()) == "Monday to Friday, 8:00 AM to 6:00 PM New York time"
        assert (
            open_hours(hours(timezone="Europe/Berlin", open_days=["mon", "wed", "fri"], opens="09:30", closes="24:00"))
            == "Monday, Wednesday and Friday, 9:30 AM to midnight Berlin time"
        )
        assert open_hours(hours(timezone="UTC", open_days=["sat"], opens="00:00", closes="12:00")) == (
            "Saturday, midnight to 12:00 PM UTC"
        )

    @pytest.mark.parametrize(
        ("window", "business", "expected"),
        [
            (timedelta(hours=4), True, "4 business hours"),
            (timedelta(hours=1), True, "1 business hour"),
            (timedelta(minutes=90), True, "90 business minutes"),
            (timedelta(days=2), True, "48 business hours"),  # a business day has no fixed length
            (timedelta(days=14), False, "14 days"),
            (timedelta(hours=36), False, "36 hours"),
            (timedelta(hours=1), False, "1 hour"),
        ],
    )
    def test_durations(self, window: timedelta, business: bool, expected: str) -> None:
        assert in_words(window, business=business) == expected

    def test_domains_lists_and_sizes(self) -> None:
        assert sender_domains(["herosupport@schoolmint.com", "help@SchoolMint.com"], ["@herok12.com"]) == [
            "schoolmint.com", "herok12.com"
        ]
        assert [listed(["a"]), listed(["a", "b"]), listed(["a", "b", "c"])] == ["a", "a and b", "a, b and c"]
        assert [size_words(n) for n in (999, 1000, 45_400, 2_345_678)] == ["999 bytes", "1 KB", "45 KB", "2.3 MB"]


class TestTemplatesFollowTheConfiguration:
    def confirmation(self, app: App, requester_name: str = "") -> tuple[str, str]:
        ticket = Ticket(id=3, subject="Login broken", requester="ana@lincoln.example", requester_name=requester_name)
        outgoing = app.workflow.composer.compose(
            "confirmation", to=[], subject="Re: Login broken", thread=Thread(), context=app.workflow.context(ticket)
        )
        parsed = message_from_bytes(outgoing.body, policy=policy.default)
        text, html = (parsed.get_body((kind,)) for kind in ("plain", "html"))
        assert text is not None and html is not None
        return str(text.get_content()), str(html.get_content())

    def test_hours_deadline_and_domains_come_from_the_configuration(self, make_app: Callable[..., App]) -> None:
        app = make_app(
            {
                "business_hours": {"timezone": "Europe/Berlin", "open_days": ["mon", "tue", "wed", "thu"],
                                   "opens": "09:00", "closes": "17:00"},
                "sla": {"introduction_within": "2h", "auto_assign_after": "1h"},
                "support": {"sender_domains": ["herok12.com"]},
                "outbound": {"dkim": {"domain": "schoolmint.net", "selector": "s", "private_key_file": "/nonexistent"}},
            }
        )
        text, html = self.confirmation(app)
        for shown in (text, html):
            assert "2 business hours" in shown and "Monday to Thursday, 9:00 AM to 5:00 PM Berlin time" in shown
            assert "@schoolmint.com, @schoolmint.net and @herok12.com" in shown
            assert "Eastern" not in shown and "4 business hours" not in shown
        assert "<table" not in html and 'style="' in html

    def test_paragraphs_are_not_broken_mid_sentence(self, make_app: Callable[..., App]) -> None:
        """The plain part leaves wrapping to the reader's client: each paragraph is one line (quoted-printable
        carries long lines; RFC 2045 6.7)."""
        text, _ = self.confirmation(make_app())
        [promise] = [line for line in text.splitlines() if line.startswith("Within ")]
        assert promise.endswith("except holidays.") and len(promise) > 108

    def test_greeting_prefers_the_registered_name(self, make_app: Callable[..., App]) -> None:
        """Ana is registered as "Ana Diaz" (conftest); her mail client sent no name, or another one."""
        app = make_app()
        ticket = Ticket(id=3, subject="x", requester="ana@lincoln.example", requester_name="ana.d")
        assert app.db.call(lambda s: app.workflow.context(ticket, s))["requester_name"] == "Ana Diaz"
        stranger = Ticket(id=4, subject="x", requester="eve@elsewhere.example", requester_name="Eve")
        assert app.db.call(lambda s: app.workflow.context(stranger, s))["requester_name"] == "Eve"
