"""Recovery in seconds: short leases renewed while their holder lives, taken back at once after a restart,
given back on a clean stop; and a new ticket's own deadlines arming the sweep (mailbot.leases, the runners)."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.leases import LEASE, UNKNOWN, Leases, Owner, started, this_process
from mailbot.store import Database, registry
from mailbot.store import leases as lease_store
from mailbot.store import outbox as outbox_store
from mailbot.store.inbound import RawMessage, claim_pending, insert_many
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket
from tests.mailers import message
from tests.world import until

HERE = socket.gethostname()
ELSEWHERE = Owner("another-host", os.getpid(), "1")


def gone_pid() -> int:
    """The id of a process of this host that has ended (nothing runs under it now)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def store(app: App, count: int) -> list[int]:
    raws = [RawMessage(message(message_id=f"<m{n}@lincoln.example>"), "smtp", "ana@lincoln.example") for n in range(count)]
    return app.db.call(insert_many, raws, app.clock.now())


def claim_as(app: App, owner: Owner) -> list[int]:
    """Rows claimed by another instance, as it would have before it died."""
    rows = app.db.call(claim_pending, app.clock.now(), LEASE, 100, str(owner))
    return [row.id for row in rows]


def tickets(app: App) -> int:
    return int(app.db.call(lambda s: s.scalar(select(func.count()).select_from(Ticket))))


def pending(app: App) -> int:
    count = select(func.count()).select_from(InboundMessage).where(InboundMessage.status == "pending")
    return int(app.db.call(lambda s: s.scalar(count)))


class TestOwner:
    def test_names_round_trip(self) -> None:
        """A claim's holder is read back from the name it wrote, host names with dots and dashes included."""
        owner = Owner("mail-1.example.org", 4242, "987654")
        assert Owner.parse(str(owner)) == owner
        assert Owner.parse("instance-one") is None  # a name from elsewhere is nobody's predecessor

    def test_this_process_carries_its_start(self) -> None:
        me = this_process()
        assert (me.host, me.pid) == (HERE, os.getpid())
        assert me.start == started(os.getpid()) != UNKNOWN

    def test_a_gone_process_of_this_host_is_succeeded(self) -> None:
        me = this_process()
        assert Owner(HERE, 99, "5").succeeded_by(me, None)  # nothing runs under its id any more
        assert Owner(HERE, 99, "5").succeeded_by(me, "6")  # its id belongs to a newer process now
        assert Owner(HERE, me.pid, "5").succeeded_by(me, me.start)  # this very process id, an earlier start

    def test_a_live_process_or_another_host_is_not(self) -> None:
        me = this_process()
        assert not Owner(HERE, 99, "5").succeeded_by(me, "5")  # still running
        assert not me.succeeded_by(me, me.start)
        assert not Owner("other", 99, "5").succeeded_by(me, None)  # another host's process ids mean nothing here
        assert not Owner(HERE, 99, UNKNOWN).succeeded_by(me, None)  # its start unknown: wait for its lease

    def test_started_reads_the_system(self) -> None:
        assert started(gone_pid()) is None


