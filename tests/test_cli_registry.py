"""org, school, contact, specialist and ticket release through `mailbot.cli.main`, as operators run them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailbot.cli import main
from tests.conftest import run_cli
from tests.mailers import message

CONFIG = """
[database]
url = "{db}"
[outbound]
transport = "maildir"
maildir = "{sent}"
[security]
require_sender_auth = false
"""

# DOMAIN.md's plan table, written out here: the product/plan pairs it offers, and each plan's limits
# (organization-level contacts, contacts per school).
ALLOWED = {
    ("ready", "standard"), ("ready", "silver"), ("rise", "standard"), ("rise", "silver"),
    ("full", "silver"), ("full", "gold"), ("district", "district-silver"), ("district", "district-gold"),
}  # fmt: skip
PRODUCTS = ("ready", "rise", "full", "district")
PLANS = ("standard", "silver", "gold", "district-silver", "district-gold")
LIMITS = [
    ("ready", "standard", 2), ("rise", "standard", 2), ("ready", "silver", 2), ("rise", "silver", 2),
    ("full", "silver", 2), ("full", "gold", 4), ("district", "district-silver", 8), ("district", "district-gold", 8),
]  # fmt: skip


@dataclass
class Result:
    code: int
    out: str
    err: str

    def refused(self, *phrases: str) -> bool:
        """Exit 1 with exactly one line on stderr that contains every phrase, and no traceback."""
        return (
            self.code == 1
            and self.err.count("\n") == 1
            and "Traceback" not in self.err
            and all(p in self.err for p in phrases)
        )


Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite database brought to the current schema by `mailbot db upgrade`, copied for each test."""
    folder = tmp_path_factory.mktemp("schema")
    config = folder / "config.toml"
    config.write_text(CONFIG.format(db=f"sqlite:///{folder / 'mailbot.db'}", sent=folder / "sent"))
    assert main(["--config", str(config), "db", "upgrade"]) == 0  # no clock: the schema only
    return folder / "mailbot.db"


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], upgraded: Path) -> Cli:
    """`mailbot --config <a test config> ARGS...` on a fresh upgraded database (tests/test_registry.py runs
    the store on PostgreSQL too)."""
    shutil.copy(upgraded, tmp_path / "mailbot.db")
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(db=f"sqlite:///{tmp_path / 'mailbot.db'}", sent=tmp_path / "sent"))

    def run(*argv: str) -> Result:
        return Result(*run_cli(capsys, "--config", str(config), *argv))

    return run


def as_json(result: Result) -> Any:
    assert result.code == 0, result.err
    return json.loads(result.out)


