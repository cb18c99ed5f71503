"""The operator's commands: failed messages (view, retry, discard), results as JSON, tables with headers,
closed pipes, and `db backup`."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailbot.cli import main
from tests.conftest import run_cli
from tests.mailers import message
from tests.test_cli import CONFIG, CUSTOMER, ROOT

# Nested 600 deep: past the parser's limits, read degraded (a ticket all the same).
UNPARSEABLE = b"From: x@lincoln.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + (
    b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" * 600
)


@pytest.fixture
def reader_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug of ours in reading (failed is left for those): every message fails, and would again."""
    from mailbot.intake import reading as intake

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the reader: nested parts")

    monkeypatch.setattr(intake, "read_message", broken)


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A migrated SQLite database with Lincoln High and its contact Ana."""
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(db=tmp_path / "mailbot.db", port=0, sent=tmp_path / "sent"))
    for argv in (("db", "upgrade"), *CUSTOMER):
        assert main(["--config", str(path), *argv]) == 0
    capsys.readouterr()
    return path


def cli(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, "--config", str(config), *argv)


def ingest(capsys: pytest.CaptureFixture[str], config: Path, raw: bytes) -> dict[str, object]:
    path = config.parent / "in.eml"
    path.write_bytes(raw)
    code, out, err = cli(capsys, config, "ingest", str(path))
    assert code == 0, err
    result: dict[str, object] = json.loads(out)
    return result


class TestFailedMessages:
    """A failed message is listed with its reason, readable byte for byte, retried or set aside."""

    def test_listed_with_a_header_and_the_reason(
        self, capsys: pytest.CaptureFixture[str], config: Path, reader_bug: None
    ) -> None:
        assert ingest(capsys, config, UNPARSEABLE)["action"] == "failed"
        code, out, _ = cli(capsys, config, "inbound", "failed")
        header, row = out.splitlines()
        assert code == 0 and header.split() == ["ID", "RECEIVED", "SOURCE", "FROM", "SIZE", "ERROR"]
        assert row.split()[0] == "1" and "nested" in row.lower()
        [listed] = json.loads(cli(capsys, config, "inbound", "failed", "--json")[1])
        assert listed["id"] == 1 and listed["status"] == "failed" and listed["error"]

    def test_raw_gives_the_bytes_as_received(self, config: Path) -> None:
        command = [sys.executable, "-m", "mailbot", "--config", str(config)]
        subprocess.run([*command, "ingest", "-"], input=UNPARSEABLE, capture_output=True, check=True)
        shown = subprocess.run([*command, "inbound", "raw", "1"], capture_output=True, check=True)
        assert shown.stdout == UNPARSEABLE
        missing = subprocess.run([*command, "inbound", "raw", "9"], capture_output=True, text=True, check=False)
        assert (missing.returncode, missing.stderr) == (1, "mailbot: no inbound message 9\n")

    def test_retry_exit_status_says_what_happened(
        self, capsys: pytest.CaptureFixture[str], config: Path, reader_bug: None
    ) -> None:
        ingest(capsys, config, UNPARSEABLE)
        assert cli(capsys, config, "inbound", "retry", "999") == (1, "", "mailbot: no inbound message 999\n")
        code, out, err = cli(capsys, config, "inbound", "retry", "1")
        assert code == 3 and out.startswith("inbound 1: failed: ") and err == ""
        code, out, _ = cli(capsys, config, "inbound", "retry", "--json")
        [result] = json.loads(out)
        assert code == 3 and result["id"] == 1 and result["action"] == "failed" and result["detail"]

    def test_a_retry_that_works(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        """A message that failed for a reason since fixed (here: forced failed) makes its ticket."""
        ingest(capsys, config, message(message_id="<ok@lincoln.example>"))
        db = sqlite3.connect(config.parent / "mailbot.db")
        with db:
            db.execute("DELETE FROM ticket_messages")
            db.execute("DELETE FROM outbox")
            db.execute("DELETE FROM tickets")
            db.execute("UPDATE inbound_messages SET status = 'failed', error = 'a bug since fixed'")
        db.close()
        code, out, _ = cli(capsys, config, "inbound", "retry", "1", "--json")
        [result] = json.loads(out)
        assert code == 0 and result == {"id": 1, "ticket": result["ticket"], "action": "created"}
        assert cli(capsys, config, "ticket", "list", "--json")[1].count('"id"') == 1
        code, _, err = cli(capsys, config, "inbound", "retry", "1")
        assert code == 1 and "is processed, not failed or discarded" in err

    def test_nothing_to_retry(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        assert cli(capsys, config, "inbound", "retry") == (0, "no failed messages to retry\n", "")
        assert cli(capsys, config, "inbound", "retry", "--json") == (0, "[]\n", "")

    def test_discard_keeps_it_for_inspection(
        self, capsys: pytest.CaptureFixture[str], config: Path, reader_bug: None
    ) -> None:
        ingest(capsys, config, UNPARSEABLE)
        code, out, _ = cli(capsys, config, "inbound", "discard", "1", "--json")
        assert (code, json.loads(out)) == (0, [{"id": 1, "status": "discarded"}])
        assert cli(capsys, config, "inbound", "failed")[1].splitlines()[1:] == []
        assert cli(capsys, config, "inbound", "retry") == (0, "no failed messages to retry\n", "")
        [kept] = json.loads(cli(capsys, config, "inbound", "failed", "--discarded", "--json")[1])
        assert kept["id"] == 1 and kept["status"] == "discarded" and kept["error"]
        code, _, err = cli(capsys, config, "inbound", "discard", "1")
        assert code == 1 and "is discarded, not failed" in err
        code, out, _ = cli(capsys, config, "inbound", "retry", "1")  # still retryable by its id
        assert code == 3 and out.startswith("inbound 1: failed")


class TestResultsAndTables:
    """Every command that creates or changes something says what, as JSON on request."""

    def test_registry_commands_give_json(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        code, out, _ = cli(capsys, config, "org", "add", "Lee District", "--product", "district",
                           "--plan", "district-gold", "--json")
        org = json.loads(out)
        assert code == 0 and org["id"] == 2 and org["name"] == "Lee District" and org["plan"] == "district-gold"
        school = json.loads(cli(capsys, config, "school", "add", "2", "North", "--json")[1])
        assert school["organization_id"] == 2 and school["name"] == "North"
        contact = json.loads(cli(capsys, config, "contact", "add", "bo@lee.example", "--org", "2",
                                 "--school", "North", "--json")[1])
        assert contact["address"] == "bo@lee.example" and isinstance(contact["id"], int)
        assert json.loads(cli(capsys, config, "org", "set", "2", "--suspended", "--json")[1])["suspended"] is True
        specialist = json.loads(cli(capsys, config, "specialist", "add", "sam@schoolmint.com", "--name", "Sam",
                                    "--json")[1])
        assert specialist["address"] == "sam@schoolmint.com" and isinstance(specialist["id"], int)
        away = json.loads(cli(capsys, config, "specialist", "away", "sam@schoolmint.com", "--json")[1])
        assert away == {"address": "sam@schoolmint.com", "active": False}
        removed = json.loads(cli(capsys, config, "contact", "remove", "bo@lee.example", "--json")[1])
        assert removed == {"address": "bo@lee.example", "removed": True}

    def test_ticket_commands_give_json(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        assert main(["--config", str(config), "specialist", "add", "sam@schoolmint.com", "--name", "Sam"]) == 0
        capsys.readouterr()
        ingest(capsys, config, message())
        stranger = ingest(capsys, config, message(sender="eve@elsewhere.example", subject="Hi"))
        capsys.readouterr()
        assigned = json.loads(cli(capsys, config, "ticket", "assign", "1", "sam@schoolmint.com", "--json")[1])
        assert assigned == {"ticket": 1, "specialist": "sam@schoolmint.com", "previous": None,
                            "introduction": "sent", "error": None}
        resolved = json.loads(cli(capsys, config, "ticket", "resolve", "1", "--json")[1])
        assert resolved == {"ticket": 1, "status": "resolved", "resolution": "sent", "error": None}
        released = json.loads(cli(capsys, config, "ticket", "release", str(stranger["ticket"]), "--json")[1])
        assert released["ticket"] == stranger["ticket"] and released["status"] == "new"

    def test_tables_have_header_rows(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        assert main(["--config", str(config), "specialist", "add", "sam@schoolmint.com", "--name", "Sam"]) == 0
        capsys.readouterr()
        for argv, header, first in (
            (("contact", "list"), ["ADDRESS", "NAME", "ORGANIZATION", "SCOPE", "LIMIT"], "ana@lincoln.example"),
            (("specialist", "list"), ["ADDRESS", "NAME", "STATUS", "LAST", "ASSIGNED"], "sam@schoolmint.com"),
            (("org", "list"), ["ID", "NAME", "PRODUCT", "PLAN", "VALID", "CONTACTS", "STATUS"], "1"),
        ):
            code, out, _ = cli(capsys, config, *argv)
            lines = out.splitlines()
            assert code == 0 and lines[0].split() == header and lines[1].split()[0] == first, argv


class TestClosedPipe:
    """`mailbot ticket list | head -1`: the reader leaves early; mailbot stops quietly, as Unix tools do."""

    @pytest.mark.parametrize("argv", [("ticket", "list"), ("ticket", "show", "1"), ("parse", "{eml}")])
    def test_no_traceback(self, capsys: pytest.CaptureFixture[str], config: Path, argv: tuple[str, ...]) -> None:
        eml = config.parent / "m.eml"
        eml.write_bytes(message())
        ingest(capsys, config, eml.read_bytes())
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before anything is written
        command = [sys.executable, "-m", "mailbot", "--config", str(config), *(a.format(eml=eml) for a in argv)]
        result = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True, check=False)
        os.close(write_end)
        assert (result.returncode, result.stderr) == (141, "")


class TestBackup:
    """`db backup PATH`: a consistent, private copy while the daemon writes (SQLite in WAL mode)."""

    def test_copy_is_consistent_and_private(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        live = sqlite3.connect(config.parent / "mailbot.db", isolation_level=None)
        live.execute("BEGIN IMMEDIATE")  # the daemon in the middle of a write
        live.execute("UPDATE organizations SET name = 'uncommitted'")
        target = config.parent / "backups" / "mailbot.db"
        target.parent.mkdir()
        code, out, _ = cli(capsys, config, "db", "backup", str(target), "--json")
        live.rollback()
        live.close()
        assert code == 0 and json.loads(out) == {"path": str(target), "bytes": target.stat().st_size}
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert [p.name for p in target.parent.iterdir()] == ["mailbot.db"]  # no temporary file left behind
        copy = sqlite3.connect(target)
        assert copy.execute("SELECT name FROM organizations").fetchall() == [("Lincoln High",)]
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        copy.close()
        code, out, _ = cli(capsys, config, "db", "backup", str(target))  # replaces the previous copy
        assert code == 0 and out.startswith(f"backed up the database to {target}")

    def test_a_missing_database_is_not_created(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        path = tmp_path / "c.toml"
        path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/absent.db"\n')
        code, _, err = cli(capsys, path, "db", "backup", str(tmp_path / "copy.db"))
        assert code == 1 and "cannot open the database" in err and not (tmp_path / "absent.db").exists()

    def test_postgresql_says_what_to_run(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        path = tmp_path / "c.toml"
        path.write_text('[database]\nurl = "postgresql+psycopg://mailbot:secret@db.example:5433/tickets"\n')
        code, out, err = cli(capsys, path, "db", "backup", "/srv/backup/mailbot.dump")
        assert (code, out) == (1, "")
        assert err == (
            "mailbot: db backup copies SQLite databases; for PostgreSQL run: pg_dump --format=custom "
            "--file=/srv/backup/mailbot.dump --host=db.example --port=5433 --username=mailbot tickets\n"
        )


class TestDocumented:
    """README.md stands alone: every command and option the parser knows appears in it."""

    def test_every_command_and_option_is_in_the_readme(self) -> None:
        import argparse

        from mailbot.cli import build_parser

        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
        missing = []

        def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, child in action.choices.items():
                        walk(child, (*words, name))
                for option in action.option_strings:
                    if option.startswith("--") and option != "--help" and option not in readme:
                        missing.append(f"{' '.join(words)} {option}")
            if words and f"`{' '.join(words)}" not in readme and f"· `{words[-1]}" not in readme:
                missing.append(" ".join(words))

        walk(build_parser(), ())
        assert missing == [], missing


class TestSetupMistakes:
    """What a wrong path or a typo in a template would break later is one line now, and changes nothing."""

    def test_a_sqlite_file_that_is_not_there_is_refused_not_created(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = tmp_path / "config.toml"
        config.write_text('[database]\nurl = "sqlite:///var/mailbot.db"\n')
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)  # the relative path is read from here, where no database is
        for argv in (("status",), ("ticket", "list"), ("run",)):
            code, _, err = cli(capsys, config, *argv)
            assert code == 1 and f"{elsewhere / 'var' / 'mailbot.db'} does not exist" in err, (argv, err)
            assert "a relative path, read from the working directory" in err
        assert not (elsewhere / "var").exists()
        assert cli(capsys, config, "db", "upgrade")[0] == 0  # the one command that creates it
        assert (elsewhere / "var" / "mailbot.db").exists()
        assert cli(capsys, config, "status")[0] == 0

    def test_a_template_that_does_not_compile_is_refused_at_start(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        templates = tmp_path / "templates"
        shutil.copytree(ROOT / "templates", templates)
        with (templates / "confirmation.txt").open("a") as broken:
            broken.write("{{ broken\n")
        config = tmp_path / "config.toml"
        config.write_text(
            f'[database]\nurl = "sqlite:///{tmp_path / "m.db"}"\n[support]\ntemplates = "{templates}"\n'
        )
        code, _, err = cli(capsys, config, "check-config")
        assert code == 1 and err.startswith("mailbot: support.templates: template confirmation.txt line ")
        assert len(err.splitlines()) == 1
        (templates / "confirmation.txt").write_text((ROOT / "templates" / "confirmation.txt").read_text())
        assert cli(capsys, config, "check-config")[0] == 0
