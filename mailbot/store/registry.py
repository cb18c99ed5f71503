"""The customer registry: organizations and their plans, schools, named contacts, and the support team.

Every change is checked against the plan table (mailbot.plans) before it is made; a refusal is a
`RefusedError` naming the rule, raised before anything is written, and the caller's transaction rolls back.
Contacts and specialists are stored under their normalized address (mailbot.addresses), the key a sender is
matched by, so `Ana+x@School.org` finds the contact `ana@school.org`.

Organizations are locked (SELECT ... FOR UPDATE on PostgreSQL; SQLite has one writer at a time anyway)
while their contacts or plan change, so two concurrent `contact add` cannot both take the last seat.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any, Literal

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, aliased

from mailbot.addresses import is_valid_address, normalize
from mailbot.entitlement import ContactFacts
from mailbot.errors import RefusedError
from mailbot.plans import (
    OrgFacts,
    Plan,
    Product,
    check_combination,
    check_contact_addition,
    check_plan_change,
    contact_limit,
    school_contact_limit,
)
from mailbot.store import chunks
from mailbot.store.schema import Contact, Organization, School, Specialist

MAX_NAME = 200
MAX_ID = 2**31 - 1  # an INTEGER key; a bigger number is no id, and would overflow PostgreSQL's parameter


class Keep(Enum):
    """Marks an optional change that was not asked for (None means "clear it" for validity dates)."""

    KEEP = "keep"


KEEP = Keep.KEEP
DateChange = date | None | Literal[Keep.KEEP]


@dataclass(frozen=True)
class ContactRow:
    """One row of a contact import: the line it starts on, and its fields as written."""

    line: int
    email: str
    org: str
    name: str = ""
    school: str | None = None


class ImportRefused(RefusedError):
    """Rows of an import were refused, so none was applied; `problems` lists (line, reason)."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        super().__init__(f"{len(problems)} row(s) refused")
        self.problems = problems


@dataclass(frozen=True)
class SchoolSummary:
    name: str
    contacts: int


@dataclass(frozen=True)
class OrgSummary:
    """An organization as `org list` shows it, with its contact counts against its plan's limits."""

    id: int
    name: str
    product: str
    plan: str
    valid_from: date | None
    valid_until: date | None
    suspended: bool
    contacts: int
    contact_limit: int
    school_contact_limit: int
    schools: list[SchoolSummary]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "product": self.product,
            "plan": self.plan,
            "valid_from": _iso(self.valid_from),
            "valid_until": _iso(self.valid_until),
            "suspended": self.suspended,
            "contacts": self.contacts,
            "contact_limit": self.contact_limit,
            "school_contact_limit": self.school_contact_limit,
            "schools": [{"name": s.name, "contacts": s.contacts} for s in self.schools],
        }


@dataclass(frozen=True)
class ContactSummary:
    """A named contact as `contact list` shows it; `over_limit` after a downgrade forced past the plan."""

    address: str
    name: str
    organization: str
    school: str | None
    created_at: datetime
    over_limit: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "organization": self.organization,
            "school": self.school,
            "created_at": self.created_at.isoformat(),
            "over_limit": self.over_limit,
        }


# --- organizations -------------------------------------------------------------------------------------


def org_facts(org: Organization) -> OrgFacts:
    """The organization as the plan rules see it."""
    return OrgFacts(
        org.name, Product(org.product), Plan(org.plan), org.valid_from, org.valid_until, org.suspended
    )


def find_org(session: Session, ref: str, *, lock: bool = False) -> Organization:
    """The organization named exactly `ref`, or whose id it is (names are never numbers)."""
    ref = ref.strip()
    is_id = ref.isascii() and ref.isdigit()
    if is_id and int(ref) > MAX_ID:
        raise RefusedError(f"no organization {ref!r} (give its id or exact name; see `mailbot org list`)")
    statement = select(Organization).where(Organization.id == int(ref) if is_id else Organization.name == ref)
    org = session.scalars(statement.with_for_update() if lock else statement).one_or_none()
    if org is None:
        raise RefusedError(f"no organization {ref!r} (give its id or exact name; see `mailbot org list`)")
    return org


def add_org(
    session: Session,
    name: str,
    *,
    product: Product,
    plan: Plan,
    valid_from: date | None = None,
    valid_until: date | None = None,
    now: datetime,
) -> Organization:
    """A new organization on `plan`; refused for a combination the plan table does not offer."""
    name = _checked_name("organization", name)
    check_combination(product, plan)
    _check_period(valid_from, valid_until)
    taken = session.scalar(select(Organization.name).where(func.lower(Organization.name) == name.lower()))
    if taken is not None:
        raise RefusedError(f"an organization named {taken!r} already exists")
    org = Organization(
        name=name,
        product=product.value,
        plan=plan.value,
        valid_from=valid_from,
        valid_until=valid_until,
        suspended=False,
        created_at=now,
    )
    session.add(org)
    session.flush()
    return org