class TestPlanTable:
    @pytest.mark.parametrize("product", PRODUCTS)
    @pytest.mark.parametrize("plan", PLANS)
    def test_combination(self, cli: Cli, product: str, plan: str) -> None:
        """Each product/plan pair of the table is accepted; every other pair is refused in one line."""
        result = cli("org", "add", "Lincoln High", "--product", product, "--plan", plan)
        if (product, plan) in ALLOWED:
            assert result.code == 0 and "added organization 1 Lincoln High" in result.out
            assert [(o["product"], o["plan"]) for o in as_json(cli("org", "list", "--json"))] == [
                (product, plan)
            ]
        else:
            assert result.refused(f"plan {plan} is only for")
            assert as_json(cli("org", "list", "--json")) == []

    @pytest.mark.parametrize(("product", "plan", "limit"), LIMITS)
    def test_contact_limit_at_the_boundary(self, cli: Cli, product: str, plan: str, limit: int) -> None:
        """Exactly `limit` organization-level contacts fit; one more is refused and not stored."""
        assert cli("org", "add", "Lincoln High", "--product", product, "--plan", plan).code == 0
        for n in range(limit):
            assert cli("contact", "add", f"c{n}@lincoln.example", "--org", "Lincoln High").code == 0
        assert cli("contact", "add", "extra@lincoln.example", "--org", "1").refused(f"allows {limit}")
        assert len(as_json(cli("contact", "list", "--org", "Lincoln High", "--json"))) == limit
        assert as_json(cli("org", "list", "--json"))[0]["contacts"] == limit

    def test_district_gold_school_contacts(self, cli: Cli) -> None:
        """District Gold: 8 district contacts plus 2 for each school."""
        cli("org", "add", "Springfield USD", "--product", "district", "--plan", "district-gold")
        for school in ("Adams High", "Jefferson Middle"):
            assert cli("school", "add", "Springfield USD", school).code == 0
            for n in range(2):
                assert (
                    cli(
                        "contact",
                        "add",
                        f"{n}@{school[:5].lower()}.example",
                        "--org",
                        "1",
                        "--school",
                        school,
                    ).code
                    == 0
                )
            assert cli(
                "contact", "add", f"x@{school[:5].lower()}.example", "--org", "1", "--school", school
            ).refused("allows 2 per school")
        for n in range(8):
            assert cli("contact", "add", f"d{n}@springfield.example", "--org", "1").code == 0
        assert cli("contact", "add", "d8@springfield.example", "--org", "1").refused("allows 8")
        [org] = as_json(cli("org", "list", "--json"))
        assert org["contacts"] == 8 and [s["contacts"] for s in org["schools"]] == [2, 2]

    def test_school_contacts_only_on_district_gold(self, cli: Cli) -> None:
        """District Silver has schools but no school-level contacts."""
        cli("org", "add", "Springfield USD", "--product", "district", "--plan", "district-silver")
        cli("school", "add", "Springfield USD", "Adams High")
        result = cli("contact", "add", "p@adams.example", "--org", "1", "--school", "Adams High")
        assert result.refused("school contacts are only for plan district-gold")

    def test_schools_only_for_districts(self, cli: Cli) -> None:
        cli("org", "add", "Lincoln High", "--product", "full", "--plan", "gold")
        assert cli("school", "add", "Lincoln High", "Annex").refused("schools belong to product district")

    def test_downgrade_refused_until_contacts_removed(self, cli: Cli) -> None:
        """Gold (4) to Silver (2) with 4 contacts is refused, changing nothing, until 2 are removed."""
        cli("org", "add", "Lincoln High", "--product", "full", "--plan", "gold")
        for n in range(4):
            cli("contact", "add", f"c{n}@lincoln.example", "--org", "Lincoln High")
        assert cli("org", "set", "Lincoln High", "--plan", "silver").refused("remove 2 of its 4")
        assert as_json(cli("org", "list", "--json"))[0]["plan"] == "gold"
        assert cli("contact", "remove", "c0@lincoln.example").code == 0
        assert cli("org", "set", "Lincoln High", "--plan", "silver").refused("remove 1 of its 3")
        assert cli("contact", "remove", "C1@LINCOLN.example").code == 0
        result = cli("org", "set", "Lincoln High", "--plan", "silver")
        assert result.code == 0 and "plan silver" in result.out

    def test_district_downgrade_counts_school_contacts(self, cli: Cli) -> None:
        cli("org", "add", "Springfield USD", "--product", "district", "--plan", "district-gold")
        cli("school", "add", "Springfield USD", "Adams High")
        cli("contact", "add", "p@adams.example", "--org", "1", "--school", "Adams High")
        result = cli("org", "set", "1", "--plan", "district-silver")
        assert result.refused("remove 1 of the 1 contacts of school Adams High")
        cli("contact", "remove", "p@adams.example")
        assert cli("org", "set", "1", "--plan", "district-silver").code == 0

    def test_product_change_checked_against_the_table(self, cli: Cli) -> None:
        """Ready/Standard cannot become Full while keeping Standard; Full with Silver is fine."""
        cli("org", "add", "Lincoln High", "--product", "ready", "--plan", "standard")
        assert cli("org", "set", "1", "--product", "full").refused("plan standard is only for")
        assert cli("org", "set", "1", "--product", "full", "--plan", "silver").code == 0

    def test_validity_and_status(self, cli: Cli) -> None:
        cli(
            "org",
            "add",
            "Lincoln High",
            "--product",
            "full",
            "--plan",
            "gold",
            "--valid-from",
            "2026-08-01",
            "--valid-until",
            "2027-07-31",
        )
        assert cli("org", "set", "1", "--valid-until", "none", "--suspended").code == 0
        [org] = as_json(cli("org", "list", "--json"))
        assert (org["valid_from"], org["valid_until"], org["suspended"]) == ("2026-08-01", None, True)
        assert cli("org", "set", "1", "--active").code == 0
        assert as_json(cli("org", "list", "--json"))[0]["suspended"] is False
        assert "SUSPENDED" not in cli("org", "list").out


