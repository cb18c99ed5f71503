"""The SLA verdicts: what is due, what is breached, what is at risk. Pure rules on values, time as a parameter."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mailbot.sla import (
    Delivery,
    Finding,
    Promise,
    assess,
    column,
    describe,
    needs_assignment,
    next_check,
)

pytestmark = pytest.mark.calendar  # run again under pinned wall clocks (Makefile: test-calendar)

ET = ZoneInfo("America/New_York")
MARGIN = timedelta(minutes=15)
OPENED = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)  # Tuesday 10:00 Eastern


def at(hour: int, minute: int = 0) -> datetime:
    """Tuesday 2026-12-01 at hour:minute Eastern (EST, UTC-5)."""
    return datetime(2026, 12, 1, hour, minute, tzinfo=ET).astimezone(UTC)


# A ticket received Tuesday 10:00: confirmation by 11:00, assignment at 13:00, introduction by 14:00.
FRESH = Promise(
    status="new",
    started_at=OPENED,
    confirmation_due_at=at(11),
    confirmation_sent_at=None,
    assign_due_at=at(13),
    introduction_due_at=at(14),
    introduction_sent_at=None,
    assigned=False,
    confirmation=Delivery("pending", None),
)
CONFIRMED = replace(FRESH, confirmation_sent_at=at(10), confirmation=Delivery("sent", None))
FAILING = Delivery("pending", "relay unreachable: Connection refused")


def verdict(promise: Promise, now: datetime, active: int = 2) -> list[Finding]:
    return assess(promise, now, active_specialists=active, margin=MARGIN, zone=ET)


class TestOnTrack:
    def test_fresh_ticket_has_no_findings(self) -> None:
        assert verdict(FRESH, at(10)) == []
        assert describe(verdict(FRESH, at(10))) is None

    def test_kept_promise_has_no_findings_ever(self) -> None:
        done = replace(
            CONFIRMED, assigned=True, introduction_sent_at=at(13), introduction=Delivery("sent", None)
        )
        assert verdict(done, at(10) + timedelta(days=30)) == []

    def test_sent_at_the_deadline_instant_is_in_time(self) -> None:
        promise = replace(FRESH, confirmation_sent_at=at(11))
        assert verdict(promise, at(12)) == []

    def test_held_ticket_has_no_clock(self) -> None:
        """A held ticket's promise starts when it is released: nothing is due, nothing is late."""
        held = Promise("held", None, None, None, None, None, None, assigned=False)
        assert verdict(held, at(23), active=0) == []
        assert not needs_assignment(held, at(23))
        assert next_check(held, at(10), MARGIN) is None

    def test_resolved_ticket_owes_nothing(self) -> None:
        resolved = replace(FRESH, status="resolved")
        assert verdict(resolved, at(17), active=0) == []
        assert not needs_assignment(resolved, at(17))


class TestBreached:
    def test_confirmation_not_sent_by_its_deadline(self) -> None:
        [finding] = verdict(FRESH, at(11))
        assert finding == Finding("confirmation", True, "late (due 2026-12-01 11:00 -05:00)")
        assert str(finding) == "BREACHED: confirmation late (due 2026-12-01 11:00 -05:00)"

    def test_confirmation_sent_late_stays_breached_with_the_same_text(self) -> None:
        """The text does not change when the late message finally goes out: recorded and reported once."""
        before = describe(verdict(FRESH, at(11, 30)))
        after = describe(verdict(replace(FRESH, confirmation_sent_at=at(12)), at(12)))
        assert before == after == "BREACHED: confirmation late (due 2026-12-01 11:00 -05:00)"

    def test_introduction_not_sent_by_its_deadline(self) -> None:
        promise = replace(CONFIRMED, assigned=True, introduction=FAILING)
        assert [str(f) for f in verdict(promise, at(14))] == [
            "BREACHED: introduction late (due 2026-12-01 14:00 -05:00)"
        ]

    def test_both_late_are_both_described(self) -> None:
        text = describe(verdict(FRESH, at(15), active=0))
        assert text == (
            "BREACHED: confirmation late (due 2026-12-01 11:00 -05:00); "
            "BREACHED: introduction late (due 2026-12-01 14:00 -05:00)"
        )


