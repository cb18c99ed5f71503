"""`ticket assign`, and the SLA in `ticket list` / `ticket show`, as an operator runs them."""

from __future__ import annotations

import json
import re
import socket
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select, update

from mailbot import config as config_module
from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.store.schema import OutboxItem, Ticket
from tests.conftest import TUESDAY_10_ET, run_cli
from tests.mailers import message

pytestmark = pytest.mark.calendar  # run again under pinned wall clocks (Makefile: test-calendar)

CONFIG = """
[database]
url = "sqlite:///{db}"
[outbound]
{outbound}
[security]
require_sender_auth = false
"""
MAILDIR = 'transport = "maildir"\nmaildir = "{sent}"'


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, "--config", str(config), *argv)


def setup(capsys: pytest.CaptureFixture[str], tmp_path: Path, outbound: str) -> Path:
    """A database with Lincoln High, its contact Ana, and the specialists Sam and Ria."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(db=tmp_path / "mailbot.db", outbound=outbound))
    for argv in (
        ("db", "upgrade"),
        ("org", "add", "Lincoln High", "--product", "full", "--plan", "silver"),
        ("contact", "add", "ana@lincoln.example", "--org", "Lincoln High", "--name", "Ana Diaz"),
        ("specialist", "add", "sam@schoolmint.com", "--name", "Sam Lee"),
        ("specialist", "add", "ria@schoolmint.com", "--name", "Ria Patel"),
    ):
        code, _, err = run(capsys, config, *argv)
        assert code == 0, err
    return config


def ingest(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path, raw: bytes) -> dict[str, object]:
    path = tmp_path / "in.eml"
    path.write_bytes(raw)
    code, out, err = run(capsys, config, "ingest", str(path))
    assert code == 0, err
    return dict(json.loads(out))


@pytest.fixture
def maildir_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    return setup(capsys, tmp_path, MAILDIR.format(sent=tmp_path / "sent"))


def sent(tmp_path: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((tmp_path / "sent" / "new").glob("*"))]


def readable(mail: EmailMessage) -> str:
    """The decoded text parts of a message, as its reader sees them."""
    return "\n".join(str(p.get_content()) for p in mail.walk() if p.get_content_maintype() == "text")


class TestAssign:
    def test_claim_sends_the_introduction_now(
        self, capsys: pytest.CaptureFixture[str], maildir_config: Path, tmp_path: Path
    ) -> None:
        assert ingest(capsys, maildir_config, tmp_path, message()) == {"ticket": 1, "action": "created"}
        code, out, err = run(capsys, maildir_config, "ticket", "assign", "1", "Sam@SchoolMint.com")
        assert (code, err) == (0, "")
        assert out.strip() == (
            "ticket 1 assigned to Sam Lee <sam@schoolmint.com>; introduction sent; Sam Lee got the conversation by email"
        )
        mails = [message_from_bytes(m, policy=policy.default) for m in sent(tmp_path)]
        introductions = [m for m in mails if "I am Sam Lee" in readable(m)]
        assert len(introductions) == 1
        [assignment] = [m for m in mails if str(m["To"]) == "Sam Lee <sam@schoolmint.com>"]
        assert "is yours now: claimed" in readable(assignment) and "I cannot log in" in readable(assignment)
        code, out, _ = run(capsys, maildir_config, "ticket", "show", "1", "--json")
        shown = json.loads(out)
        assert shown["specialist"] == "sam@schoolmint.com" and shown["status"] == "open"
        assert shown["introduction_sent_at"] is not None
        assert [m["kind"] for m in shown["messages"]] == ["customer", "confirmation", "introduction", "assignment"]

    def test_an_introduction_never_sent_is_not_taken_over(
        self, capsys: pytest.CaptureFixture[str], maildir_config: Path, tmp_path: Path
    ) -> None:
        """Sam's introduction was withheld (Ana's per-address limit): Ria's is Ana's first, not one that says
        Ria takes over from someone Ana never heard of, and it carries the promise's deadline."""
        limited = maildir_config.read_text()
        maildir_config.write_text(limited.replace("[security]\n", "[security]\ncontact_mail_limit = 1\n"))
        ingest(capsys, maildir_config, tmp_path, message())  # the confirmation: Ana's one mail
        assert run(capsys, maildir_config, "ticket", "assign", "1", "sam@schoolmint.com")[0] == 0
        assert not [m for m in sent(tmp_path) if b"I am Sam Lee" in m]  # withheld
        maildir_config.write_text(limited)  # an operator raised the limit
        before = len(sent(tmp_path))
        assert run(capsys, maildir_config, "ticket", "assign", "1", "ria@schoolmint.com")[0] == 0
        mails = [message_from_bytes(m, policy=policy.default) for m in sent(tmp_path)[before:]]
        [ana] = [m for m in mails if m["To"].addresses[0].addr_spec == "ana@lincoln.example"]
        assert "I am Ria Patel" in readable(ana) and "taking it over" not in readable(ana)
        with App(config_module.load(maildir_config)).db.transaction() as session:
            item = session.scalars(
                select(OutboxItem).where(OutboxItem.kind == "introduction", OutboxItem.status == "sent")
            ).one()
            assert item.deadline_at is not None

    def test_claiming_again_changes_nothing_and_a_second_specialist_takes_over(
        self, capsys: pytest.CaptureFixture[str], maildir_config: Path, tmp_path: Path
    ) -> None:
        """Ria takes Sam's ticket: she gets the conversation, Sam is told, and Ana hears who takes over."""
        ingest(capsys, maildir_config, tmp_path, message())
        assert run(capsys, maildir_config, "ticket", "assign", "1", "sam@schoolmint.com")[0] == 0
        code, out, _ = run(capsys, maildir_config, "ticket", "assign", "1", "sam@schoolmint.com")
        assert code == 0 and "already assigned to Sam Lee" in out
        before = len(sent(tmp_path))
        code, out, _ = run(capsys, maildir_config, "ticket", "assign", "1", "ria@schoolmint.com")
        assert code == 0 and "sam@schoolmint.com was told" in out
        ana, ria, sam = sorted(
            (message_from_bytes(m, policy=policy.default) for m in sent(tmp_path)[before:]),
            key=lambda m: m["To"].addresses[0].addr_spec,
        )
        assert "I am Ria Patel" in readable(ana) and "taking it over from Sam Lee" in readable(ana)
        assert "is yours now: claimed, from Sam Lee" in readable(ria)
        assert "is now with Ria Patel" in readable(sam)
        # Her reply goes to the ticket's specialist token, and so to Ana as the team; Ana's is the customer's.
        assert "+s1-" in ria["Reply-To"].addresses[0].addr_spec and "+t1-" in ana["Reply-To"].addresses[0].addr_spec
        code, out, _ = run(capsys, maildir_config, "ticket", "show", "1", "--json")
        assert json.loads(out)["introduction_sent_at"] is not None

    def test_an_away_specialist_cannot_claim(
        self, capsys: pytest.CaptureFixture[str], maildir_config: Path, tmp_path: Path
    ) -> None:
        ingest(capsys, maildir_config, tmp_path, message())
        assert run(capsys, maildir_config, "specialist", "away", "sam@schoolmint.com")[0] == 0
        code, out, err = run(capsys, maildir_config, "ticket", "assign", "1", "sam@schoolmint.com")
        assert code == 1 and out == "" and "sam@schoolmint.com is away" in err and err.count("\n") == 1
        code, out, _ = run(capsys, maildir_config, "ticket", "show", "1", "--json")
        shown = json.loads(out)
        assert shown["specialist"] is None and [m["kind"] for m in shown["messages"]] == ["customer", "confirmation"]

    @pytest.mark.parametrize(
        ("ticket", "email", "expected"),
        [
            ("1", "stranger@schoolmint.com", "stranger@schoolmint.com is not a specialist"),
            ("1", "not an address", "is not a specialist"),
            ("99", "sam@schoolmint.com", "no ticket 99"),
        ],
    )
    def test_refused_in_one_line(
        self,
        capsys: pytest.CaptureFixture[str],
        maildir_config: Path,
        tmp_path: Path,
        ticket: str,
        email: str,
        expected: str,
    ) -> None:
        ingest(capsys, maildir_config, tmp_path, message())
        code, out, err = run(capsys, maildir_config, "ticket", "assign", ticket, email)
        assert code == 1 and out == ""
        assert expected in err and err.count("\n") == 1 and "Traceback" not in err

    def test_held_ticket_must_be_released_first(
        self, capsys: pytest.CaptureFixture[str], maildir_config: Path, tmp_path: Path
    ) -> None:
        outcome = ingest(capsys, maildir_config, tmp_path, message(sender="Eve <eve@elsewhere.example>"))
        assert outcome["action"] == "held"
        code, _, err = run(
            capsys, maildir_config, "ticket", "assign", str(outcome["ticket"]), "sam@schoolmint.com"
        )
        assert code == 1 and "is held" in err and "mailbot ticket release" in err

    def test_resolved_ticket_is_refused(
        self, capsys: pytest.CaptureFixture[str], maildir_config: Path, tmp_path: Path
    ) -> None:
        ingest(capsys, maildir_config, tmp_path, message())
        app = App(config_module.load(maildir_config))
        app.db.call(lambda s: s.execute(update(Ticket).values(status="resolved")))
        app.close()
        code, _, err = run(capsys, maildir_config, "ticket", "assign", "1", "sam@schoolmint.com")
        assert code == 1 and "ticket 1 is resolved" in err

    def test_relay_down_leaves_the_introduction_queued_for_the_daemon(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        with socket.socket() as probe:  # a port with nobody listening: the relay is down
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = setup(capsys, tmp_path, f'transport = "smtp"\nhost = "127.0.0.1"\nport = {port}')
        ingest(capsys, config, tmp_path, message())
        code, out, _ = run(capsys, config, "ticket", "assign", "1", "sam@schoolmint.com")
        assert code == 0
        assert (
            "introduction queued, not sent yet (relay unreachable" in out and "the daemon keeps trying" in out
        )
        code, out, _ = run(capsys, config, "ticket", "show", "1", "--json")
        assert json.loads(out)["specialist"] == "sam@schoolmint.com"


class TestSlaColumns:
    def test_list_shows_the_sla_and_filters_breached_tickets(
        self, capsys: pytest.CaptureFixture[str], maildir_config: Path, tmp_path: Path
    ) -> None:
        ingest(capsys, maildir_config, tmp_path, message(message_id="<one@lincoln.example>"))
        run(capsys, maildir_config, "ticket", "assign", "1", "sam@schoolmint.com")
        ingest(
            capsys, maildir_config, tmp_path, message(message_id="<two@lincoln.example>", subject="Grades")
        )
        ingest(capsys, maildir_config, tmp_path, message(sender="eve@elsewhere.example", subject="Spam"))
        code, out, _ = run(capsys, maildir_config, "ticket", "list")
        header, *lines = out.splitlines()
        assert code == 0 and header.split()[-2:] == ["SUBJECT", "SLA"]
        assert lines[0].endswith(" ok") and " due 20" in lines[1] and lines[2].endswith(" -")
        # Times as people read them: business time zone with its offset, to the minute (CREATED and SLA alike).
        local = r"20\d\d-\d\d-\d\d \d\d:\d\d [+-]\d\d:\d\d"
        assert re.match(rf"\s+1  open\s+{local} ", lines[0]) and re.search(rf" due {local}$", lines[1]), lines

        # Two days later nobody ran the daemon: the confirmation of ticket 2 never went out.
        later = App(config_module.load(maildir_config), FrozenClock(TUESDAY_10_ET + timedelta(days=2)))
        sweep = later.sla.sweep_once()
        later.close()
        assert [t for t, _ in sweep.assigned] == [2]
        code, out, _ = run(capsys, maildir_config, "ticket", "list", "--breached")
        [line] = out.splitlines()[1:]
        assert line.lstrip().startswith("2 ") and "BREACHED: confirmation late (due " in line
        code, out, _ = run(capsys, maildir_config, "ticket", "list", "--breached", "--json")
        [row] = json.loads(out)
        assert row["id"] == 2 and row["sla_breach"].startswith("BREACHED: confirmation late")
        assert datetime.fromisoformat(row["sla_breached_at"]).utcoffset() is not None
        code, out, _ = run(capsys, maildir_config, "ticket", "show", "2")
        assert "sla breach" in out and "BREACHED: introduction late" in out and "sla breached at" in out


class TestTicketJson:
    def test_the_organization_is_the_contacts(
        self, capsys: pytest.CaptureFixture[str], maildir_config: Path, tmp_path: Path
    ) -> None:
        """INTERFACE.md's `organization`: the named contact's organization; none for a stranger's held ticket."""
        ingest(capsys, maildir_config, tmp_path, message())
        ingest(capsys, maildir_config, tmp_path, message(sender="eve@elsewhere.example", subject="Spam"))
        code, out, _ = run(capsys, maildir_config, "ticket", "list", "--json")
        assert code == 0 and [t["organization"] for t in json.loads(out)] == ["Lincoln High", None]
        assert json.loads(run(capsys, maildir_config, "ticket", "show", "1", "--json")[1])["organization"] == "Lincoln High"
