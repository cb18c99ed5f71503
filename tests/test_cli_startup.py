"""What `mailbot` refuses at start, in one line, and how fast it starts: the operator's first minute."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailbot.cli import main
from tests.conftest import PG_ADMIN_URL, run_cli
from tests.test_cli import CONFIG

HEAVY = ("sqlalchemy", "alembic", "pydantic", "aiosmtpd", "aiosmtplib", "aioimaplib", "dkim", "jinja2",
         "holidays", "apscheduler", "asyncio", "inscriptis", "mailbot.config", "mailbot.store", "mailbot.app")
WRITE_SIDE = ("aiosmtpd", "aiosmtplib", "aioimaplib", "dkim", "jinja2", "apscheduler", "mailbot.parse")
CHILD = """
import json, sys
from mailbot.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def imported_by(*argv: str) -> tuple[int, set[str]]:
    """The exit status of `mailbot ARGV` in a fresh interpreter, and every module it imported."""
    result = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=False)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if name in modules)


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, *argv)


class TestStartupCost:
    """Commands import what they need when they need it (README: start-up)."""

    def test_help_and_version_load_no_heavy_library(self) -> None:
        for argv in (["--help"], ["--version"], ["inbound", "--help"], ["db", "backup", "--help"]):
            code, modules = imported_by(*argv)
            assert (code, loaded(modules, HEAVY)) == (0, []), argv

    def test_a_reading_command_loads_no_mail_library(self, config_file: Path) -> None:
        assert main(["--config", str(config_file), "db", "upgrade"]) == 0
        code, modules = imported_by("--config", str(config_file), "ticket", "list")
        assert code == 0 and "sqlalchemy" in modules
        assert loaded(modules, WRITE_SIDE) == []

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        from importlib.metadata import version

        with pytest.raises(SystemExit) as exit_:
            main(["--version"])
        assert exit_.value.code == 0 and capsys.readouterr().out == f"mailbot {version('mailbot')}\n"


DKIM = '\n[outbound.dkim]\ndomain = "schoolmint.com"\nselector = "mailbot"\nprivate_key_file = "{key}"\n'


class TestUnusableFiles:
    """A key or secret the daemon could not read stops `check-config` and `run`, before "started"."""

    @pytest.mark.parametrize(
        ("extra", "expected"),
        [
            (DKIM, "outbound.dkim.private_key_file: cannot read"),
            ('\n[security]\nsecret_file = "{key}"\n', "security.secret_file: cannot read secret file"),
            ('\n[[imap]]\nhost = "127.0.0.1"\nusername = "u"\npassword_file = "{key}"\n',
             "imap[1].password_file: cannot read secret file"),
        ],
    )
    def test_missing_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path, config_file: Path,
                          extra: str, expected: str) -> None:
        text = config_file.read_text().replace("[security]\nrequire_sender_auth = false\n", "")
        config_file.write_text(text + extra.format(key=tmp_path / "absent.key"))
        assert cli(capsys, "--config", str(config_file), "db", "upgrade")[0] == 0
        for command in ("check-config", "run"):
            code, out, err = cli(capsys, "--config", str(config_file), command)
            assert code == 1 and expected in one_line(err) and "OK" not in out, (command, err)
            assert "started" not in err

    def test_the_daemon_never_starts(self, tmp_path: Path, config_file: Path) -> None:
        """The real `mailbot run`: one line, exit 1, no "mailbot started" and no traceback in its log."""
        config_file.write_text(config_file.read_text() + DKIM.format(key=tmp_path / "absent.key"))
        command = [sys.executable, "-m", "mailbot", "--config", str(config_file)]
        subprocess.run([*command, "db", "upgrade"], capture_output=True, check=True)
        result = subprocess.run([*command, "run"], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 1 and "started" not in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-1] == (
            f"mailbot: outbound.dkim.private_key_file: cannot read {tmp_path / 'absent.key'}: No such file or directory"
        )

    def test_a_key_that_is_no_key(self, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  config_file: Path) -> None:
        key = tmp_path / "dkim.key"
        key.write_text("not a key\n")
        config_file.write_text(config_file.read_text() + DKIM.format(key=key))
        code, _, err = cli(capsys, "--config", str(config_file), "check-config")
        assert code == 1 and "is not a PEM RSA private key" in one_line(err)

    def test_every_problem_is_named(self, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    config_file: Path) -> None:
        text = config_file.read_text().replace("[security]\n", f'[security]\nsecret_file = "{tmp_path}/s"\n')
        config_file.write_text(text + DKIM.format(key=tmp_path / "k"))
        code, _, err = cli(capsys, "--config", str(config_file), "check-config")
        assert code == 1 and len(err.splitlines()) == 2 and "Traceback" not in err