def update_org(
    session: Session,
    org: Organization,
    *,
    product: Product | None = None,
    plan: Plan | None = None,
    valid_from: DateChange = KEEP,
    valid_until: DateChange = KEEP,
    suspended: bool | None = None,
) -> Organization:
    """Change an organization's plan, product, validity or status; `org` should be locked (find_org).

    A plan or product change goes through plans.check_plan_change: a combination the table does not
    offer, or one whose limits the current contacts exceed, is refused until contacts are removed.
    """
    new_product = product or Product(org.product)
    new_plan = plan or Plan(org.plan)
    if (new_product.value, new_plan.value) != (org.product, org.plan):
        check_plan_change(
            org_facts(org),
            new_product,
            new_plan,
            _org_level_count(session, org.id),
            _school_counts(session, org.id),
        )
    new_from = org.valid_from if valid_from is KEEP else valid_from
    new_until = org.valid_until if valid_until is KEEP else valid_until
    _check_period(new_from, new_until)
    org.product, org.plan = new_product.value, new_plan.value
    org.valid_from, org.valid_until = new_from, new_until
    if suspended is not None:
        org.suspended = suspended
    return org


def org_summaries(session: Session) -> list[OrgSummary]:
    """Every organization, by id, with its contact counts."""
    orgs = session.scalars(select(Organization).order_by(Organization.id)).all()
    org_level = Counter(
        dict(
            session.execute(
                select(Contact.organization_id, func.count())
                .where(Contact.school_id.is_(None))
                .group_by(Contact.organization_id)
            ).all()
        )
    )
    per_school = Counter(
        dict(
            session.execute(
                select(Contact.school_id, func.count())
                .where(Contact.school_id.is_not(None))
                .group_by(Contact.school_id)
            ).all()
        )
    )
    schools = session.scalars(select(School).order_by(School.organization_id, School.name)).all()
    return [
        OrgSummary(
            id=org.id,
            name=org.name,
            product=org.product,
            plan=org.plan,
            valid_from=org.valid_from,
            valid_until=org.valid_until,
            suspended=org.suspended,
            contacts=org_level[org.id],
            contact_limit=contact_limit(Plan(org.plan)),
            school_contact_limit=school_contact_limit(Plan(org.plan)),
            schools=[SchoolSummary(s.name, per_school[s.id]) for s in schools if s.organization_id == org.id],
        )
        for org in orgs
    ]


def add_school(session: Session, org: Organization, name: str) -> School:
    """A school (site) of a district or CMO."""
    name = _checked_name("school", name)
    if org.product != Product.DISTRICT:
        product = Product(org.product)
        raise RefusedError(
            f"schools belong to product {Product.DISTRICT} ({Product.DISTRICT.label}); organization "
            f"{org.name} has product {product} ({product.label})"
        )
    if _school(session, org, name) is not None:
        raise RefusedError(f"organization {org.name} already has a school {name!r}")
    school = School(organization_id=org.id, name=name)
    session.add(school)
    session.flush()
    return school


# --- named contacts ------------------------------------------------------------------------------------


def add_contact(
    session: Session,
    address: str,
    *,
    org: Organization,
    name: str = "",
    school: str | None = None,
    now: datetime,
) -> Contact:
    """A named contact of `org` (at `school`, a name, or organization-level), within the plan's limits.

    `org` should be locked (find_org(..., lock=True)) so the count it is judged on cannot change under it.
    """
    key = _contact_key(address)
    name = _checked_text("contact name", name)
    existing = find_contact(session, key)
    if existing is not None:
        owner = session.get_one(Organization, existing.organization_id)
        raise RefusedError(f"{key} is already a named contact of {owner.name}")
    place = None
    if school is not None:
        place = _school(session, org, school)
        if place is None:
            raise RefusedError(
                f"organization {org.name} has no school {school!r} (add it with `mailbot school add`)"
            )
    in_school = _school_counts(session, org.id).get(place.name, 0) if place else 0
    check_contact_addition(org_facts(org), school, _org_level_count(session, org.id), in_school)
    contact = Contact(
        address=key,
        name=name,
        organization_id=org.id,
        school_id=place.id if place else None,
        bounces=0,
        bouncing=False,
        created_at=now,
    )
    session.add(contact)
    session.flush()
    return contact


