"""The plan table of DOMAIN.md ("Plans and named contacts"), row by row."""

from __future__ import annotations

import itertools

import pytest

from mailbot.errors import RefusedError
from mailbot.plans import (
    ALLOWANCES,
    OFFERS,
    Allowance,
    OrgFacts,
    Plan,
    Product,
    check_combination,
    check_contact_addition,
    check_plan_change,
    contact_limit,
    school_contact_limit,
)

# DOMAIN.md's table, written out independently of mailbot.plans: which plans each product may hold.
ALLOWED = {
    (Product.READY, Plan.STANDARD),
    (Product.READY, Plan.SILVER),
    (Product.RISE, Plan.STANDARD),
    (Product.RISE, Plan.SILVER),
    (Product.FULL, Plan.SILVER),
    (Product.FULL, Plan.GOLD),
    (Product.DISTRICT, Plan.DISTRICT_SILVER),
    (Product.DISTRICT, Plan.DISTRICT_GOLD),
}

# (org-level email contacts, per-school contacts, chat, phone, consulting hours a year)
ROWS = {
    Plan.STANDARD: (2, 0, False, False, 0),
    Plan.SILVER: (2, 0, True, False, 4),
    Plan.GOLD: (4, 0, True, True, 6),
    Plan.DISTRICT_SILVER: (8, 0, True, True, 4),
    Plan.DISTRICT_GOLD: (8, 2, True, True, 8),
}

PRODUCT_OF = {
    Plan.STANDARD: Product.READY,
    Plan.SILVER: Product.FULL,
    Plan.GOLD: Product.FULL,
    Plan.DISTRICT_SILVER: Product.DISTRICT,
    Plan.DISTRICT_GOLD: Product.DISTRICT,
}


def org(plan: Plan, product: Product | None = None) -> OrgFacts:
    return OrgFacts("Lincoln High", product or PRODUCT_OF[plan], plan, valid_from=None, valid_until=None)


class TestSpellings:
    def test_product_values_are_the_cli_spellings(self) -> None:
        """The CLI's --product choices are exactly these."""
        assert [p.value for p in Product] == ["ready", "rise", "full", "district"]

    def test_plan_values_are_the_cli_spellings(self) -> None:
        """The CLI's --plan choices are exactly these."""
        assert [p.value for p in Plan] == ["standard", "silver", "gold", "district-silver", "district-gold"]

    def test_enums_parse_from_cli_text(self) -> None:
        """A CLI string converts to the member."""
        assert Product("district") is Product.DISTRICT
        assert Plan("district-gold") is Plan.DISTRICT_GOLD

    def test_vendor_names(self) -> None:
        """Each member carries the vendor's name for messages."""
        assert Product.FULL.label == "Full Hero"
        assert Product.DISTRICT.label == "Hero District or CMO"
        assert Plan.DISTRICT_GOLD.label == "District Gold"


class TestCombination:
    @pytest.mark.parametrize(("product", "plan"), list(itertools.product(Product, Plan)))
    def test_matrix(self, product: Product, plan: Plan) -> None:
        """Every product x plan pair is allowed exactly when the table offers it."""
        if (product, plan) in ALLOWED:
            check_combination(product, plan)
        else:
            with pytest.raises(RefusedError, match=f"^plan {plan} is only for "):
                check_combination(product, plan)

    def test_included_and_upgrade_per_product(self) -> None:
        """The table's 'included plan' and 'upgrade to' columns."""
        assert {p: (o.included, o.upgrade) for p, o in OFFERS.items()} == {
            Product.READY: (Plan.STANDARD, Plan.SILVER),
            Product.RISE: (Plan.STANDARD, Plan.SILVER),
            Product.FULL: (Plan.SILVER, Plan.GOLD),
            Product.DISTRICT: (Plan.DISTRICT_SILVER, Plan.DISTRICT_GOLD),
        }

    def test_gold_for_ready_names_the_rule(self) -> None:
        """The refusal names the product gold is for, and what the product may have instead."""
        with pytest.raises(RefusedError) as refused:
            check_combination(Product.READY, Plan.GOLD)
        assert str(refused.value) == (
            "plan gold is only for product full (Full Hero); "
            "product ready (Hero Ready) has plan standard (included) or silver (upgrade)"
        )

    def test_district_gold_for_single_site(self) -> None:
        """District Gold for a single site is refused, naming the district product."""
        with pytest.raises(RefusedError, match=r"only for product district \(Hero District or CMO\)"):
            check_combination(Product.RISE, Plan.DISTRICT_GOLD)

    def test_standard_names_both_single_site_products(self) -> None:
        """A plan offered to several products lists them all."""
        with pytest.raises(
            RefusedError, match=r"only for products ready \(Hero Ready\) and rise \(Hero Rise\);"
        ):
            check_combination(Product.FULL, Plan.STANDARD)

    def test_silver_for_district(self) -> None:
        """Silver is single-site: a district has district-silver instead."""
        with pytest.raises(
            RefusedError, match="has plan district-silver .included. or district-gold .upgrade."
        ):
            check_combination(Product.DISTRICT, Plan.SILVER)


class TestAllowances:
    @pytest.mark.parametrize("plan", list(Plan))
    def test_row(self, plan: Plan) -> None:
        """Each plan's contacts, channels and consulting hours are the table's."""
        email, school, chat, phone, hours = ROWS[plan]
        assert ALLOWANCES[plan] == Allowance(email, school, chat, phone, hours)
        assert contact_limit(plan) == email
        assert school_contact_limit(plan) == school

    def test_allowances_are_read_only(self) -> None:
        """The table cannot be changed at run time."""
        with pytest.raises(TypeError):
            ALLOWANCES[Plan.STANDARD] = ALLOWANCES[Plan.GOLD]  # type: ignore[index]


