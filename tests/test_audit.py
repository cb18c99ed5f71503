"""Every change made from the command line reaches the system log, under "mailbot", with who made it; what
only reads says nothing. A real Unix datagram socket stands in for /dev/log (MAILBOT_SYSLOG_SOCKET)."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.mailers import message
from tests.test_cli_tickets import CONFIG, MAILDIR

USER = pwd.getpwuid(os.geteuid()).pw_name
DAEMON_INFO = "<30>"  # facility daemon (3) * 8 + info (6)


class Syslog:
    """A syslog daemon's socket: every datagram sent to it, one log line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.setblocking(False)

    def received(self) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self.socket.recv(65536).decode())
            except BlockingIOError:
                return lines


@pytest.fixture
def syslog(monkeypatch: pytest.MonkeyPatch) -> Iterator[Syslog]:
    with tempfile.TemporaryDirectory() as folder:  # short: a socket's path has at most 107 bytes
        log = Syslog(Path(folder) / "log")
        monkeypatch.setenv("MAILBOT_SYSLOG_SOCKET", str(log.path))
        monkeypatch.delenv("MAILBOT_AUDIT", raising=False)
        monkeypatch.delenv("SUDO_USER", raising=False)
        yield log
        log.socket.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(db=tmp_path / "mailbot.db", outbound=MAILDIR.format(sent=tmp_path / "sent")))
    return path