def remove_contact(session: Session, address: str) -> Contact:
    """Remove a named contact (their tickets stay); refused when there is none by that address."""
    contact = find_contact(session, _contact_key(address))
    if contact is None:
        raise RefusedError(f"{address} is not a named contact")
    session.delete(contact)
    session.flush()
    return contact


def import_contacts(session: Session, rows: Sequence[ContactRow], now: datetime) -> int:
    """Add every row as a named contact, or none: ImportRefused lists each refused row with its reason.

    Rows are judged in order, each against the registry plus the rows before it, so a file that fills an
    organization past its limit is refused at the first row too many. The caller's transaction must roll
    back on ImportRefused (Database.call does): rows judged fine were already flushed.
    """
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    for row in rows:
        try:
            key = _contact_key(row.email)
            if key in first_line:
                raise RefusedError(f"{key} is the same contact as line {first_line[key]}")
            add_contact(
                session,
                key,
                org=find_org(session, row.org, lock=True),
                name=row.name,
                school=row.school,
                now=now,
            )
            first_line[key] = row.line
        except RefusedError as exc:
            problems.append((row.line, str(exc)))
    if problems:
        raise ImportRefused(problems)
    return len(rows)


@dataclass(frozen=True)
class ContactRecord:
    """A named contact as the intake needs it: the entitlement facts, its organization, whether it bounces."""

    facts: ContactFacts
    organization_id: int
    bouncing: bool
    name: str  # registered with `contact add --name`; "" when none


# Built once with bound parameters, and run on the session's connection for plain values: SQLAlchemy
# spends far longer building a statement and its cache key, and the ORM longer loading entities, than
# SQLite spends running it (740 µs built per call, 80 µs loading ORM entities; bench/RESULTS.md).
_CONTACT = select(Contact).where(Contact.address == bindparam("key"))
_CONTACT_NAME = select(Contact.name).where(Contact.address == bindparam("key"))
_EARLIER = aliased(Contact)
_RANK = (
    select(func.count())
    .select_from(_EARLIER)
    .where(
        _EARLIER.organization_id == Contact.organization_id,
        _EARLIER.school_id.is_not_distinct_from(Contact.school_id),
        _EARLIER.id < Contact.id,
    )
    .scalar_subquery()
)
_CONTACT_FACTS = (
    select(
        Contact.address,
        Contact.organization_id,
        Contact.bouncing,
        Contact.name,
        Organization.name,
        Organization.product,
        Organization.plan,
        Organization.valid_from,
        Organization.valid_until,
        Organization.suspended,
        School.name,
        _RANK,
    )
    .join(Organization, Contact.organization_id == Organization.id)
    .outerjoin(School, Contact.school_id == School.id)
    .where(Contact.address.in_(bindparam("keys", expanding=True)))
)


def sender_key(address: str) -> str | None:
    """The normalized address a sender is looked up by; None for what is no address (it is no contact)."""
    try:
        return normalize(address)
    except ValueError:
        return None


def find_contact(session: Session, address: str) -> Contact | None:
    """The named contact a sender's address belongs to (by the normalized address), if any."""
    key = sender_key(address)
    return session.scalars(_CONTACT, {"key": key}).one_or_none() if key is not None else None


def contact_name(session: Session, address: str) -> str | None:
    """The name registered for the named contact a sender's address belongs to (`contact add --name`);
    None when it is no contact or has no name. Read on the connection: see _CONTACT_FACTS."""
    key = sender_key(address)
    if key is None:
        return None
    return session.connection().scalar(_CONTACT_NAME, {"key": key}) or None


def contact_record(session: Session, address: str) -> ContactRecord | None:
    """The named contact a sender's address belongs to, with the facts the entitlement rules judge it by;
    None when it is no contact."""
    key = sender_key(address)
    return contact_records(session, [key]).get(key) if key is not None else None


def contact_records(session: Session, keys: Collection[str]) -> dict[str, ContactRecord]:
    """The named contacts among `keys` (normalized addresses: `sender_key`), with the facts the entitlement
    rules judge them by (organization, school, rank in its scope) and their registered names, read in one
    statement per CHUNK of them; an address that is no contact is left out.

    The rank is the number of contacts of the same scope (organization-level, or the same school)
    created before it: ids grow in creation order.
    """
    found = {}
    for some in chunks(keys):
        for row in session.connection().execute(_CONTACT_FACTS, {"keys": some}):
            contact, organization_id, bouncing, name, org_name, product, plan, valid_from, valid_until, suspended, \
                school, rank = row
            org = OrgFacts(org_name, Product(product), Plan(plan), valid_from, valid_until, suspended)
            facts = ContactFacts(contact, org, school, int(rank))
            found[contact] = ContactRecord(facts, organization_id, bool(bouncing), name or "")
    return found