class TestAtRisk:
    def test_nobody_active_when_assignment_is_due(self) -> None:
        """Reported at the assignment instant, an hour before the deadline passes, not after."""
        assert verdict(CONFIRMED, at(12, 59), active=0) == []
        [finding] = verdict(CONFIRMED, at(13), active=0)
        assert (
            str(finding) == "AT RISK: introduction due 2026-12-01 14:00 -05:00: no active specialist to assign"
        )

    def test_nobody_active_reported_within_the_margin_when_assignment_is_at_the_deadline(self) -> None:
        late_assign = replace(CONFIRMED, assign_due_at=at(14))
        assert verdict(late_assign, at(13, 44), active=0) == []
        assert not verdict(late_assign, at(13, 45), active=0)[0].breached

    def test_an_active_specialist_means_no_risk(self) -> None:
        assert verdict(CONFIRMED, at(13, 30), active=1) == []

    def test_assigned_ticket_does_not_need_an_active_specialist(self) -> None:
        assigned = replace(CONFIRMED, assigned=True, introduction=Delivery("pending", None))
        assert verdict(assigned, at(13, 30), active=0) == []

    def test_failing_relay_is_a_risk_only_within_the_margin(self) -> None:
        promise = replace(FRESH, confirmation=FAILING)
        assert verdict(promise, at(10, 44)) == []
        [finding] = verdict(promise, at(10, 45))
        assert str(finding) == "AT RISK: confirmation due 2026-12-01 11:00 -05:00: the relay keeps failing"

    def test_a_risk_becomes_a_breach_at_the_deadline(self) -> None:
        promise = replace(FRESH, confirmation=FAILING)
        [finding] = verdict(promise, at(11))
        assert finding.breached

    def test_refused_for_good_is_a_risk_at_once(self) -> None:
        promise = replace(FRESH, confirmation=Delivery("failed", "relay answered 554 rejected"))
        [finding] = verdict(promise, at(10, 1))
        assert (
            str(finding) == "AT RISK: confirmation due 2026-12-01 11:00 -05:00: the relay refused it for good"
        )

    def test_risk_is_over_once_sent(self) -> None:
        promise = replace(FRESH, confirmation=FAILING)
        assert verdict(promise, at(10, 50))
        assert verdict(replace(promise, confirmation_sent_at=at(10, 55)), at(10, 55)) == []


class TestDue:
    @pytest.mark.parametrize(("now", "due"), [(at(12, 59), False), (at(13), True), (at(16), True)])
    def test_assignment_due_at_its_instant(self, now: datetime, due: bool) -> None:
        assert needs_assignment(FRESH, now) is due

    def test_claimed_ticket_is_not_assigned_again(self) -> None:
        assert not needs_assignment(replace(FRESH, assigned=True), at(16))

    def test_next_check_is_the_next_instant_a_verdict_can_change(self) -> None:
        assert next_check(FRESH, at(10), MARGIN) == at(10, 45)  # the confirmation's margin
        assert next_check(CONFIRMED, at(10), MARGIN) == at(13)  # the automatic assignment
        assigned = replace(CONFIRMED, assigned=True)
        assert next_check(assigned, at(13), MARGIN) == at(13, 45)
        assert next_check(assigned, at(13, 45), MARGIN) == at(14)
        done = replace(assigned, introduction_sent_at=at(13))
        assert next_check(done, at(13), MARGIN) is None


class TestColumn:
    def test_due_shows_the_introduction_deadline_with_its_offset(self) -> None:
        assert column(FRESH, None, ET) == "due 2026-12-01 14:00 -05:00"

    def test_kept_promise_is_ok(self) -> None:
        assert column(replace(CONFIRMED, introduction_sent_at=at(13)), None, ET) == "ok"

    def test_recorded_finding_is_shown(self) -> None:
        text = "BREACHED: introduction late (due 2026-12-01 14:00 -05:00)"
        assert column(FRESH, text, ET) == text

    def test_held_has_no_clock(self) -> None:
        assert column(Promise("held", None, None, None, None, None, None, assigned=False), None, ET) == "-"