class TestLeases:
    """On SQLite and PostgreSQL, with the injected clock."""

    @pytest.fixture
    def app(self, make_app: Callable[..., App], db_url: str) -> App:
        return make_app(db=db_url)

    def test_a_dead_instance_batch_is_free_after_one_short_lease(self, app: App, clock: FrozenClock) -> None:
        ids = store(app, 3)
        assert claim_as(app, ELSEWHERE) == ids
        clock.advance(LEASE - timedelta(seconds=1))
        assert app.processor.run_once() == []  # held: its holder may still be at work
        clock.advance(timedelta(seconds=2))
        assert [o.action for o in app.processor.run_once()] == ["created"] * 3
        assert tickets(app) == 3 and pending(app) == 0

    def test_a_live_instance_keeps_its_claims_by_renewing_them(self, app: App, clock: FrozenClock) -> None:
        store(app, 2)
        claim_as(app, ELSEWHERE)
        for _ in range(4):  # a minute and more of renewals, each within the lease
            clock.advance(LEASE - timedelta(seconds=5))
            assert app.db.call(lease_store.renew, str(ELSEWHERE), clock.now() + LEASE) == 2
            assert app.processor.run_once() == []
        clock.advance(LEASE + timedelta(seconds=1))  # the renewals stopped: it died
        assert len(app.processor.run_once()) == 2

    async def test_a_restart_takes_back_its_own_claims_at_once(self, app: App, clock: FrozenClock) -> None:
        """The instance that ran here before a kill -9: its rows are free at once; a live one's elsewhere not."""
        predecessor = Owner(HERE, gone_pid(), "12345")
        ours = store(app, 2)
        assert claim_as(app, predecessor) == ours
        store(app, 1)
        claim_as(app, ELSEWHERE)
        assert app.processor.run_once() == []
        assert await app.leases.take_back() == 2
        assert [o.action for o in app.processor.run_once()] == ["created", "created"]  # the same instant
        assert pending(app) == 1  # the other host's, until its lease runs out

    async def test_a_restart_takes_back_unsent_outbox_items(self, app: App, clock: FrozenClock) -> None:
        store(app, 1)
        [outcome] = app.processor.run_once()
        predecessor = Owner(HERE, gone_pid(), "12345")
        [item] = app.db.call(outbox_store.claim_due, clock.now(), str(predecessor), LEASE)
        assert await app.sender.drain() == 0  # claimed by the dead process
        assert await app.leases.take_back() == 1
        assert await app.sender.drain() == 1
        sent = app.db.call(lambda s: s.get_one(OutboxItem, item.id))
        assert (sent.status, sent.ticket_id) == ("sent", outcome.ticket_id)

    async def test_a_live_process_of_this_host_keeps_its_claims(self, app: App, clock: FrozenClock) -> None:
        store(app, 1)
        claim_as(app, this_process())  # another instance in this very process (as in tests): alive
        assert await app.leases.take_back() == 0
        assert app.processor.run_once() == []

    def test_rows_taken_over_after_a_stall_are_not_processed_twice(
        self, make_app: Callable[..., App], db_url: str, clock: FrozenClock
    ) -> None:
        """An instance that stalled past its lease (no renewal) finds its batch taken over: it decides none."""
        slow, fast = make_app(db=db_url), make_app(db=db_url)
        fast.leases = Leases(fast.db, clock, ELSEWHERE)  # another instance
        store(slow, 3)
        rows = slow.db.call(slow.processor._claim)
        readings = slow.processor._read(rows)
        clock.advance(LEASE + timedelta(seconds=1))
        assert [o.action for o in fast.processor.run_once()] == ["created"] * 3
        assert slow.db.call(slow.processor._decide, rows, readings) == []
        assert tickets(slow) == 3

    def test_rows_claimed_by_another_meanwhile_are_not_written(
        self, make_app: Callable[..., App], db_url: str, clock: FrozenClock
    ) -> None:
        """Taken over but not decided yet by the other instance: the stalled one's batch writes nothing (its
        outcomes would be written on rows it no longer holds), and the rows stay the other's, pending."""
        slow = make_app(db=db_url)
        store(slow, 3)
        rows = slow.db.call(slow.processor._claim)
        readings = slow.processor._read(rows)
        clock.advance(LEASE + timedelta(seconds=1))
        assert len(claim_as(slow, ELSEWHERE)) == 3
        assert slow.db.call(slow.processor._decide, rows, readings) == []
        assert (tickets(slow), pending(slow)) == (0, 3)

    async def test_a_stalled_sender_sends_nothing_more(self, app: App, clock: FrozenClock) -> None:
        """Its renewals late (a stall, a database out of reach): what it claimed may be another's by now."""
        store(app, 1)
        app.processor.run_once()
        app.leases._renewed = time.monotonic() - LEASE.total_seconds()  # the last renewal, a lease ago
        assert not app.leases.current()
        assert await app.sender.drain() == 0
        [item] = app.db.call(lambda s: list(s.scalars(select(OutboxItem))))
        assert (item.status, item.claimed_until) == ("pending", None)
        app.leases._renewed = time.monotonic()  # renewing again
        assert await app.sender.drain() == 1

    def test_only_the_holder_gives_an_item_back(self, app: App, clock: FrozenClock) -> None:
        store(app, 1)
        app.processor.run_once()
        [item] = app.db.call(outbox_store.claim_due, clock.now(), str(ELSEWHERE), LEASE)
        app.db.call(outbox_store.release, [item.id], app.leases.name)  # not ours: left alone
        assert app.db.call(lambda s: s.get_one(OutboxItem, item.id).claimed_by) == str(ELSEWHERE)
        app.db.call(outbox_store.release, [item.id], str(ELSEWHERE))
        assert app.db.call(lambda s: s.get_one(OutboxItem, item.id).claimed_until) is None

    async def test_a_clean_stop_gives_back_what_it_holds(self, app: App, clock: FrozenClock) -> None:
        store(app, 2)
        claim_as(app, app.leases.owner)
        assert app.processor.run_once() == []
        await app.leases.give_back()
        assert len(app.processor.run_once()) == 2  # the same instant


