"""Who is entitled: every held reason, and which one wins when several apply."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime

import pytest

from mailbot.entitlement import ContactFacts, Entitled, Held, HeldReason, OrgFacts, decide
from mailbot.plans import Plan, Product

TODAY = date(2026, 11, 27)

GOLD = OrgFacts(
    "Lincoln High", Product.FULL, Plan.GOLD, valid_from=date(2026, 8, 1), valid_until=date(2027, 7, 31)
)
DISTRICT_GOLD = OrgFacts(
    "Springfield USD", Product.DISTRICT, Plan.DISTRICT_GOLD, date(2026, 7, 1), date(2027, 6, 30)
)


def contact(org: OrgFacts = GOLD, school: str | None = None, rank: int = 0) -> ContactFacts:
    return ContactFacts("ana@school.org", org, school, rank)


def entitle(c: ContactFacts | None, *, authenticated: bool = True, today: date = TODAY) -> Entitled | Held:
    return decide(contact=c, authenticated=authenticated, auth_required=True, today=today)


def reason(outcome: Entitled | Held) -> HeldReason | None:
    return outcome.reason if isinstance(outcome, Held) else None


class TestEntitled:
    def test_named_contact_of_a_valid_plan(self) -> None:
        """An authenticated contact within limits of a current plan is entitled, and the contact comes back."""
        c = contact()
        assert entitle(c) == Entitled(c)

    def test_open_ended_plan(self) -> None:
        """No recorded start or end leaves the plan valid."""
        c = contact(replace(GOLD, valid_from=None, valid_until=None))
        assert entitle(c, today=date(2099, 1, 1)) == Entitled(c)

    def test_authentication_not_required(self) -> None:
        """With require_sender_auth off, an unauthenticated contact is entitled."""
        c = contact()
        assert decide(contact=c, authenticated=False, auth_required=False, today=TODAY) == Entitled(c)

    def test_school_contact_on_district_gold(self) -> None:
        """District Gold's school contacts are entitled up to 2 per school."""
        assert isinstance(entitle(contact(DISTRICT_GOLD, "Adams High", rank=1)), Entitled)


class TestHeldReasons:
    def test_reason_codes(self) -> None:
        """The stored codes are these strings: entitlement's, and (one vocabulary, mailbot.held) the intake's
        and threading's."""
        assert {r.value for r in HeldReason} == {
            "no-sender-address",
            "automatic",
            "not-a-participant",
            "forged-reply-token",
            "no-specialist-token",
            "unknown-sender",
            "plan-expired",
            "plan-not-started",
            "over-plan-limit",
            "not-authenticated",
            "auth-temporarily-unavailable",
            "organization-suspended",
            "school-contact-not-allowed",
        }

    def test_not_authenticated(self) -> None:
        """A From that passed no trusted check is held, and the detail says nothing about contacts."""
        outcome = entitle(contact(), authenticated=False)
        assert reason(outcome) is HeldReason.NOT_AUTHENTICATED
        assert isinstance(outcome, Held) and "Lincoln" not in outcome.detail and "ana" not in outcome.detail

    def test_auth_temporarily_unavailable(self) -> None:
        """A check that could not be made is held as temporary, not as forged."""
        outcome = decide(
            contact=contact(), authenticated=False, auth_required=True, today=TODAY, auth_temperror=True
        )
        assert reason(outcome) is HeldReason.AUTH_TEMPORARY

    def test_temperror_ignored_once_authenticated(self) -> None:
        """One passing check is enough, whatever else failed temporarily."""
        c = contact()
        assert decide(
            contact=c, authenticated=True, auth_required=True, today=TODAY, auth_temperror=True
        ) == Entitled(c)

    def test_temperror_ignored_when_auth_not_required(self) -> None:
        """Without required authentication a temporary failure changes nothing."""
        c = contact()
        outcome = decide(
            contact=c, authenticated=False, auth_required=False, today=TODAY, auth_temperror=True
        )
        assert outcome == Entitled(c)

    def test_unknown_sender(self) -> None:
        """A sender who is no named contact is held."""
        assert reason(entitle(None)) is HeldReason.UNKNOWN_SENDER

    def test_organization_suspended(self) -> None:
        """A suspended organization entitles nobody."""
        outcome = entitle(contact(replace(GOLD, suspended=True)))
        assert outcome == Held(HeldReason.ORG_SUSPENDED, "organization Lincoln High is suspended")

    def test_plan_not_started(self) -> None:
        """Before valid_from the plan entitles nobody; on valid_from it does."""
        assert reason(entitle(contact(), today=date(2026, 7, 31))) is HeldReason.PLAN_NOT_STARTED
        assert isinstance(entitle(contact(), today=date(2026, 8, 1)), Entitled)

    def test_plan_expired_valid_until_inclusive(self) -> None:
        """The last day of the plan is still covered; the next day is not."""
        assert isinstance(entitle(contact(), today=date(2027, 7, 31)), Entitled)
        outcome = entitle(contact(), today=date(2027, 8, 1))
        assert outcome == Held(HeldReason.PLAN_EXPIRED, "the gold plan of Lincoln High ended on 2027-07-31")

    @pytest.mark.parametrize("plan", [Plan.STANDARD, Plan.SILVER, Plan.GOLD, Plan.DISTRICT_SILVER])
    def test_school_contact_not_allowed(self, plan: Plan) -> None:
        """A contact tied to a school under any plan but District Gold is held."""
        org = replace(GOLD, plan=plan)
        assert reason(entitle(contact(org, "Adams High"))) is HeldReason.SCHOOL_NOT_ALLOWED

    @pytest.mark.parametrize(
        ("plan", "limit"),
        [
            (Plan.STANDARD, 2),
            (Plan.SILVER, 2),
            (Plan.GOLD, 4),
            (Plan.DISTRICT_SILVER, 8),
            (Plan.DISTRICT_GOLD, 8),
        ],
    )
    def test_org_level_over_limit(self, plan: Plan, limit: int) -> None:
        """Rank limit-1 is the last entitled contact; rank limit is over the plan's limit."""
        org = replace(GOLD, plan=plan)
        assert isinstance(entitle(contact(org, rank=limit - 1)), Entitled)
        assert reason(entitle(contact(org, rank=limit))) is HeldReason.OVER_LIMIT

    def test_over_limit_detail(self) -> None:
        """The detail names the contact's position and the plan's limit."""
        outcome = entitle(contact(replace(GOLD, plan=Plan.SILVER), rank=3))
        assert outcome == Held(
            HeldReason.OVER_LIMIT,
            "ana@school.org is organization-level contact number 4 of Lincoln High, and plan silver allows 2",
        )

    def test_school_over_limit(self) -> None:
        """A school's third contact is over District Gold's 2 per school."""
        outcome = entitle(contact(DISTRICT_GOLD, "Adams High", rank=2))
        assert reason(outcome) is HeldReason.OVER_LIMIT
        assert isinstance(outcome, Held) and "school Adams High contact number 3" in outcome.detail