class TestRefusals:
    """Every kind of bad input: exit 1, one line naming what is wrong, no traceback, nothing changed."""

    @pytest.mark.parametrize(
        ("argv", "phrase"),
        [
            (
                ("org", "add", "X", "--product", "enterprise", "--plan", "gold"),
                "--product: 'enterprise' is not one of",
            ),
            (
                ("org", "add", "X", "--product", "full", "--plan", "platinum"),
                "--plan: 'platinum' is not one of",
            ),
            (
                ("org", "add", "X", "--product", "full", "--plan", "gold", "--valid-until", "2026-13-01"),
                "--valid-until: '2026-13-01' is not a date",
            ),
            (
                (
                    "org",
                    "add",
                    "X",
                    "--product",
                    "full",
                    "--plan",
                    "gold",
                    "--valid-from",
                    "2027-01-01",
                    "--valid-until",
                    "2026-01-01",
                ),
                "cannot start",
            ),
            (("org", "add", "  ", "--product", "full", "--plan", "gold"), "must not be empty"),
            (("org", "add", "42", "--product", "full", "--plan", "gold"), "is a number"),
            (("org", "set", "Nowhere", "--plan", "gold"), "no organization 'Nowhere'"),
            (("org", "set", "Lincoln High"), "nothing to change"),
            (("school", "add", "Nowhere", "Adams"), "no organization 'Nowhere'"),
            (("contact", "add", "ana", "--org", "Lincoln High"), "'ana' is not an email address"),
            (("contact", "add", "ana@localhost", "--org", "Lincoln High"), "not an email address"),
            (("contact", "add", "ana@x.example", "--org", "7"), "no organization '7'"),
            (
                ("contact", "add", "Ana+tag@Lincoln.example", "--org", "1"),
                "already a named contact of Lincoln High",
            ),
            (
                ("contact", "add", "ben@lincoln.example", "--org", "1", "--school", "Annex"),
                "has no school 'Annex'",
            ),
            (
                ("contact", "add", "ben@lincoln.example", "--org", "1", "--name", "Ben\x1b[31m"),
                "control characters",
            ),
            (("contact", "remove", "nobody@lincoln.example"), "not a named contact"),
            (("contact", "list", "--org", "Nowhere"), "no organization"),
            (("specialist", "add", "not-an-address", "--name", "Sam"), "not an email address"),
            (("specialist", "away", "nobody@schoolmint.com"), "not a specialist"),
            (("ticket", "release", "99"), "no ticket 99"),
        ],
    )
    def test_one_line(self, cli: Cli, argv: tuple[str, ...], phrase: str) -> None:
        cli("org", "add", "Lincoln High", "--product", "full", "--plan", "gold")
        cli("contact", "add", "ana@lincoln.example", "--org", "Lincoln High")
        before = (cli("org", "list", "--json").out, cli("contact", "list", "--json").out)
        result = cli(*argv)
        assert result.refused(phrase), result.err
        assert (cli("org", "list", "--json").out, cli("contact", "list", "--json").out) == before

    def test_duplicate_organization(self, cli: Cli) -> None:
        cli("org", "add", "Lincoln High", "--product", "full", "--plan", "gold")
        assert cli("org", "add", "lincoln high", "--product", "full", "--plan", "gold").refused(
            "already exists"
        )


