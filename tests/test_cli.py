"""The commands of INTERFACE.md for the spine, as users and scripts run them."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailbot.cli import main
from mailbot.clock import FrozenClock
from tests.conftest import TUESDAY_10_ET, run_cli
from tests.mailers import message, smtp_send

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[database]
url = "sqlite:///{db}"
[smtp]
host = "127.0.0.1"
port = {port}
[outbound]
transport = "maildir"
maildir = "{sent}"
[security]
require_sender_auth = false
"""
# The test sender, ana@lincoln.example, registered as a named contact (README's quick start).
CUSTOMER = (
    ("org", "add", "Lincoln High", "--product", "full", "--plan", "silver"),
    ("contact", "add", "ana@lincoln.example", "--org", "Lincoln High", "--name", "Ana Diaz"),
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, *argv)


class TestConfig:
    def test_shipped_config_is_valid(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(capsys, "--config", str(ROOT / "config.toml"), "check-config")
        assert code == 0 and out.strip().endswith("OK")

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("[smtp]\nport = 'x'\n", "smtp.port"),
            ("[smtpx]\nport = 1\n", "smtpx: unknown key"),
            ("[sla]\nconfirmation_within = '1 hour'\n", 'sla.confirmation_within: expected a duration like "30s"'),
            ("[smtp]\nmax_message_size = 'big'\n", "smtp.max_message_size"),
            ("[business_hours]\ntimezone = 'Mars/Olympus'\n", "business_hours"),
            ("[[imap]]\nhost = '10.1.1.1'\nusername = 'u'\npassword = 'p'\nsecurity = 'none'\n", "loopback"),
            ("[smtp\n", "not valid TOML"),
            ("[daemon]\nlayout = 2\n", "daemon.layout: Input should be 'auto', 'processes' or 'single'"),
        ],
    )
    def test_bad_config_refused_in_one_line(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, expected: str
    ) -> None:
        path = tmp_path / "bad.toml"
        path.write_text(text)
        code, _, err = run(capsys, "--config", str(path), "check-config")
        assert code == 1
        assert expected in err and err.count("\n") == 1 and "Traceback" not in err

    def test_missing_config(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        code, _, err = run(capsys, "--config", str(tmp_path / "none.toml"), "check-config")
        assert code == 1 and "no such configuration file" in err

    def test_config_from_environment(self, capsys: pytest.CaptureFixture[str], config_file: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MAILBOT_CONFIG", str(config_file))
        code, out, _ = run(capsys, "check-config")
        assert code == 0 and str(config_file) in out

    def test_usage_error_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run(capsys, "frobnicate")
        assert code == 2 and "invalid choice" in err


class TestParse:
    def test_parse_prints_interface_json(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        path = tmp_path / "m.eml"
        path.write_bytes(message(message_id="<p@lincoln.example>"))
        code, out, _ = run(capsys, "parse", str(path))
        data = json.loads(out)
        assert code == 0
        assert {"message_id", "from", "to", "cc", "reply_to", "subject", "date", "in_reply_to", "references",
                "text", "html", "attachments", "auto_submitted", "bounce"} <= set(data)
        assert data["from"] == {"name": "Ana Diaz", "address": "ana@lincoln.example"}
        assert data["message_id"] == "<p@lincoln.example>"

    def test_parse_needs_no_configuration(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        path = tmp_path / "m.eml"
        path.write_bytes(message())
        code, _, _ = run(capsys, "--config", str(tmp_path / "absent.toml"), "parse", str(path))
        assert code == 0

    def test_unreadable_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        code, _, err = run(capsys, "parse", str(tmp_path / "nope.eml"))
        assert code == 1 and "cannot read" in err


class TestIngestAndTickets:
    def test_ingest_then_list_and_show(self, capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path) -> None:
        cfg = ("--config", str(config_file))
        assert run(capsys, *cfg, "db", "upgrade")[0] == 0
        for argv in CUSTOMER:  # the sender is a named contact, so the message is entitled
            assert run(capsys, *cfg, *argv)[0] == 0
        path = tmp_path / "m.eml"
        path.write_bytes(message(message_id="<i@lincoln.example>"))
        code, out, _ = run(capsys, *cfg, "ingest", str(path))
        assert code == 0 and json.loads(out) == {"ticket": 1, "action": "created"}
        code, out, _ = run(capsys, *cfg, "ingest", str(path))
        assert json.loads(out) == {"ticket": None, "action": "duplicate"}
        code, out, _ = run(capsys, *cfg, "ticket", "list", "--json")
        [ticket] = json.loads(out)
        assert ticket["id"] == 1 and ticket["status"] == "new" and ticket["requester"] == "ana@lincoln.example"
        assert re.match(r"\d{4}-\d\d-\d\dT.*[+-]\d\d:\d\d$", ticket["created_at"])
        code, out, _ = run(capsys, *cfg, "ticket", "show", "1", "--json")
        shown = json.loads(out)
        assert [m["kind"] for m in shown["messages"]] == ["customer", "confirmation"]
        assert shown["messages"][0]["message_id"] == "<i@lincoln.example>"
        code, out, _ = run(capsys, *cfg, "ticket", "list", "--status", "held", "--json")
        assert json.loads(out) == []
        code, _, err = run(capsys, *cfg, "ticket", "show", "99")
        assert code == 1 and "no ticket 99" in err
        # What people read shows times in the business time zone with the offset, to the minute.
        local = r"\d{4}-\d\d-\d\d \d\d:\d\d [+-]\d\d:\d\d"
        code, out, _ = run(capsys, *cfg, "ticket", "show", "1")
        assert re.search(rf"^created at\s+{local}$", out, re.MULTILINE) and re.search(rf"--- in customer {local} ", out)
        from mailbot.intake import reading as intake

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a bug in the reader")  # failed is left for our own bugs

        path.write_bytes(message(message_id="<bug@lincoln.example>"))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(intake, "read_message", broken)
            run(capsys, *cfg, "ingest", str(path))
        code, out, _ = run(capsys, *cfg, "inbound", "failed")
        header, row = out.splitlines()
        assert code == 0 and header.split()[:2] == ["ID", "RECEIVED"] and re.match(rf"\d+\s+{local}\s+cli ", row), out

    def test_ingest_exits_75_when_it_cannot_store(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """An MTA piping into `mailbot ingest` must retry, so a store failure is EX_TEMPFAIL."""
        db = tmp_path / "mailbot.db"
        config = tmp_path / "c.toml"
        text = CONFIG.format(db=db, port=0, sent=tmp_path / "sent")
        config.write_text(text.replace("[database]\n", '[database]\nlock_timeout = "100ms"\n'))
        assert run(capsys, "--config", str(config), "db", "upgrade")[0] == 0
        blocker = sqlite3.connect(db, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            path = tmp_path / "m.eml"
            path.write_bytes(message())
            code, _, err = run(capsys, "--config", str(config), "ingest", str(path))
        finally:
            blocker.rollback()
            blocker.close()
        assert code == 75 and "temporary failure" in err and "Traceback" not in err

    def test_run_refuses_an_old_schema(self, capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
        code, _, err = run(capsys, "--config", str(config_file), "run")
        assert code == 1 and "mailbot db upgrade" in err


@pytest.mark.calendar  # the real `mailbot run` reads the system clock
class TestDaemonProcess:
    def test_sigterm_drains_and_exits_0(self, config_file: Path, tmp_path: Path) -> None:
        """The real `mailbot run`: accepts mail, then SIGTERM stops it cleanly with exit 0."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        subprocess.run([sys.executable, "-m", "mailbot", "--config", str(config_file), "db", "upgrade"], check=True,
                       env=env, capture_output=True)
        for argv in CUSTOMER:
            assert main(["--config", str(config_file), *argv], clock=FrozenClock(TUESDAY_10_ET)) == 0
        process = subprocess.Popen([sys.executable, "-m", "mailbot", "--config", str(config_file), "run"],
                                   env=env, stderr=subprocess.PIPE, text=True)
        try:
            port = None
            deadline = time.monotonic() + 20
            assert process.stderr is not None
            while port is None and time.monotonic() < deadline:
                line = process.stderr.readline()
                if match := re.search(r"listening for SMTP on \('127\.0\.0\.1', (\d+)\)", line):
                    port = int(match[1])
            assert port, "the daemon did not report its port"
            assert smtp_send(port, message()) == {}
            for _ in range(200):
                if list((tmp_path / "sent" / "new").glob("*")):
                    break
                time.sleep(0.05)
            assert list((tmp_path / "sent" / "new").glob("*")), "no confirmation written"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
            rest = process.stderr.read()
            assert "mailbot stopped" in rest and "Traceback" not in rest
        finally:
            if process.poll() is None:
                process.kill()


class TestShippedConfigurations:
    def test_production_example_is_valid_and_trusts_nothing(self) -> None:
        """systemd/config.toml loads, and keeps the production defaults: proof of the sender required."""
        from mailbot.config import load

        config = load(ROOT / "systemd" / "config.toml")
        assert config.security.require_sender_auth and not config.security.trust_local_submission
        assert config.outbound.dkim is not None and config.smtp.protocol == "lmtp"

    def test_trial_config_says_what_it_trusts(self) -> None:
        from mailbot.config import load

        config = load(ROOT / "config.toml")
        assert config.security.require_sender_auth and config.security.trust_local_submission
        assert config.outbound.transport == "maildir" and config.smtp.host == "127.0.0.1"


class TestStandardInput:
    def test_parse_and_ingest_read_a_pipe(self, config_file: Path) -> None:
        """`FILE|-`: an MTA pipes the message in, as with Postfix's pipe(8) or a .forward."""
        raw = message(message_id="<piped@lincoln.example>")
        command = [sys.executable, "-m", "mailbot", "--config", str(config_file)]
        parsed = subprocess.run([*command, "parse", "-"], input=raw, capture_output=True, check=True)
        assert json.loads(parsed.stdout)["message_id"] == "<piped@lincoln.example>"
        subprocess.run([*command, "db", "upgrade"], capture_output=True, check=True)
        ingested = subprocess.run([*command, "ingest", "-"], input=raw, capture_output=True, check=True)
        outcome = json.loads(ingested.stdout)
        assert outcome["action"] == "held" and isinstance(outcome["ticket"], int)  # not a registered contact
