"""Log lines an operator can use: journald priorities under systemd, JSON lines on request, a reason for
every decision. The commands run as real processes, as systemd or a shell starts them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailbot import logs
from mailbot.cli import main
from tests.mailers import message
from tests.test_cli import CONFIG, CUSTOMER


def record(level: int, text: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("mailbot.intake", level, __file__, 1, text, None, exc_info)


class TestChoice:
    @pytest.mark.parametrize(("environ", "chosen"), [
        ({}, "text"),
        ({"JOURNAL_STREAM": "8:1234"}, "journal"),
        ({"INVOCATION_ID": "0123abcd"}, "journal"),
        ({"INVOCATION_ID": "0123abcd", "MAILBOT_LOG_FORMAT": "json"}, "json"),
        ({"MAILBOT_LOG_FORMAT": "JSON"}, "json"),
        ({"MAILBOT_LOG_FORMAT": "text", "JOURNAL_STREAM": "8:1234"}, "text"),
    ])
    def test_format_from_the_environment(self, environ: dict[str, str], chosen: str) -> None:
        assert logs.chosen_format(environ) == (chosen, None)

    def test_an_unknown_format_is_said_and_not_fatal(self) -> None:
        assert logs.chosen_format({"MAILBOT_LOG_FORMAT": "xml"}) == (
            "text", "MAILBOT_LOG_FORMAT='xml' is not one of text, journal, json; logging as text")


class TestFormatters:
    @pytest.mark.parametrize(("level", "prefix"), [
        (logging.DEBUG, "<7>"), (logging.INFO, "<6>"), (logging.WARNING, "<4>"), (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
    ])
    def test_journal_priorities(self, level: int, prefix: str) -> None:
        line = logs.JournalFormatter().format(record(level, "inbound 3: failed: why"))
        assert line == f"{prefix}{logging.getLevelName(level)} mailbot.intake: inbound 3: failed: why"

    def test_every_line_of_a_traceback_keeps_the_priority(self) -> None:
        lines = logs.JournalFormatter().format(record(logging.ERROR, "it broke", exc=True)).splitlines()
        assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
        assert lines[-1] == "<3>ValueError: boom"

    def test_json_lines(self) -> None:
        entry = json.loads(logs.JsonFormatter().format(record(logging.ERROR, "it broke", exc=True)))
        assert set(entry) == {"time", "level", "logger", "message", "traceback"}
        assert (entry["level"], entry["logger"], entry["message"]) == ("error", "mailbot.intake", "it broke")
        assert entry["time"].endswith("+00:00") and entry["traceback"].endswith("ValueError: boom")


class TestCommands:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(CONFIG.format(db=tmp_path / "mailbot.db", port=0, sent=tmp_path / "sent"))
        for argv in (("db", "upgrade"), *CUSTOMER):  # in this process: only the commands under test start one
            assert main(["--config", str(path), *argv]) == 0
        return path

    @staticmethod
    def mailbot(config: Path, *argv: str, stdin: bytes = b"", **environ: str) -> str:
        """Run the command as a process with the environment given; its stderr."""
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")} | environ
        done = subprocess.run([sys.executable, "-m", "mailbot", "--config", str(config), *argv], input=stdin,
                              capture_output=True, env=env, check=False, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stderr.decode()

    def test_under_systemd_errors_are_marked_as_errors(self, config: Path) -> None:
        one = "<one@elsewhere.example>"
        held = self.mailbot(config, "ingest", "-", stdin=message(sender="zoe@elsewhere.example", message_id=one),
                            INVOCATION_ID="4bd1e5c3")
        # The same Message-ID from someone else: processed as a new message, the collision a warning.
        collided = self.mailbot(config, "ingest", "-", stdin=message(sender="eve@elsewhere.example", message_id=one),
                                INVOCATION_ID="4bd1e5c3")
        [decision] = [line for line in held.splitlines() if "mailbot.intake" in line]
        assert decision.startswith("<6>INFO mailbot.intake: inbound 1 from -: held: ticket 1; ")
        assert "the sender is not a named contact" in decision
        [warning] = [line for line in collided.splitlines() if line.startswith("<4>")]
        assert warning.startswith("<4>WARNING mailbot.intake: inbound 2: Message-ID ")

    def test_json_lines_on_request(self, config: Path) -> None:
        err = self.mailbot(config, "ingest", "-", stdin=message(), MAILBOT_LOG_FORMAT="json")
        entries = [json.loads(line) for line in err.splitlines()]
        [decision] = [e for e in entries if e["logger"] == "mailbot.intake"]
        assert decision["level"] == "info"
        assert decision["message"].startswith("inbound 1 from -: created: ticket 1; ana@lincoln.example is a named")