class TestEnvironment:
    """A port in use, a database that is not there, a schema not made: one line each, exit 1; a server
    that is down is temporary, exit 75, with its cause."""

    def test_port_in_use(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            config = tmp_path / "config.toml"
            config.write_text(CONFIG.format(db=tmp_path / "m.db", port=port, sent=tmp_path / "sent"))
            assert cli(capsys, "--config", str(config), "db", "upgrade")[0] == 0
            code, _, err = cli(capsys, "--config", str(config), "run")
        assert code == 1
        assert f"smtp: cannot listen on 127.0.0.1:{port}: Address already in use" in one_line(err.splitlines()[-1] + "\n")
        assert "started" not in err and "Traceback" not in err

    def test_sqlite_without_schema(self, capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
        code, _, err = cli(capsys, "--config", str(config_file), "ticket", "list")
        assert code == 1 and "does not exist" in one_line(err) and "run `mailbot db upgrade`" in err
        database = config_file.parent / "mailbot.db"
        assert not database.exists()  # not created by the refusal
        database.touch()  # a file that is no mailbot database
        code, _, err = cli(capsys, "--config", str(config_file), "ticket", "list")
        assert code == 1 and "no such table" in one_line(err) and "run `mailbot db upgrade`" in err

    def test_server_down_is_temporary_and_says_why(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        with socket.socket() as closed:  # a port nobody listens on
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        config = tmp_path / "pg.toml"
        config.write_text(f'[database]\nurl = "postgresql+psycopg://postgres@127.0.0.1:{port}/mailbot"\n')
        for argv in (("ticket", "list"), ("run",), ("db", "upgrade")):
            code, _, err = cli(capsys, "--config", str(config), *argv)
            assert code == 75 and "Connection refused" in one_line(err), argv

    @pytest.mark.postgres
    def test_database_that_does_not_exist(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        name = f"mailbot_absent_{uuid.uuid4().hex[:8]}"
        config = tmp_path / "pg.toml"
        config.write_text(f'[database]\nurl = "{PG_ADMIN_URL.rsplit("/", 1)[0]}/{name}"\n')
        for argv in (("ticket", "list"), ("run",), ("db", "upgrade")):
            code, _, err = cli(capsys, "--config", str(config), *argv)
            assert code == 1 and f'database.url: database "{name}" does not exist' in one_line(err), argv


@pytest.fixture
def fresh_postgres() -> str:
    """An empty PostgreSQL database of its own (a second host's first boot finds it so)."""
    name = f"mailbot_up_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


class TestConcurrentUpgrade:
    """Three hosts booting at once each run the unit's ExecStartPre: all succeed, one schema results."""

    def upgrade_three_at_once(self, tmp_path: Path, url: str) -> list[subprocess.CompletedProcess[str]]:
        config = tmp_path / "config.toml"
        config.write_text(f'[database]\nurl = "{url}"\n')
        command = [sys.executable, "-m", "mailbot", "--config", str(config), "db", "upgrade"]
        processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(3)]
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in processes]

    @pytest.mark.postgres
    def test_postgresql(self, tmp_path: Path, fresh_postgres: str) -> None:
        results = self.upgrade_three_at_once(tmp_path, fresh_postgres)
        assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-300:] for r in results]
        engine = sa.create_engine(fresh_postgres)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
        engine.dispose()

    def test_sqlite(self, tmp_path: Path) -> None:
        results = self.upgrade_three_at_once(tmp_path, f"sqlite:///{tmp_path / 'm.db'}")
        assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-300:] for r in results]


class TestIngestKeepsTheMail:
    """`ingest` is an MTA's pipe: whatever keeps it from storing a message is exit 75, so the MTA retries."""

    def test_setup_mistakes_are_temporary_for_ingest(self, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     config_file: Path) -> None:
        eml = tmp_path / "m.eml"
        eml.write_bytes(b"From: ana@lincoln.example\r\nSubject: hi\r\n\r\nhello\r\n")
        code, _, err = cli(capsys, "--config", str(config_file), "ingest", str(eml))  # no schema yet
        assert code == 75 and "run `mailbot db upgrade`" in one_line(err)
        code, _, err = cli(capsys, "--config", str(tmp_path / "absent.toml"), "ingest", str(eml))
        assert code == 75 and "no such configuration file" in one_line(err)
        code, _, err = cli(capsys, "--config", str(config_file), "ingest", str(tmp_path / "absent.eml"))
        assert code == 1 and "cannot read" in one_line(err)  # nothing came in: nothing to keep
