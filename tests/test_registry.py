"""The registry in the store: organizations, schools, contacts and specialists, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.entitlement import ContactFacts
from mailbot.errors import RefusedError
from mailbot.plans import Plan, Product
from mailbot.store import registry
from mailbot.store.registry import ContactRow, ImportRefused
from mailbot.store.schema import Contact, Organization

pytestmark = pytest.mark.calendar  # run again under pinned wall clocks (Makefile: test-calendar)


@pytest.fixture
def store(make_app: Callable[..., App], db_url: str) -> App:
    """An app on an empty registry (no test customer), on each database backend."""
    return make_app(db=db_url, customer=False)


def call(app: App, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return app.db.call(fn, *args, **kwargs)


def add_org(app: App, name: str, product: Product, plan: Plan, **kw: Any) -> int:
    return int(
        call(
            app, lambda s: registry.add_org(s, name, product=product, plan=plan, now=app.clock.now(), **kw).id
        )
    )


def add_contact(app: App, address: str, org: str, school: str | None = None) -> str:
    def add(session: Session) -> str:
        found = registry.find_org(session, org, lock=True)
        return registry.add_contact(session, address, org=found, school=school, now=app.clock.now()).address

    return str(call(app, add))


def count(app: App, model: type) -> int:
    return int(call(app, lambda s: s.scalar(select(func.count()).select_from(model))))


class TestOrganizations:
    def test_add_and_find_by_id_or_name(self, store: App) -> None:
        """ORG is an id or the exact name."""
        org_id = add_org(store, "Lincoln High", Product.FULL, Plan.GOLD, valid_until=date(2027, 7, 31))
        assert call(store, lambda s: registry.find_org(s, str(org_id)).name) == "Lincoln High"
        assert call(store, lambda s: registry.find_org(s, "Lincoln High").id) == org_id
        with pytest.raises(RefusedError, match="no organization 'lincoln high'"):
            call(store, registry.find_org, "lincoln high")
        with pytest.raises(RefusedError, match="no organization"):
            call(store, registry.find_org, "99999999999999999999")  # no integer overflow on PostgreSQL

    def test_refused_combination_writes_nothing(self, store: App) -> None:
        """Gold is for Full Hero only; the refusal names the rule and stores nothing."""
        with pytest.raises(RefusedError, match="plan gold is only for product full"):
            add_org(store, "Adams Elementary", Product.READY, Plan.GOLD)
        assert count(store, Organization) == 0

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("", "must not be empty"),
            ("  ", "must not be empty"),
            ("2024", "is a number"),
            ("a\x07b", "control"),
        ],
    )
    def test_bad_names(self, store: App, name: str, message: str) -> None:
        with pytest.raises(RefusedError, match=message):
            add_org(store, name, Product.FULL, Plan.SILVER)

    def test_duplicate_name_refused_whatever_the_case(self, store: App) -> None:
        add_org(store, "Lincoln High", Product.FULL, Plan.SILVER)
        with pytest.raises(RefusedError, match="already exists"):
            add_org(store, "LINCOLN HIGH", Product.FULL, Plan.SILVER)

    def test_period_must_not_end_before_it_starts(self, store: App) -> None:
        with pytest.raises(RefusedError, match="cannot start"):
            add_org(
                store,
                "Lincoln High",
                Product.FULL,
                Plan.SILVER,
                valid_from=date(2027, 1, 1),
                valid_until=date(2026, 12, 31),
            )

    def test_downgrade_refused_until_contacts_removed(self, store: App) -> None:
        """Gold with 4 contacts cannot become Silver (2) until 2 are removed; the refusal changes nothing."""
        add_org(store, "Lincoln High", Product.FULL, Plan.GOLD)
        for n in range(4):
            add_contact(store, f"c{n}@lincoln.example", "Lincoln High")

        def downgrade(session: Session) -> str:
            org = registry.find_org(session, "Lincoln High", lock=True)
            return registry.update_org(session, org, plan=Plan.SILVER).plan

        with pytest.raises(RefusedError, match="remove 2 of its 4 organization-level contacts"):
            call(store, downgrade)
        assert call(store, lambda s: registry.find_org(s, "Lincoln High").plan) == "gold"
        call(store, registry.remove_contact, "c3@lincoln.example")
        call(store, registry.remove_contact, "C2@Lincoln.Example")  # the same person, however written
        assert call(store, downgrade) == "silver"

    def test_validity_and_suspension_change(self, store: App) -> None:
        add_org(store, "Lincoln High", Product.FULL, Plan.SILVER, valid_until=date(2026, 12, 31))

        def change(session: Session) -> tuple[date | None, bool]:
            org = registry.find_org(session, "Lincoln High", lock=True)
            registry.update_org(session, org, valid_until=None, suspended=True)
            return org.valid_until, org.suspended

        assert call(store, change) == (None, True)


class TestSchoolsAndContacts:
    def test_school_only_for_districts(self, store: App) -> None:
        add_org(store, "Lincoln High", Product.FULL, Plan.GOLD)
        with pytest.raises(RefusedError, match="schools belong to product district"):
            call(store, lambda s: registry.add_school(s, registry.find_org(s, "Lincoln High"), "Annex"))

    def test_district_gold_school_contacts(self, store: App) -> None:
        """2 contacts per school on District Gold, on top of the district's 8; the third is refused."""
        add_org(store, "Springfield USD", Product.DISTRICT, Plan.DISTRICT_GOLD)
        call(store, lambda s: registry.add_school(s, registry.find_org(s, "Springfield USD"), "Adams High"))
        add_contact(store, "p1@adams.example", "Springfield USD", school="Adams High")
        add_contact(store, "p2@adams.example", "Springfield USD", school="Adams High")
        with pytest.raises(RefusedError, match="allows 2 per school"):
            add_contact(store, "p3@adams.example", "Springfield USD", school="Adams High")
        with pytest.raises(RefusedError, match="has no school 'Jefferson'"):
            add_contact(store, "p4@adams.example", "Springfield USD", school="Jefferson")
        [summary] = call(store, registry.org_summaries)
        assert (summary.contacts, [(s.name, s.contacts) for s in summary.schools]) == (0, [("Adams High", 2)])

    def test_contact_stored_normalized(self, store: App) -> None:
        """Case and plus tags do not make another person (mailbot.addresses)."""
        add_org(store, "Lincoln High", Product.FULL, Plan.GOLD)
        assert (
            add_contact(store, "Ana.Diaz+support@Lincoln.EXAMPLE", "Lincoln High")
            == "ana.diaz@lincoln.example"
        )
        with pytest.raises(RefusedError, match="already a named contact of Lincoln High"):
            add_contact(store, "ana.diaz@lincoln.example", "Lincoln High")
        found = call(store, lambda s: registry.find_contact(s, "ANA.DIAZ+x@lincoln.example").address)
        assert found == "ana.diaz@lincoln.example"

    @pytest.mark.parametrize("address", ["ana", "ana@school", "ana @school.org", "a@b@school.org", ""])
    def test_bad_address_refused(self, store: App, address: str) -> None:
        add_org(store, "Lincoln High", Product.FULL, Plan.GOLD)
        with pytest.raises(RefusedError, match="not an email address"):
            add_contact(store, address, "Lincoln High")

    def test_rank_counts_earlier_contacts_of_the_same_scope(self, store: App, clock: FrozenClock) -> None:
        """The entitlement facts: rank by creation order within organization-level or one school."""
        add_org(store, "Springfield USD", Product.DISTRICT, Plan.DISTRICT_GOLD)
        call(store, lambda s: registry.add_school(s, registry.find_org(s, "Springfield USD"), "Adams High"))
        add_contact(store, "d1@springfield.example", "Springfield USD")
        add_contact(store, "p1@adams.example", "Springfield USD", school="Adams High")
        add_contact(store, "d2@springfield.example", "Springfield USD")

        def facts(address: str) -> ContactFacts:
            found = call(store, lambda s: registry.contact_record(s, address))
            assert found is not None
            return found.facts

        assert (facts("d2@springfield.example").rank, facts("d2@springfield.example").school) == (1, None)
        assert (facts("p1@adams.example").rank, facts("p1@adams.example").school) == (0, "Adams High")
        assert facts("d1@springfield.example").org.plan is Plan.DISTRICT_GOLD

    def test_contact_list_flags_contacts_past_a_forced_limit(self, store: App) -> None:
        """After a downgrade forced in the database, the contacts past the new limit are flagged."""
        add_org(store, "Lincoln High", Product.FULL, Plan.GOLD)
        for n in range(3):
            add_contact(store, f"c{n}@lincoln.example", "Lincoln High")
        call(store, lambda s: s.execute(update(Organization).values(plan="silver")))
        flags = [(c.address, c.over_limit) for c in call(store, registry.contact_summaries)]
        assert flags == [
            ("c0@lincoln.example", False),
            ("c1@lincoln.example", False),
            ("c2@lincoln.example", True),
        ]