class TestContactAddition:
    @pytest.mark.parametrize("plan", list(Plan))
    def test_org_level_up_to_the_limit(self, plan: Plan) -> None:
        """The last allowed contact is accepted; one more is refused with the limit named."""
        limit = ROWS[plan][0]
        check_contact_addition(org(plan), None, current_org_level=limit - 1, current_in_school=0)
        with pytest.raises(RefusedError, match=f"has {limit} named contacts; plan {plan} .* allows {limit}$"):
            check_contact_addition(org(plan), None, current_org_level=limit, current_in_school=0)
        with pytest.raises(RefusedError):
            check_contact_addition(org(plan), None, current_org_level=limit + 1, current_in_school=0)

    def test_standard_with_silver_upgrade_behaves_as_silver(self) -> None:
        """A Hero Ready school on Silver still has 2 contacts."""
        check_contact_addition(org(Plan.SILVER, Product.READY), None, 1, 0)
        with pytest.raises(RefusedError):
            check_contact_addition(org(Plan.SILVER, Product.READY), None, 2, 0)

    def test_school_contacts_on_district_gold(self) -> None:
        """District Gold takes 2 contacts per school, whatever the district-level count."""
        district = org(Plan.DISTRICT_GOLD)
        check_contact_addition(district, "Roosevelt Elementary", current_org_level=8, current_in_school=0)
        check_contact_addition(district, "Roosevelt Elementary", current_org_level=8, current_in_school=1)
        with pytest.raises(
            RefusedError, match="school Roosevelt Elementary .* has 2 named contacts; .* 2 per school"
        ):
            check_contact_addition(district, "Roosevelt Elementary", current_org_level=0, current_in_school=2)

    @pytest.mark.parametrize("plan", [p for p in Plan if p is not Plan.DISTRICT_GOLD])
    def test_school_contact_refused_on_other_plans(self, plan: Plan) -> None:
        """Only District Gold has school-level contacts, even when nobody is registered yet."""
        with pytest.raises(RefusedError, match=f"only for plan district-gold .*has plan {plan} "):
            check_contact_addition(
                org(plan), "Roosevelt Elementary", current_org_level=0, current_in_school=0
            )


class TestPlanChange:
    def test_downgrade_with_too_many_contacts(self) -> None:
        """Gold to Silver with 4 contacts: 2 must go first, and the message says so."""
        with pytest.raises(RefusedError) as refused:
            check_plan_change(
                org(Plan.GOLD), Product.FULL, Plan.SILVER, org_level_count=4, per_school_counts={}
            )
        assert str(refused.value) == (
            "organization Lincoln High cannot move to plan silver (Silver), which allows 2 organization-level "
            "and 0 per-school contacts: remove 2 of its 4 organization-level contacts"
        )

    def test_downgrade_that_fits(self) -> None:
        """Gold to Silver with 2 contacts is fine."""
        check_plan_change(org(Plan.GOLD), Product.FULL, Plan.SILVER, org_level_count=2, per_school_counts={})

    def test_upgrade(self) -> None:
        """An upgrade never leaves too many contacts."""
        check_plan_change(org(Plan.STANDARD), Product.READY, Plan.SILVER, 2, {})
        check_plan_change(org(Plan.SILVER), Product.FULL, Plan.GOLD, 2, {})
        check_plan_change(org(Plan.DISTRICT_SILVER), Product.DISTRICT, Plan.DISTRICT_GOLD, 8, {})

    def test_district_gold_to_silver_drops_school_contacts(self) -> None:
        """District Silver has no school contacts: every one must be removed, per school."""
        with pytest.raises(RefusedError) as refused:
            check_plan_change(
                org(Plan.DISTRICT_GOLD),
                Product.DISTRICT,
                Plan.DISTRICT_SILVER,
                org_level_count=8,
                per_school_counts={"Washington Middle": 1, "Adams High": 2, "Empty School": 0},
            )
        message = str(refused.value)
        assert message.endswith(
            "remove 2 of the 2 contacts of school Adams High; remove 1 of the 1 contacts of school Washington Middle"
        )
        assert "Empty School" not in message
        assert "organization-level contacts" not in message.split(":", 1)[1]

    def test_school_over_limit_after_import(self) -> None:
        """A school holding 3 contacts (an import bypassed the limit) must lose 1 even on District Gold."""
        with pytest.raises(RefusedError, match="remove 1 of the 3 contacts of school Adams High$"):
            check_plan_change(
                org(Plan.DISTRICT_GOLD), Product.DISTRICT, Plan.DISTRICT_GOLD, 8, {"Adams High": 3}
            )

    def test_every_problem_is_named(self) -> None:
        """Org-level and school excess are reported together, so one edit round fixes both."""
        with pytest.raises(
            RefusedError, match="remove 1 of its 9 organization-level contacts; remove 1 of the 3"
        ):
            check_plan_change(
                org(Plan.DISTRICT_GOLD), Product.DISTRICT, Plan.DISTRICT_GOLD, 9, {"Adams High": 3}
            )

    def test_change_to_a_combination_the_table_refuses(self) -> None:
        """The new product/plan pair is checked first."""
        with pytest.raises(RefusedError, match="^plan gold is only for product full"):
            check_plan_change(org(Plan.SILVER, Product.READY), Product.READY, Plan.GOLD, 0, {})

    def test_product_change(self) -> None:
        """Moving from Hero Ready to Full Hero with its included plan is allowed."""
        check_plan_change(org(Plan.STANDARD), Product.FULL, Plan.SILVER, 2, {})