class TestImport:
    def write(self, tmp_path: Path, text: str, name: str = "contacts.csv") -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def test_bad_rows_reported_by_line_and_nothing_applied(self, cli: Cli, tmp_path: Path) -> None:
        """Each refused row is named with its line number and reason; not one row is applied."""
        cli("org", "add", "Lincoln High", "--product", "full", "--plan", "silver")
        path = self.write(
            tmp_path,
            "email,org,name\n"
            "ana@lincoln.example,Lincoln High,Ana Diaz\n"  # line 2: fine
            "ben@,Lincoln High,Ben\n"  # line 3: bad address
            "\n"  # line 4: blank, skipped
            'cy@lincoln.example,Lincoln High,"Cy\nSmith"\n'  # lines 5-6: a name spanning lines
            "dee@lincoln.example,Lincoln High,Dee\n"  # line 7: fine, the second contact on Silver
            "eve@lincoln.example,Nowhere,Eve\n"  # line 8: no such organization
            "fay@lincoln.example,Lincoln High,Fay,extra\n"  # line 9: too many fields
            "gus@lincoln.example,Lincoln High,Gus\n",  # line 10: a third contact on Silver (2)
        )
        result = cli("contact", "import", path)
        assert result.code == 1 and "Traceback" not in result.err
        reported = result.err.splitlines()
        assert [line.split(":")[1] for line in reported[:-1]] == ["3", "5", "8", "9", "10"]
        assert "not an email address" in reported[0] and "control characters" in reported[1]
        assert "no organization 'Nowhere'" in reported[2] and "4 fields" in reported[3]
        assert "allows 2" in reported[4]
        assert reported[-1].endswith(
            "5 row(s) refused, nothing imported (an import applies all its rows or none)"
        )
        assert as_json(cli("contact", "list", "--json")) == []

    def test_good_file_imported(self, cli: Cli, tmp_path: Path) -> None:
        cli("org", "add", "Springfield USD", "--product", "district", "--plan", "district-gold")
        cli("school", "add", "Springfield USD", "Adams High")
        path = self.write(
            tmp_path,
            "\ufeffEmail,Org,School,Name\n"  # a spreadsheet's BOM and capitalised header
            "super@springfield.example,Springfield USD,,Pat Super\n"
            "principal@adams.example,1,Adams High,Ann Principal\n",
        )
        result = cli("contact", "import", path)
        assert result.code == 0 and "imported 2 contact(s)" in result.out
        contacts = as_json(cli("contact", "list", "--json"))
        assert [(c["address"], c["name"], c["school"]) for c in contacts] == [
            ("super@springfield.example", "Pat Super", None),
            ("principal@adams.example", "Ann Principal", "Adams High"),
        ]

    @pytest.mark.parametrize(
        ("text", "phrase"),
        [
            ("", "empty"),
            (
                "address,company\nana@lincoln.example,Lincoln High\n",
                "the header must name the columns email, org",
            ),
            ("email,org,email\n", "each once"),
            ("email,org\n", "no contact rows"),
        ],
    )
    def test_bad_file_refused_in_one_line(self, cli: Cli, tmp_path: Path, text: str, phrase: str) -> None:
        assert cli("contact", "import", self.write(tmp_path, text)).refused(phrase)

    def test_unreadable_files(self, cli: Cli, tmp_path: Path) -> None:
        assert cli("contact", "import", str(tmp_path / "none.csv")).refused("cannot read")
        latin = tmp_path / "latin.csv"
        latin.write_bytes("email,org,name\njose@lincoln.example,1,Jos\xe9\n".encode("latin-1"))
        assert cli("contact", "import", str(latin)).refused("not UTF-8")


class TestSpecialists:
    def test_add_list_away_back(self, cli: Cli) -> None:
        assert cli("specialist", "add", "Sam@SchoolMint.com", "--name", "Sam Lee").code == 0
        assert cli("specialist", "add", "sam@schoolmint.com", "--name", "Sam").refused("already a specialist")
        assert cli("specialist", "away", "sam@schoolmint.com").code == 0
        [row] = as_json(cli("specialist", "list", "--json"))
        assert (row["address"], row["name"], row["active"]) == ("sam@schoolmint.com", "Sam Lee", False)
        assert "away" in cli("specialist", "list").out
        assert cli("specialist", "back", "sam@schoolmint.com").code == 0
        assert as_json(cli("specialist", "list", "--json"))[0]["active"] is True


class TestRelease:
    def test_held_ticket_released_into_the_normal_flow(self, cli: Cli, tmp_path: Path) -> None:
        """An unknown sender's ticket is held with no confirmation (and no explanation: with
        require_sender_auth = false any From may be forged, so nobody is told why); release starts the clock
        and queues the confirmation."""
        path = tmp_path / "m.eml"
        path.write_bytes(message(sender="Zoe <zoe@elsewhere.example>", message_id="<r@elsewhere.example>"))
        assert json.loads(cli("ingest", str(path)).out) == {
            "ticket": 1, "action": "held", "detail": "the sender is not a named contact of any organization",
        }  # fmt: skip
        [held] = as_json(cli("ticket", "list", "--status", "held", "--json"))
        assert (held["held_reason"], held["entitlement"], held["introduction_due_at"]) == (
            "unknown-sender", "unknown-sender", None,
        )  # fmt: skip
        assert [m["kind"] for m in as_json(cli("ticket", "show", "1", "--json"))["messages"]] == ["customer"]
        result = cli("ticket", "release", "1")
        assert result.code == 0 and "released ticket 1" in result.out
        shown = as_json(cli("ticket", "show", "1", "--json"))
        assert (shown["status"], shown["held_reason"], shown["entitlement"]) == (
            "new",
            None,
            "unknown-sender",
        )
        assert shown["released_at"] and shown["introduction_due_at"] and shown["confirmation_due_at"]
        assert [m["kind"] for m in shown["messages"]] == ["customer", "confirmation"]
        assert cli("ticket", "release", "1").refused("ticket 1 is not held (its status is new)")
        assert as_json(cli("ticket", "list", "--status", "held", "--json")) == []
