"""The decision trail: every rule the intake ran on a message, its verdict and why, kept on the message's
row, shown by `mailbot inbound show`, and the reason in the daemon's log line."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.config import load
from mailbot.dns import FixedResolver
from mailbot.store import inbound as inbound_store
from mailbot.store.inbound import RawMessage
from mailbot.store.schema import InboundMessage
from mailbot.trail import Trail
from tests.mailers import message
from tests.test_cli import run
from tests.test_entitlement_flow import SECURE, key, signed  # noqa: F401  (key: the module's RSA key fixture)
from tests.test_status import cfg  # noqa: F401  (the fixture: a migrated database with the test customer)

NEW_TICKET_STEPS = ["reading", "authentication", "automatic mail", "duplicate", "threading", "entitlement", "decision"]


def store(app: App, *raws: bytes, sender: str = "ana@lincoln.example", source: str = "smtp") -> list[int]:
    return app.db.call(
        inbound_store.insert_many, [RawMessage(raw, source, sender, ("herosupport@schoolmint.com",)) for raw in raws],
        app.clock.now(),
    )


def trail_of(app: App, inbound_id: int) -> list[dict[str, Any]]:
    def read(session: Session) -> list[dict[str, Any]]:
        return session.get_one(InboundMessage, inbound_id).trail or []

    return app.db.call(read)


def verdicts(steps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(s["step"], s["verdict"]) for s in steps]


class TestTrail:
    def test_timings_are_the_time_between_steps(self) -> None:
        ticks = iter([10.0, 10.002, 10.0025])
        trail = Trail(timer=lambda: next(ticks))
        trail.add("reading", "parsed", "<a@b>")
        trail.add("authentication", "fail")
        assert [(s.step, s.ms) for s in trail.steps] == [("reading", 2.0), ("authentication", 0.5)]
        assert trail.reason == "<a@b>"  # the last step that says why


class TestRecorded:
    def test_a_new_ticket_records_every_rule_in_order(self, make_app: Callable[..., App], db_url: str) -> None:
        app = make_app(db=db_url)
        [inbound_id] = store(app, message(message_id="<t1@lincoln.example>"))
        outcome = app.processor.process_one(inbound_id)
        steps = trail_of(app, inbound_id)
        assert [s["step"] for s in steps] == NEW_TICKET_STEPS
        assert verdicts(steps) == [
            ("reading", "parsed"), ("authentication", "pass"), ("automatic mail", "written by a person"),
            ("duplicate", "new"), ("threading", "new conversation"), ("entitlement", "entitled"),
            ("decision", "created"),
        ]
        assert "<t1@lincoln.example>" in steps[0]["detail"] and "Login broken" in steps[0]["detail"]
        assert steps[1]["detail"].startswith("trusted-path: ")
        assert "ana@lincoln.example is a named contact of Lincoln High" in steps[5]["detail"]
        assert steps[-1]["detail"].startswith(f"ticket {outcome.ticket_id}; ")
        assert all(isinstance(s["ms"], float) and s["ms"] >= 0 for s in steps)

    def test_a_hold_says_why(self, app: App, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="mailbot.intake")
        [inbound_id] = store(app, message(sender="zoe@elsewhere.example"), sender="zoe@elsewhere.example")
        outcome = app.processor.process_one(inbound_id)
        steps = trail_of(app, inbound_id)
        assert outcome.action == "held"
        assert steps[-2]["step"] == "entitlement" and steps[-2]["verdict"] == "unknown-sender"
        assert steps[-1]["verdict"] == "held" and "not a named contact" in steps[-1]["detail"]
        [line] = [r for r in caplog.records if r.name == "mailbot.intake"]
        assert line.levelno == logging.INFO
        assert line.getMessage() == (
            f"inbound {inbound_id} from zoe@elsewhere.example: held: {steps[-1]['detail']}"
        )

    def test_a_reply_records_the_ticket_it_joined_and_how(self, app: App) -> None:
        first = message(message_id="<q1@lincoln.example>")
        reply = message(message_id="<q2@lincoln.example>", headers={"In-Reply-To": "<q1@lincoln.example>"})
        one, two = store(app, first, reply)
        assert [o.action for o in app.processor.run_once()] == ["created", "threaded"]
        steps = trail_of(app, two)
        assert [s["step"] for s in steps] == [
            "reading", "authentication", "automatic mail", "duplicate", "threading", "decision"
        ]
        assert steps[3]["verdict"] == "new" and steps[4]["verdict"] == "threaded"
        assert "ticket #1 by its Message-ID <q1@lincoln.example>" in steps[4]["detail"]
        assert [s["step"] for s in trail_of(app, one)][-2:] == ["entitlement", "decision"]

    def test_automatic_mail_is_held_unjudged(self, app: App) -> None:
        raw = message(message_id="<ooo@lincoln.example>", headers={"Auto-Submitted": "auto-replied"})
        [inbound_id] = store(app, raw)
        assert app.processor.process_one(inbound_id).action == "held"
        steps = {s["step"]: s for s in trail_of(app, inbound_id)}
        assert steps["automatic mail"]["verdict"] == "automatic"
        assert "Auto-Submitted" in steps["automatic mail"]["detail"]
        assert steps["entitlement"]["verdict"] == "not judged"

    def test_a_duplicate_names_the_message_it_repeats(self, app: App) -> None:
        raw = message(message_id="<dup@lincoln.example>")
        first, again = store(app, raw), store(app, raw)
        app.processor.process_one(first[0])
        assert app.processor.process_one(again[0]).action == "duplicate"
        steps = trail_of(app, again[0])
        assert verdicts(steps)[-2:] == [("duplicate", "duplicate"), ("decision", "duplicate")]
        assert "<dup@lincoln.example> is already stored" in steps[-2]["detail"]

    def test_a_message_past_the_limits_is_read_degraded(self, app: App, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="mailbot.intake")
        deep = b"From: x@lincoln.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + (
            b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" * 600)
        [inbound_id] = store(app, deep)
        assert app.processor.process_one(inbound_id).action == "held"
        steps = trail_of(app, inbound_id)
        assert verdicts(steps)[0] == ("reading", "degraded") and "nested" in steps[0]["detail"]
        assert verdicts(steps)[-1] == ("decision", "held")
        [line] = [r for r in caplog.records if r.name == "mailbot.intake"]
        assert line.levelno == logging.INFO and ": held: " in line.getMessage()

    def test_a_failure_keeps_the_steps_before_it(self, app: App, monkeypatch: pytest.MonkeyPatch) -> None:
        def exploding(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("a bug in the workflow")

        monkeypatch.setattr(app.workflow, "start_clock", exploding)
        [inbound_id] = store(app, message())
        assert [o.action for o in app.processor.run_once()] == ["failed"]
        steps = trail_of(app, inbound_id)
        assert [s["step"] for s in steps] == NEW_TICKET_STEPS
        assert steps[-1]["verdict"] == "failed" and steps[-1]["detail"] == "RuntimeError: a bug in the workflow"


class TestDeferred:
    def test_a_dns_failure_is_recorded_on_the_pending_message(
        self, make_app: Callable[..., App], key: tuple[bytes, bytes], clock: FrozenClock  # noqa: F811
    ) -> None:
        app = make_app(SECURE, resolver=FixedResolver({}, failing=["sel._domainkey.lincoln.example"]))
        [inbound_id] = store(app, signed(message(), key))
        [outcome] = app.processor.run_once()
        steps = trail_of(app, inbound_id)
        assert outcome.action == "deferred"
        assert steps[1]["step"] == "authentication" and steps[1]["verdict"] == "temporary failure"
        assert steps[-1]["verdict"] == "deferred" and "tried again after" in steps[-1]["detail"]


class TestInboundShow:
    """Through the command line, on a migrated database with Lincoln High and Ana (tests.test_status.cfg)."""

    def test_json_as_the_interface_shows_it(
        self, cfg: tuple[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path  # noqa: F811
    ) -> None:
        path = tmp_path / "m.eml"
        path.write_bytes(message(message_id="<show@lincoln.example>"))
        assert run(capsys, *cfg, "ingest", str(path))[0] == 0
        code, out, _ = run(capsys, *cfg, "inbound", "show", "1", "--json")
        shown = json.loads(out)
        assert code == 0
        assert {k: shown[k] for k in ("id", "status", "action", "ticket", "door", "envelope_from")} == {
            "id": 1, "status": "done", "action": "created", "ticket": 1, "door": "ingest", "envelope_from": None,
        }
        assert shown["received_at"].endswith("+00:00")
        assert [s["step"] for s in shown["steps"]] == NEW_TICKET_STEPS
        assert all(set(s) >= {"step", "verdict", "detail"} for s in shown["steps"])

    def test_text_has_one_line_per_step(
        self, cfg: tuple[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path  # noqa: F811
    ) -> None:
        path = tmp_path / "m.eml"
        path.write_bytes(message(sender="zoe@elsewhere.example"))
        run(capsys, *cfg, "ingest", str(path))
        code, out, _ = run(capsys, *cfg, "inbound", "show", "1")
        lines = out.splitlines()
        assert code == 0 and lines[0] == "inbound 1: done, held, ticket 1"
        assert len(lines) == 2 + len(NEW_TICKET_STEPS)
        assert lines[-2].split()[:2] == ["entitlement", "unknown-sender:"]
        step, rest = lines[-1].split(maxsplit=1)
        assert step == "decision" and rest.startswith("held: ticket 1; the sender is not a named contact")

    def test_a_message_not_processed_yet(self, cfg: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
        app = App(load(cfg[1]))
        store(app, message())  # stored by a door; no intake ran
        app.close()
        code, out, _ = run(capsys, *cfg, "inbound", "show", "1", "--json")
        shown = json.loads(out)
        assert (code, shown["status"], shown["action"], shown["ticket"], shown["steps"]) == (0, "pending", None, None, [])
        assert shown["door"] == "smtp" and shown["envelope_from"] == "ana@lincoln.example"
        code, out, _ = run(capsys, *cfg, "inbound", "show", "1")
        assert out.splitlines()[0] == "inbound 1: pending, not decided yet"
        assert "no decision trail recorded" in out

    def test_no_such_message(self, cfg: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
        code, out, err = run(capsys, *cfg, "inbound", "show", "42")
        assert (code, out, err) == (1, "", "mailbot: no inbound message 42\n")
