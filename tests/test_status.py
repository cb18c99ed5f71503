"""`mailbot status`: the operator's one screen, and its JSON as INTERFACE.md shows it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.store import inbound as inbound_store
from mailbot.store import overview
from mailbot.store.schema import Ticket
from tests.mailers import message
from tests.test_cli import CONFIG, CUSTOMER, run

LONG_AGO = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def cfg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(db=tmp_path / "mailbot.db", port=0, sent=tmp_path / "sent"))
    cfg = ("--config", str(path))
    assert run(capsys, *cfg, "db", "upgrade")[0] == 0
    for argv in CUSTOMER:
        assert run(capsys, *cfg, *argv)[0] == 0
    return cfg


def test_an_empty_database(cfg: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *cfg, "status", "--json")
    assert code == 0
    assert json.loads(out) == {
        "inbound": {"pending": 0, "oldest_pending_seconds": None, "failed": 0},
        "outbox": {"due": 0, "oldest_due_seconds": None, "failing": 0, "refused": 0},
        "tickets": {"new": 0, "open": 0, "held": 0, "resolved": 0},
        "sla": {"at_risk": 0, "breached": 0},
        "last_received_at": None,
    }


def test_backlog_tickets_and_sla(cfg: tuple[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for number, sender in enumerate(["ana@lincoln.example", "ana@lincoln.example", "zoe@elsewhere.example"]):
        path = tmp_path / f"{number}.eml"
        path.write_bytes(message(sender=sender, message_id=f"<s{number}@x.example>"))
        assert run(capsys, *cfg, "ingest", str(path))[0] == 0
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'mailbot.db'}")
    with sa.orm.Session(engine) as session, session.begin():  # stored by a door, not taken by any intake yet
        inbound_store.insert_many(session, [inbound_store.RawMessage(message(), "smtp")], LONG_AGO)
        session.execute(sa.update(Ticket).where(Ticket.id == 1).values(sla_breach="BREACHED: confirmation late"))
    engine.dispose()
    code, out, _ = run(capsys, *cfg, "status", "--json")
    status = json.loads(out)
    assert code == 0
    assert status["inbound"]["pending"] == 1 and status["inbound"]["failed"] == 0
    assert status["inbound"]["oldest_pending_seconds"] > 3600 * 24  # the commands read the system clock
    assert status["outbox"]["due"] == 2  # two confirmations (no explanation: senders are not authenticated)
    assert status["tickets"] == {"new": 2, "open": 0, "held": 1, "resolved": 0}
    assert status["sla"] == {"at_risk": 0, "breached": 1}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", status["last_received_at"])

    code, out, _ = run(capsys, *cfg, "status")
    lines = out.splitlines()
    assert code == 0 and [line.split()[0] for line in lines] == ["inbound", "outbox", "tickets", "sla", "received"]
    assert re.fullmatch(r"inbound +1 pending \(the oldest waiting \d+h\d\dm\), 0 failed", lines[0])
    assert lines[2].split(None, 1)[1] == "2 new, 0 open, 1 held, 0 resolved"
    assert lines[3].split(None, 1)[1] == "0 at risk, 1 breached"


def test_ages_come_from_the_clock(make_app: Callable[..., App], db_url: str, clock: FrozenClock) -> None:
    """The same query as the gauges of /metrics (mailbot.store.overview), at an injected instant."""
    app = make_app(db=db_url)
    app.db.call(inbound_store.insert_many, [inbound_store.RawMessage(message(), "smtp")], clock.now())
    clock.advance(timedelta(minutes=90))
    state = app.db.call(overview.read, clock.now())
    assert state.to_json()["inbound"] == {"pending": 1, "oldest_pending_seconds": 5400.0, "failed": 0}
    assert state.to_json()["last_received_at"] == (clock.now() - timedelta(minutes=90)).isoformat()
    assert app.processor.run_once()[0].action == "created"
    state = app.db.call(overview.read, clock.now())
    assert state.inbound_pending == 0 and state.inbound_oldest_pending_seconds is None
    assert (state.outbox_due, state.outbox_oldest_due_seconds) == (1, 0.0)  # the confirmation, due at once


async def test_sla_counts_follow_the_findings_of_the_sweep(app: App, clock: FrozenClock) -> None:
    """Nobody on the team: the introduction is at risk before its deadline and breached after it."""
    app.db.call(inbound_store.insert_many, [inbound_store.RawMessage(message(), "smtp")], clock.now())
    assert app.processor.run_once()[0].action == "created"  # Tuesday 10:00 ET: introduction due 14:00
    assert await app.sender.drain() == 1  # the confirmation, in time
    clock.advance(timedelta(hours=3, minutes=50))
    app.sla.sweep_once()
    state = app.db.call(overview.read, clock.now())
    assert (state.sla_at_risk, state.sla_breached) == (1, 0)
    clock.advance(timedelta(minutes=11))
    app.sla.sweep_once()
    state = app.db.call(overview.read, clock.now())
    assert (state.sla_at_risk, state.sla_breached) == (0, 1)