class TestDeadlinesArmTheSweep:
    def test_told_once_per_transaction_after_its_commit(self, make_app: Callable[..., App], clock: FrozenClock) -> None:
        """The earliest first instant of the batch's new tickets, once committed: with the shipped times, the
        confirmation's at-risk instant (due in 1 h, at risk 15 min before), ahead of the assignment (3 h)."""
        app = make_app()
        told: list[Any] = []
        app.workflow.deadlines = told.append
        store(app, 3)
        app.processor.run_once()
        [ticket, *_] = app.db.call(lambda s: list(s.scalars(select(Ticket).order_by(Ticket.id))))
        assert told == [ticket.confirmation_due_at - app.config.sla.at_risk_margin]

    def test_not_told_of_a_ticket_never_stored(self, make_app: Callable[..., App], clock: FrozenClock) -> None:
        app = make_app()
        told: list[Any] = []
        app.workflow.deadlines = told.append

        def opened_then_undone(session: Any) -> None:
            ticket = app.workflow.open_ticket(session, requester="ana@lincoln.example", requester_name="Ana",
                                              subject="x", now=clock.now())
            app.workflow.start_clock(session, ticket, clock.now())
            raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            app.db.call(opened_then_undone)
        assert told == [] and tickets(app) == 0

    async def test_a_new_ticket_is_assigned_at_its_instant_not_at_the_sweep(
        self, world: Callable[..., Any], clock: FrozenClock
    ) -> None:
        """24/7 hours, assignment after 1 s, a sweep every hour: the ticket's own instant wakes the sweep."""
        running = await world(
            {
                "business_hours": {"open_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "opens": "00:00",
                                   "closes": "24:00"},
                "sla": {"auto_assign_after": "1s", "introduction_within": "20s", "sweep_interval": "1h"},
            }
        )
        running.app.db.call(registry.add_specialist, "sam@schoolmint.com", "Sam Lee", clock.now())
        await running.send(message())
        await until(lambda: running.count(Ticket) == 1, "the ticket")
        ticket = running.ticket(1)
        assert ticket.specialist_id is None and ticket.assign_due_at == clock.now() + timedelta(seconds=1)
        clock.advance(timedelta(seconds=1))
        await until(lambda: running.ticket(1).specialist_id is not None, "the assignment at its instant")
        await running.settle()
        assert {"confirmation", "introduction"} <= {m.kind for m in running.outbox()}


DAEMON_CONFIG = """
[database]
url = "{db}"
[smtp]
host = "127.0.0.1"
port = 0
[outbound]
transport = "maildir"
maildir = "{sent}"
[security]
require_sender_auth = false
auto_reply_limit = 1000
contact_mail_limit = 1000
"""


class TestCleanStop:
    def test_sigterm_under_load_leaves_nothing_claimed_or_pending(self, db_url: str, tmp_path: Path) -> None:
        """The real `mailbot run`, SIGTERM right after the last 250 of 160 messages from four sessions: it
        exits 0 with every message a ticket, numbered in the order received, and every confirmation sent."""
        config = tmp_path / "config.toml"
        config.write_text(DAEMON_CONFIG.format(db=db_url, sent=tmp_path / "sent"))
        command = [sys.executable, "-m", "mailbot", "--config", str(config)]
        subprocess.run([*command, "db", "upgrade"], check=True, capture_output=True)
        for argv in CUSTOMER:
            subprocess.run([*command, *argv], check=True, capture_output=True)
        log = tmp_path / "mailbot.log"
        with log.open("w") as stderr:
            process = subprocess.Popen([*command, "run"], stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            port = listening_port(log)
            with ThreadPoolExecutor(4) as senders:
                list(senders.map(lambda n: send_many(port, n, 40), range(4)))
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=90) == 0
        finally:
            if process.poll() is None:
                process.kill()
        assert "mailbot stopped" in log.read_text() and "Traceback" not in log.read_text()
        db = Database(db_url)
        try:
            rows = db.call(lambda s: s.execute(select(InboundMessage.id, InboundMessage.status, InboundMessage.ticket_id,
                                                      InboundMessage.claimed_until).order_by(InboundMessage.id)).all())
            outbox = db.call(lambda s: s.execute(select(OutboxItem.kind, OutboxItem.status,
                                                        OutboxItem.claimed_until)).all())
        finally:
            db.close()
        assert len(rows) == 160 and {(status, claimed) for _, status, _, claimed in rows} == {("processed", None)}
        numbers = [ticket for *_, ticket, _ in rows]
        assert numbers == sorted(numbers) and len(set(numbers)) == 160  # one ticket each, in order received
        assert sorted(outbox) == [("confirmation", "sent", None)] * 160
        assert len(list((tmp_path / "sent" / "new").iterdir())) == 160


CUSTOMER = (
    ("org", "add", "Lincoln High", "--product", "full", "--plan", "silver"),
    ("contact", "add", "ana@lincoln.example", "--org", "Lincoln High", "--name", "Ana Diaz"),
)


def listening_port(log: Path) -> int:
    """The port the daemon reports it listens on (bounded wait for its start)."""
    for _ in range(400):
        if found := re.search(r"listening for SMTP on \('127\.0\.0\.1', (\d+)\)", log.read_text()):
            return int(found[1])
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not report its port: {log.read_text()}")


def send_many(port: int, session: int, count: int) -> None:
    """One SMTP session delivering `count` messages, each answered 250 before the next."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for n in range(count):
            raw = message(subject=f"Issue {session}-{n}", message_id=f"<s{session}n{n}@lincoln.example>")
            client.sendmail("ana@lincoln.example", ["herosupport@schoolmint.com"], raw)
