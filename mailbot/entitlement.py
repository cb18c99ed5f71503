"""Who is entitled to email support: a sender's facts in, `Entitled` or `Held(reason)` out.

A message is entitled when its sender is authenticated (when the configuration requires it), is a named
contact of an organization that is not suspended, whose plan is valid today, the contact's scope is one
the plan has (school contacts only on district-gold), and the contact is within the plan's limit for
that scope. Anything else is held, never dropped: a `Held`, in the one vocabulary of held reasons
(mailbot.held), the code stored on the ticket with a sentence for the support team.

The checks run in a fixed order, and the first that fails is the reason:

1. authentication, so that a forged From learns nothing about who is a contact;
2. unknown sender;
3. organization suspended;
4. plan not started yet, then plan expired (both ends of the validity period are inclusive);
5. school contact under a plan without school contacts;
6. over the plan's limit: the contact's 0-based rank in its scope (organization-level, or its school)
   by creation order reaches the limit, as it can after a downgrade or an import that bypassed limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from mailbot.held import Held, HeldReason
from mailbot.plans import OrgFacts, Plan, contact_limit, school_contact_limit

__all__ = ["ENTITLED", "ContactFacts", "Entitled", "Held", "HeldReason", "OrgFacts", "decide"]

ENTITLED = "entitled"  # stored on a ticket whose sender was entitled (`Ticket.entitlement`; else the held reason)


@dataclass(frozen=True)
class ContactFacts:
    """A named contact: its address, organization, school (None for organization-level) and rank.

    `rank` is the 0-based position among the contacts of the same scope (organization-level, or that
    school) in creation order.
    """

    address: str
    org: OrgFacts
    school: str | None
    rank: int


@dataclass(frozen=True)
class Entitled:
    """The sender may open tickets: the message enters the normal flow."""

    contact: ContactFacts


def decide(
    *,
    contact: ContactFacts | None,
    authenticated: bool,
    auth_required: bool,
    today: date,
    auth_temperror: bool = False,
) -> Entitled | Held:
    """Whether a message from `contact` (None: the sender is no named contact) is entitled to support.

    `authenticated` is True when the From address passed a trusted DKIM or DMARC check; when it did not
    and `auth_temperror` is set, the check could not be made (an RFC 8601 "temperror", e.g. a DNS
    failure) and the message is held as such rather than as forged. `today` is the date in the business
    time zone.
    """
    if isinstance(today, datetime):
        raise TypeError("today must be a date in the business time zone, not a datetime")
    if auth_required and not authenticated:
        if auth_temperror:
            return Held(
                HeldReason.AUTH_TEMPORARY, "the sender could not be authenticated now (temporary error)"
            )
        return Held(HeldReason.NOT_AUTHENTICATED, "the From address passed no trusted DKIM or DMARC check")
    if contact is None:
        return Held(HeldReason.UNKNOWN_SENDER, "the sender is not a named contact of any organization")
    return _check_org(contact.org, today) or _check_contact(contact) or Entitled(contact)


def _check_org(org: OrgFacts, today: date) -> Held | None:
    if org.suspended:
        return Held(HeldReason.ORG_SUSPENDED, f"organization {org.name} is suspended")
    if org.valid_from is not None and today < org.valid_from:
        return Held(
            HeldReason.PLAN_NOT_STARTED, f"the {org.plan} plan of {org.name} starts on {org.valid_from}"
        )
    if org.valid_until is not None and today > org.valid_until:
        return Held(HeldReason.PLAN_EXPIRED, f"the {org.plan} plan of {org.name} ended on {org.valid_until}")
    return None


def _check_contact(contact: ContactFacts) -> Held | None:
    plan = contact.org.plan
    if contact.school is None:
        limit, scope = contact_limit(plan), "organization-level"
    else:
        limit, scope = school_contact_limit(plan), f"school {contact.school}"
        if limit == 0:
            return Held(
                HeldReason.SCHOOL_NOT_ALLOWED,
                f"{contact.address} is a contact of school {contact.school}, and only plan "
                f"{Plan.DISTRICT_GOLD} has school contacts; {contact.org.name} has plan {plan}",
            )
    if contact.rank >= limit:
        return Held(
            HeldReason.OVER_LIMIT,
            f"{contact.address} is {scope} contact number {contact.rank + 1} of {contact.org.name}, "
            f"and plan {plan} allows {limit}",
        )
    return None