def contact_summaries(session: Session, org: Organization | None = None) -> list[ContactSummary]:
    """Named contacts (of `org`, or all) by organization, scope and creation order."""
    statement = (
        select(Contact, Organization, School)
        .join(Organization, Contact.organization_id == Organization.id)
        .outerjoin(School, Contact.school_id == School.id)
        .order_by(Organization.id, Contact.school_id.is_not(None), School.name, Contact.id)
    )
    if org is not None:
        statement = statement.where(Contact.organization_id == org.id)
    seen: Counter[tuple[int, int | None]] = Counter()
    summaries = []
    for contact, owner, school in session.execute(statement).all():
        scope = (owner.id, contact.school_id)
        plan = Plan(owner.plan)
        limit = school_contact_limit(plan) if school else contact_limit(plan)
        summaries.append(
            ContactSummary(
                contact.address,
                contact.name,
                owner.name,
                school.name if school else None,
                contact.created_at,
                over_limit=seen[scope] >= limit,
            )
        )
        seen[scope] += 1
    return summaries


# --- specialists ---------------------------------------------------------------------------------------


def add_specialist(session: Session, address: str, name: str, now: datetime) -> Specialist:
    """A member of the support team; their introductions name them."""
    key = _contact_key(address)
    name = _checked_text("specialist name", name)
    if not name:
        raise RefusedError("a specialist needs a name (--name): the introduction names them")
    if find_specialist(session, key) is not None:
        raise RefusedError(f"{key} is already a specialist")
    specialist = Specialist(address=key, name=name, active=True, created_at=now)
    session.add(specialist)
    session.flush()
    return specialist


def find_specialist(session: Session, address: str) -> Specialist | None:
    """The specialist an address belongs to (by the normalized address), if any."""
    try:
        key = normalize(address)
    except ValueError:
        return None
    return session.scalars(select(Specialist).where(Specialist.address == key)).one_or_none()


def specialists(session: Session) -> list[Specialist]:
    return list(session.scalars(select(Specialist).order_by(Specialist.id)))


def set_specialist_active(session: Session, address: str, active: bool) -> Specialist:
    """Mark a specialist back (active) or away (skipped by automatic assignment)."""
    specialist = find_specialist(session, address)
    if specialist is None:
        raise RefusedError(f"{address} is not a specialist (see `mailbot specialist list`)")
    specialist.active = active
    return specialist


# --- helpers -------------------------------------------------------------------------------------------


def _org_level_count(session: Session, org_id: int) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Contact)
            .where(Contact.organization_id == org_id, Contact.school_id.is_(None))
        )
        or 0
    )


def _school_counts(session: Session, org_id: int) -> dict[str, int]:
    rows = session.execute(
        select(School.name, func.count())
        .join(Contact, Contact.school_id == School.id)
        .where(School.organization_id == org_id)
        .group_by(School.name)
    ).all()
    return {name: int(count) for name, count in rows}


def _school(session: Session, org: Organization, name: str) -> School | None:
    return session.scalars(
        select(School).where(School.organization_id == org.id, School.name == name.strip())
    ).one_or_none()


def _contact_key(address: str) -> str:
    address = address.strip()
    if not is_valid_address(address):
        raise RefusedError(
            f"{address!r} is not an email address fit for a contact (one local@domain, the domain with a dot)"
        )
    return normalize(address)


def _checked_text(what: str, text: str) -> str:
    text = text.strip()
    if len(text) > MAX_NAME:
        raise RefusedError(f"{what} is longer than {MAX_NAME} characters")
    if any(unicodedata.category(c)[0] == "C" for c in text):
        raise RefusedError(f"{what} {text!r} contains control characters")
    return text


def _checked_name(what: str, name: str) -> str:
    name = _checked_text(f"{what} name", name)
    if not name:
        raise RefusedError(f"{what} name must not be empty")
    if name.isdigit():
        # ORG arguments take an id or a name: a name that is a number would be read as an id.
        raise RefusedError(f"{what} name {name!r} is a number; give it a name with letters")
    return name


def _check_period(valid_from: date | None, valid_until: date | None) -> None:
    if valid_from is not None and valid_until is not None and valid_from > valid_until:
        raise RefusedError(f"the plan cannot start ({valid_from}) after it ends ({valid_until})")


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None
