"""`mailbot hours deadline START DURATION`: the business clock from the command line (DOMAIN.md's examples)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from mailbot.app import App
from mailbot.cli.hours import cmd_deadline
from mailbot.clock import FrozenClock
from tests.conftest import run_cli

CONFIG = """
[business_hours]
timezone = "America/New_York"
holidays = ["2026-11-26", "2026-12-25"]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def deadline(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    code, out, err = run_cli(capsys, "--config", str(config), "hours", "deadline", "--", *argv)  # "-1h" is no option
    return code, out.strip(), err.strip()


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("2026-12-01T10:00:00-05:00", "2026-12-01T14:00:00-05:00"),  # Tue 10:00 -> Tue 14:00
        ("2026-12-04T17:00:00-05:00", "2026-12-07T11:00:00-05:00"),  # Fri 17:00 -> Mon 11:00
        ("2026-12-05T09:00:00-05:00", "2026-12-07T12:00:00-05:00"),  # Sat 09:00 -> Mon 12:00
        ("2026-12-02T20:00:00-05:00", "2026-12-03T12:00:00-05:00"),  # Wed 20:00 -> Thu 12:00
        ("2026-11-26T09:00:00-05:00", "2026-11-27T12:00:00-05:00"),  # Thanksgiving 09:00 -> Fri 12:00
        ("2026-12-01T14:00:00-05:00", "2026-12-01T18:00:00-05:00"),  # ends at closing: that instant
        ("2026-12-01T19:00:00Z", "2026-12-01T18:00:00-05:00"),  # any offset in, Eastern out
        ("2027-03-12T17:00:00-05:00", "2027-03-15T11:00:00-04:00"),  # across spring forward
        ("2026-10-30T17:00:00-04:00", "2026-11-02T11:00:00-05:00"),  # across fall back
    ],
)
def test_domain_examples(
    capsys: pytest.CaptureFixture[str], config_file: Path, start: str, expected: str
) -> None:
    code, out, err = deadline(capsys, config_file, start, "4h")
    assert (code, out, err) == (0, expected, "")


def test_minutes_are_business_minutes(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    code, out, _ = deadline(capsys, config_file, "2026-12-04T17:30:00-05:00", "90m")
    assert (code, out) == (0, "2026-12-07T09:00:00-05:00")


@pytest.mark.parametrize(
    ("start", "duration", "message"),
    [
        ("yesterday", "4h", "is not \"now\" or an ISO 8601 time"),
        ("2026-13-04T17:00", "4h", "is not \"now\" or an ISO 8601 time"),
        ("2026-12-04T17:00:00-05:00", "4 hours", "DURATION"),
        ("2026-12-04T17:00:00-05:00", "-1h", "DURATION"),
    ],
)
def test_bad_input_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], config_file: Path, start: str, duration: str, message: str
) -> None:
    code, out, err = deadline(capsys, config_file, start, duration)
    assert code == 1 and out == ""
    assert message in err and err.count("\n") == 0 and "Traceback" not in err


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("2026-12-04T17:00", "2026-12-07T11:00:00-05:00"),  # no offset: Eastern time, as configured
        ("2026-12-04 17:00", "2026-12-07T11:00:00-05:00"),  # the space form people type
        ("2026-10-30T17:00:00", "2026-11-02T11:00:00-05:00"),  # local time in summer: -04:00 applies
        ("2026-12-04", "2026-12-04T12:00:00-05:00"),  # a date alone: its midnight, local
    ],
)
def test_local_times_are_business_time(
    capsys: pytest.CaptureFixture[str], config_file: Path, start: str, expected: str
) -> None:
    code, out, err = deadline(capsys, config_file, start, "4h")
    assert (code, out, err) == (0, expected, "")


def test_now_is_the_clock(
    make_app: Callable[..., App], clock: FrozenClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """"now" reads the injected clock: Friday 2026-12-04 17:00 Eastern -> Monday 11:00."""
    clock.set(datetime(2026, 12, 4, 22, 0, 30, 123456, tzinfo=UTC))
    args = argparse.Namespace(start="now", duration="4h")
    assert cmd_deadline(args, SimpleNamespace(app=make_app())) == 0
    assert capsys.readouterr().out.strip() == "2026-12-07T11:00:30-05:00"
