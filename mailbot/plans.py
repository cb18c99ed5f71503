"""The support plans: which product may hold which plan, and what each plan allows.

Pure rules from the vendor's "Hero Support Programs" (DOMAIN.md, "Plans and named contacts"): `OFFERS`
says which plans each product may hold, `ALLOWANCES` what each plan gives. The checks return or raise
`RefusedError` whose text names the rule, so the CLI can print it as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from types import MappingProxyType

from mailbot.errors import RefusedError


class Product(StrEnum):
    """A Hero product; the values are the CLI spellings."""

    READY = "ready"
    RISE = "rise"
    FULL = "full"
    DISTRICT = "district"

    @property
    def label(self) -> str:
        """The product's name in the vendor's words."""
        return _PRODUCT_TITLES[self]


class Plan(StrEnum):
    """A support plan; the values are the CLI spellings."""

    STANDARD = "standard"
    SILVER = "silver"
    GOLD = "gold"
    DISTRICT_SILVER = "district-silver"
    DISTRICT_GOLD = "district-gold"

    @property
    def label(self) -> str:
        """The plan's name in the vendor's words."""
        return _PLAN_TITLES[self]


_PRODUCT_TITLES = {
    Product.READY: "Hero Ready",
    Product.RISE: "Hero Rise",
    Product.FULL: "Full Hero",
    Product.DISTRICT: "Hero District or CMO",
}

_PLAN_TITLES = {
    Plan.STANDARD: "Standard",
    Plan.SILVER: "Silver",
    Plan.GOLD: "Gold",
    Plan.DISTRICT_SILVER: "District Silver",
    Plan.DISTRICT_GOLD: "District Gold",
}


@dataclass(frozen=True)
class Offer:
    """The plans a product can hold: the one included with it and the paid upgrade."""

    included: Plan
    upgrade: Plan


@dataclass(frozen=True)
class Allowance:
    """What a plan gives the customer. Only `email_contacts` and `school_contacts` gate email."""

    email_contacts: int  # organization-level (district-level) named contacts
    school_contacts: int  # named contacts per school, on top of the above
    chat: bool
    phone: bool
    consulting_hours: int  # per year; they do not carry over, and do not gate email


OFFERS: Mapping[Product, Offer] = MappingProxyType(
    {
        # "Hero Ready and Rise customers may upgrade to the Silver support level" ($600/yr);
        # Standard with that upgrade behaves as Silver, so it is recorded as plan silver.
        Product.READY: Offer(included=Plan.STANDARD, upgrade=Plan.SILVER),
        Product.RISE: Offer(included=Plan.STANDARD, upgrade=Plan.SILVER),
        Product.FULL: Offer(included=Plan.SILVER, upgrade=Plan.GOLD),
        Product.DISTRICT: Offer(included=Plan.DISTRICT_SILVER, upgrade=Plan.DISTRICT_GOLD),
    }
)

# fmt: off
ALLOWANCES: Mapping[Plan, Allowance] = MappingProxyType({
    #                     email contacts, per school, chat, phone, consulting hours
    Plan.STANDARD:        Allowance(2, 0, chat=False, phone=False, consulting_hours=0),
    Plan.SILVER:          Allowance(2, 0, chat=True,  phone=False, consulting_hours=4),
    Plan.GOLD:            Allowance(4, 0, chat=True,  phone=True,  consulting_hours=6),
    Plan.DISTRICT_SILVER: Allowance(8, 0, chat=True,  phone=True,  consulting_hours=4),
    # "School-level admin support (up to 2 contacts)" for each school of the district.
    Plan.DISTRICT_GOLD:   Allowance(8, 2, chat=True,  phone=True,  consulting_hours=8),
})
# fmt: on


@dataclass(frozen=True)
class OrgFacts:
    """An organization as the rules see it: its plan, the plan's validity (inclusive dates) and status.

    A missing `valid_from` or `valid_until` leaves that side of the period open.
    """

    name: str
    product: Product
    plan: Plan
    valid_from: date | None
    valid_until: date | None
    suspended: bool = False


def products_for(plan: Plan) -> tuple[Product, ...]:
    """The products that may hold `plan`, in table order."""
    return tuple(p for p, offer in OFFERS.items() if plan in (offer.included, offer.upgrade))


def check_combination(product: Product, plan: Plan) -> None:
    """Refuse a product/plan pair the plan table does not offer (e.g. gold for ready)."""
    if product in products_for(plan):
        return
    offer = OFFERS[product]
    raise RefusedError(
        f"plan {plan} is only for {_name_products(products_for(plan))}; "
        f"product {product} ({product.label}) has plan {offer.included} (included) or {offer.upgrade} (upgrade)"
    )


def contact_limit(plan: Plan) -> int:
    """How many organization-level (for districts: district-level) named contacts `plan` allows."""
    return ALLOWANCES[plan].email_contacts


def school_contact_limit(plan: Plan) -> int:
    """How many named contacts each school may have under `plan`: 2 on district-gold, 0 otherwise."""
    return ALLOWANCES[plan].school_contacts


def check_contact_addition(
    org: OrgFacts, school: str | None, current_org_level: int, current_in_school: int
) -> None:
    """Refuse one more named contact for `org` (at `school`, or organization-level when None) past the limit.

    `current_org_level` and `current_in_school` count the contacts already there; the latter is ignored
    for an organization-level contact.
    """
    plan = org.plan
    if school is None:
        limit = contact_limit(plan)
        if current_org_level >= limit:
            raise RefusedError(
                f"organization {org.name} has {current_org_level} named contacts; "
                f"plan {plan} ({plan.label}) allows {limit}"
            )
        return
    limit = school_contact_limit(plan)
    if limit == 0:
        raise RefusedError(
            f"school contacts are only for plan {Plan.DISTRICT_GOLD} ({Plan.DISTRICT_GOLD.label}); "
            f"organization {org.name} has plan {plan} ({plan.label})"
        )
    if current_in_school >= limit:
        raise RefusedError(
            f"school {school} of organization {org.name} has {current_in_school} named contacts; "
            f"plan {plan} ({plan.label}) allows {limit} per school"
        )


def check_plan_change(
    org: OrgFacts,
    new_product: Product,
    new_plan: Plan,
    org_level_count: int,
    per_school_counts: Mapping[str, int],
) -> None:
    """Refuse moving `org` to a product/plan the table does not offer, or whose limits its contacts exceed.

    The message says how many contacts must be removed, and where, before the change can be made.
    """
    check_combination(new_product, new_plan)
    problems = []
    excess = org_level_count - contact_limit(new_plan)
    if excess > 0:
        problems.append(f"remove {excess} of its {org_level_count} organization-level contacts")
    school_limit = school_contact_limit(new_plan)
    for school, count in sorted(per_school_counts.items()):
        if count > school_limit:
            problems.append(f"remove {count - school_limit} of the {count} contacts of school {school}")
    if problems:
        raise RefusedError(
            f"organization {org.name} cannot move to plan {new_plan} ({new_plan.label}), which allows "
            f"{contact_limit(new_plan)} organization-level and {school_limit} per-school contacts: "
            + "; ".join(problems)
        )


def _name_products(products: tuple[Product, ...]) -> str:
    names = [f"{p} ({p.label})" for p in products]
    if len(names) == 1:
        return f"product {names[0]}"
    return f"products {', '.join(names[:-1])} and {names[-1]}"