class TestPrecedence:
    """Each case breaks every rule from some point on; the first in order is the reason."""

    BROKEN = replace(
        GOLD, plan=Plan.SILVER, suspended=True, valid_from=date(2027, 1, 1), valid_until=date(2026, 1, 1)
    )

    def test_authentication_first_even_for_unknown_senders(self) -> None:
        """A forged From is told nothing about whether it is a contact."""
        assert reason(entitle(None, authenticated=False)) is HeldReason.NOT_AUTHENTICATED
        assert (
            reason(entitle(contact(self.BROKEN, "Adams High", 9), authenticated=False))
            is HeldReason.NOT_AUTHENTICATED
        )

    def test_suspended_before_plan_validity(self) -> None:
        """Suspension wins over a plan that has not started or has expired."""
        assert reason(entitle(contact(self.BROKEN, "Adams High", 9))) is HeldReason.ORG_SUSPENDED

    def test_not_started_before_expired(self) -> None:
        """A period that has not started is reported as such."""
        org = replace(self.BROKEN, suspended=False)
        assert reason(entitle(contact(org, "Adams High", 9))) is HeldReason.PLAN_NOT_STARTED

    def test_expired_before_school_and_limit(self) -> None:
        """An expired plan wins over the contact's own problems."""
        org = replace(self.BROKEN, suspended=False, valid_from=None)
        assert reason(entitle(contact(org, "Adams High", 9))) is HeldReason.PLAN_EXPIRED

    def test_school_before_limit(self) -> None:
        """A school contact on the wrong plan is reported as that, not as over the limit."""
        org = replace(self.BROKEN, suspended=False, valid_from=None, valid_until=None)
        assert reason(entitle(contact(org, "Adams High", 9))) is HeldReason.SCHOOL_NOT_ALLOWED

    def test_limit_last(self) -> None:
        """With everything else in order, the rank decides."""
        org = replace(self.BROKEN, suspended=False, valid_from=None, valid_until=None)
        assert reason(entitle(contact(org, None, 9))) is HeldReason.OVER_LIMIT


class TestInputs:
    def test_datetime_for_today_is_refused(self) -> None:
        """The caller converts to the business date; a datetime would compare wrongly near midnight."""
        with pytest.raises(TypeError, match="business time zone"):
            decide(
                contact=contact(), authenticated=True, auth_required=True, today=datetime(2026, 11, 27, 3, 0)
            )