class TestImport:
    def test_all_or_nothing(self, store: App) -> None:
        """Every bad row is reported with its line, and no row is applied."""
        add_org(store, "Lincoln High", Product.FULL, Plan.SILVER)
        rows = [
            ContactRow(2, "a@lincoln.example", "Lincoln High"),
            ContactRow(3, "not-an-address", "Lincoln High"),
            ContactRow(4, "b@lincoln.example", "Nowhere"),
            ContactRow(5, "b@lincoln.example", "Lincoln High"),
            ContactRow(6, "A+x@Lincoln.example", "Lincoln High"),
            ContactRow(7, "c@lincoln.example", "Lincoln High"),
        ]
        with pytest.raises(ImportRefused) as refused:
            call(store, registry.import_contacts, rows, store.clock.now())
        lines = {line: reason for line, reason in refused.value.problems}
        assert sorted(lines) == [3, 4, 6, 7]
        assert "not an email address" in lines[3]
        assert "no organization 'Nowhere'" in lines[4]
        assert "same contact as line 2" in lines[6]
        assert "allows 2" in lines[7]  # a, b already fill Silver's 2 seats
        assert count(store, Contact) == 0

    def test_good_file_applied(self, store: App) -> None:
        add_org(store, "Lincoln High", Product.FULL, Plan.SILVER)
        rows = [
            ContactRow(2, "a@lincoln.example", "Lincoln High", "Ana"),
            ContactRow(3, "b@lincoln.example", "1"),
        ]
        assert call(store, registry.import_contacts, rows, store.clock.now()) == 2
        assert [c.name for c in call(store, registry.contact_summaries)] == ["Ana", ""]


class TestSpecialists:
    def test_add_away_back(self, store: App) -> None:
        call(store, registry.add_specialist, "Sam@SchoolMint.com", "Sam Lee", store.clock.now())
        assert (
            call(store, lambda s: registry.set_specialist_active(s, "sam@schoolmint.com", False).active)
            is False
        )
        assert [(sp.address, sp.active) for sp in call(store, registry.specialists)] == [
            ("sam@schoolmint.com", False)
        ]
        call(store, registry.set_specialist_active, "sam@schoolmint.com", True)
        assert call(store, lambda s: registry.specialists(s)[0].active) is True

    def test_refusals(self, store: App) -> None:
        call(store, registry.add_specialist, "sam@schoolmint.com", "Sam Lee", store.clock.now())
        with pytest.raises(RefusedError, match="already a specialist"):
            call(store, registry.add_specialist, "SAM@schoolmint.com", "Sam", store.clock.now())
        with pytest.raises(RefusedError, match="needs a name"):
            call(store, registry.add_specialist, "kim@schoolmint.com", " ", store.clock.now())
        with pytest.raises(RefusedError, match="not a specialist"):
            call(store, registry.set_specialist_active, "kim@schoolmint.com", False)