def mailbot(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> str:
    code, out, err = run_cli(capsys, "--config", str(config), *argv)
    assert code == 0, err
    return out


def audit_line(text: str) -> str:
    return f"{DAEMON_INFO}mailbot[{os.getpid()}]: INFO mailbot.audit: {text}"


class TestChanges:
    def test_each_change_is_one_line_with_who_made_it(
        self, capsys: pytest.CaptureFixture[str], syslog: Syslog, config: Path, tmp_path: Path
    ) -> None:
        mail = tmp_path / "in.eml"
        mail.write_bytes(message())
        steps = [
            (("db", "upgrade"), "db upgrade by {user}: schema is up to date (sqlite)"),
            (("org", "add", "Lincoln High", "--product", "full", "--plan", "silver"),
             "org add by {user}: added organization 1 Lincoln High: product full, plan silver, valid any time to no end"),
            (("contact", "add", "ana@lincoln.example", "--org", "Lincoln High", "--name", "Ana Diaz"),
             "contact add by {user}: added contact ana@lincoln.example to Lincoln High"),
            (("specialist", "add", "sam@schoolmint.com", "--name", "Sam Lee", "--json"),
             "specialist add by {user}: added specialist sam@schoolmint.com"),
            (("ingest", str(mail)), None),  # mail coming in: the intake's own line (mailbot.intake), no audit
            (("ticket", "assign", "1", "sam@schoolmint.com"),
             ("ticket assign by {user}: ticket 1 assigned to Sam Lee <sam@schoolmint.com>; introduction sent; "
              "Sam Lee got the conversation by email")),
            (("specialist", "away", "sam@schoolmint.com"), "specialist away by {user}: specialist sam@schoolmint.com is away"),
            (("ticket", "resolve", "1", "--note", "reset the password"),
             "ticket resolve by {user}: resolved ticket 1; the customer was told"),
            (("inbound", "retry"), "inbound retry by {user}: no failed messages to retry"),
        ]
        for argv, expected in steps:
            mailbot(capsys, config, *argv)
            wanted = [audit_line(expected.format(user=USER))] if expected else []
            assert syslog.received() == wanted, argv

    def test_reading_sends_nothing(self, capsys: pytest.CaptureFixture[str], syslog: Syslog, config: Path,
                                   tmp_path: Path) -> None:
        mail = tmp_path / "in.eml"
        mail.write_bytes(message())
        for argv in (("db", "upgrade"), ("org", "add", "Lincoln High", "--product", "full", "--plan", "silver"),
                     ("ingest", str(mail))):
            mailbot(capsys, config, *argv)
        syslog.received()
        for argv in (("ticket", "list"), ("ticket", "show", "1"), ("ticket", "list", "--json"), ("org", "list"),
                     ("contact", "list"), ("specialist", "list"), ("status",), ("inbound", "show", "1"),
                     ("inbound", "failed"), ("hours", "deadline", "now", "4h"), ("check-config",), ("parse", str(mail))):
            mailbot(capsys, config, *argv)
            assert syslog.received() == [], argv

    def test_a_refused_change_changed_nothing_and_says_nothing(
        self, capsys: pytest.CaptureFixture[str], syslog: Syslog, config: Path
    ) -> None:
        mailbot(capsys, config, "db", "upgrade")
        syslog.received()
        code, _, err = run_cli(capsys, "--config", str(config), "ticket", "assign", "9", "sam@schoolmint.com")
        assert code == 1 and err.startswith("mailbot: ")
        assert syslog.received() == []

    def test_a_socket_nobody_listens_on(self, capsys: pytest.CaptureFixture[str], syslog: Syslog,
                                        config: Path) -> None:
        """A syslog daemon that stopped and left its socket file: the change is done, no error is shown."""
        syslog.socket.close()
        code, out, err = run_cli(capsys, "--config", str(config), "db", "upgrade")
        assert (code, out, err) == (0, "schema is up to date (sqlite)\n", "")

    def test_off(self, capsys: pytest.CaptureFixture[str], syslog: Syslog, config: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MAILBOT_AUDIT", "off")
        mailbot(capsys, config, "db", "upgrade")
        mailbot(capsys, config, "specialist", "add", "sam@schoolmint.com", "--name", "Sam Lee")
        assert syslog.received() == []

    def test_a_file_name_cannot_forge_a_line(self, capsys: pytest.CaptureFixture[str], syslog: Syslog,
                                             config: Path, tmp_path: Path) -> None:
        mailbot(capsys, config, "db", "upgrade")
        mailbot(capsys, config, "org", "add", "Lincoln High", "--product", "full", "--plan", "silver")
        csv = tmp_path / "x\x1b[2J\nFAKE.csv"
        csv.write_text("email,org\nana@lincoln.example,Lincoln High\n")
        syslog.received()
        mailbot(capsys, config, "contact", "import", str(csv))
        [line] = syslog.received()
        assert line.endswith("x\\u001b[2J; FAKE.csv") and "\x1b" not in line and "\n" not in line
        assert line.startswith(audit_line(f"contact import by {USER}: imported 1 contact(s) from {tmp_path}/x"))


class TestProcess:
    """`mailbot` as an operator's shell or a systemd unit starts it."""

    @staticmethod
    def run(config: Path, syslog: Syslog, *argv: str, stderr: int | object = subprocess.PIPE,
            **environ: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "SUDO_USER")}
        env |= {"MAILBOT_SYSLOG_SOCKET": str(syslog.path), **environ}
        done = subprocess.run([sys.executable, "-m", "mailbot", "--config", str(config), *argv], stdout=subprocess.PIPE,
                              stderr=stderr, text=True, env=env, check=False, timeout=60)
        assert done.returncode == 0, done.stderr
        return done

    def test_a_shell_behind_sudo(self, syslog: Syslog, config: Path) -> None:
        self.run(config, syslog, "db", "upgrade")
        syslog.received()
        done = self.run(config, syslog, "org", "add", "Lincoln High", "--product", "full", "--plan", "silver",
                        SUDO_USER="alice")
        said = f"org add by {USER} (logged in as alice): added organization 1 Lincoln High: product full, plan silver"
        [line] = syslog.received()
        prefix, _, rest = line.partition("]: ")
        assert prefix.startswith(f"{DAEMON_INFO}mailbot[") and int(prefix.split("[")[1]) > 0
        assert rest.startswith(f"INFO mailbot.audit: {said}")
        assert f"INFO mailbot.audit: {said}" in done.stderr  # and on stderr, like every log line

    def test_under_systemd_the_journal_gets_it_once(self, syslog: Syslog, config: Path, tmp_path: Path) -> None:
        """A unit's ExecStartPre=mailbot db upgrade: stderr is the journal already, so not the socket too."""
        with (tmp_path / "journal").open("w+") as journal:
            found = os.fstat(journal.fileno())
            self.run(config, syslog, "db", "upgrade", stderr=journal, JOURNAL_STREAM=f"{found.st_dev}:{found.st_ino}")
            journal.seek(0)
            lines = journal.read().splitlines()
        assert f"<6>INFO mailbot.audit: db upgrade by {USER}: schema is up to date (sqlite)" in lines
        assert syslog.received() == []
