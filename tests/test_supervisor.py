"""The real `mailbot run` in its processes layout (mailbot.supervisor, mailbot.workers): mail over SMTP becomes
tickets with their confirmations, counted on /metrics; SIGTERM under load drains it all and leaves no claim
and no process; a worker killed under load is replaced and nothing is lost or done twice; a new ticket's
own instant wakes the sweep in the sender's process. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailbot.cli import main
from mailbot.clock import FrozenClock
from mailbot.store import Database
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket
from mailbot.workers import WORKER_NICE
from tests.conftest import TUESDAY_10_ET
from tests.dovecot import Account
from tests.mailers import message
from tests.test_leases import CUSTOMER, DAEMON_CONFIG, send_many

pytestmark = pytest.mark.calendar  # the real `mailbot run` reads the system clock
PROCESSES = """
[daemon]
layout = "processes"
[metrics]
listen = "127.0.0.1:0"
"""
WAIT = 60.0  # seconds: a bound on waiting for the daemon, never a measure of it


def wait_for(condition: Callable[[], object], what: str, bound: float = WAIT) -> None:
    """Poll `condition` until true, for `bound` seconds at most (the daemon works on its own clock)."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log: Path
    db_url: str
    sent: Path

    def found(self, pattern: str) -> list[str]:
        return re.findall(pattern, self.log.read_text())

    @property
    def port(self) -> int:
        return int(self.found(r"listening for SMTP on \('127\.0\.0\.1', (\d+)\)")[0])

    def get(self, path: str) -> tuple[int, str]:
        port = int(self.found(r"/readyz on \('127\.0\.0\.1', (\d+)\)")[0])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def worker(self, role: str) -> int:
        """The process id of the newest `role` worker."""
        return int(self.found(rf"started the {role} worker \(pid (\d+)\)")[-1])

    def counter(self, name: str, label: str) -> float:
        text = self.get("/metrics")[1]
        return float(re.findall(rf'^{name}_total{{[a-z]+="{label}"}} (\S+)$', text, re.MULTILINE)[0])

    def query(self, statement: object) -> list[tuple[object, ...]]:
        db = Database(self.db_url)
        try:
            return [tuple(row) for row in db.call(lambda s: s.execute(statement).all())]
        finally:
            db.close()

    def confirmations(self) -> int:
        return len(list((self.sent / "new").iterdir())) if (self.sent / "new").exists() else 0

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=90)


@pytest.fixture
def start(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """`start(extra_toml)`: the real `mailbot run`, layout "processes", with a customer registered."""
    started: list[Daemon] = []

    def run(extra: str = "", *setup: tuple[str, ...]) -> Daemon:
        config = tmp_path / "config.toml"
        config.write_text(DAEMON_CONFIG.format(db=db_url, sent=tmp_path / "sent") + PROCESSES + extra)
        for argv in (("db", "upgrade"), *CUSTOMER, *setup):  # in this process: a second each saved
            assert main(["--config", str(config), *argv], clock=FrozenClock(TUESDAY_10_ET)) == 0
        log = tmp_path / "mailbot.log"
        with log.open("w") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "mailbot", "--config", str(config), "run"], stderr=stderr,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        daemon = Daemon(process, log, db_url, tmp_path / "sent")
        started.append(daemon)
        wait_for(lambda: daemon.found("mailbot started") or process.poll() is not None, "the start")
        assert process.poll() is None, log.read_text()
        return daemon

    yield run
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def load(daemon: Daemon, sessions: range, each: int) -> None:
    """`each` messages in each of `sessions` (numbered: the Message-IDs differ from session to session)."""
    with ThreadPoolExecutor(len(sessions)) as senders:
        list(senders.map(lambda n: send_many(daemon.port, n, each), sessions))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def every_message_one_ticket_one_confirmation(daemon: Daemon, count: int) -> None:
    rows = daemon.query(select(InboundMessage.status, InboundMessage.ticket_id, InboundMessage.claimed_until))
    assert len(rows) == count and {(status, claimed) for status, _, claimed in rows} == {("processed", None)}
    assert len({ticket for _, ticket, _ in rows}) == count  # one ticket each, none twice
    outbox = daemon.query(select(OutboxItem.kind, OutboxItem.status, OutboxItem.ticket_id, OutboxItem.claimed_until))
    assert sorted((kind, status, claimed) for kind, status, _, claimed in outbox) == [
        ("confirmation", "sent", None)
    ] * count
    assert daemon.confirmations() == count  # each written once


class TestProcesses:
    def test_mail_becomes_tickets_counted_by_the_parent_and_sigterm_drains(self, start: Callable[..., Daemon]) -> None:
        """Three processes, the workers below the doors' priority on PostgreSQL (on SQLite a worker holding
        the write lock must not be preempted); the workers' outcomes and deliveries reach the parent's
        /metrics; SIGTERM right after the last 250 of 120 messages: exit 0, nothing claimed or pending, no
        worker left."""
        daemon = start()
        workers = [daemon.worker("intake"), daemon.worker("sender")]
        assert all(alive(pid) for pid in workers) and os.getpid() not in workers
        doors = os.getpriority(os.PRIO_PROCESS, daemon.process.pid)
        lowered = 0 if daemon.db_url.startswith("sqlite") else WORKER_NICE
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in workers] == [min(doors + lowered, 19)] * 2
        assert daemon.get("/healthz") == (200, "ok\n")
        load(daemon, range(3), 20)
        wait_for(lambda: daemon.confirmations() == 60, "60 confirmations")
        wait_for(lambda: daemon.counter("mailbot_outbox_sent", "confirmation") == 60, "the sender's counts")
        assert daemon.counter("mailbot_intake_outcomes", "created") == 60  # decided in the intake's process
        assert daemon.counter("mailbot_inbound_accepted", "smtp") == 60
        load(daemon, range(3, 6), 20)
        assert daemon.stop() == 0
        log = daemon.log.read_text()
        assert "mailbot stopped" in log and "Traceback" not in log and "killing" not in log
        assert not any(alive(pid) for pid in workers)
        every_message_one_ticket_one_confirmation(daemon, 120)

    def test_imap_mail_is_decided_by_the_intake_worker_then_moved(
        self, start: Callable[..., Daemon], account: Account
    ) -> None:
        """IMAP mail takes SMTP mail's way: the parent's watcher stores it, the intake's process decides it
        (counted there: the parent decides nothing), then the watcher moves it to Processed."""
        ids = [f"<imap{n}@lincoln.example>" for n in range(5)]
        account.deliver([message(message_id=message_id) for message_id in ids])
        daemon = start(
            f'[[imap]]\nhost = "127.0.0.1"\nport = {account.server.port}\nsecurity = "none"\n'
            f'username = "{account.username}"\npassword = "{account.password}"\n'
        )
        wait_for(lambda: sorted(account.message_ids("Processed")) == sorted(ids), "the mail moved to Processed")
        wait_for(lambda: daemon.confirmations() == 5, "5 confirmations")
        assert daemon.counter("mailbot_intake_outcomes", "created") == 5
        assert daemon.counter("mailbot_inbound_accepted", "imap") == 5
        assert account.message_ids() == []
        assert daemon.stop() == 0
        every_message_one_ticket_one_confirmation(daemon, 5)

    def test_a_killed_intake_worker_is_replaced_and_nothing_is_lost_or_doubled(
        self, start: Callable[..., Daemon]
    ) -> None:
        """kill -9 of the intake's process while it works through a backlog: /healthz names it and why until
        its successor is ready, which takes back its claims at once; every message one ticket, one confirmation."""
        daemon = start()
        first = daemon.worker("intake")
        load(daemon, range(4), 25)
        reasons: set[str] = set()
        healthy_again = threading.Event()

        def watch() -> None:  # from before the kill, often: the successor may be ready within a second
            while not healthy_again.is_set():
                # The newest worker read before asking: a 200 after the successor started is the successor's,
                # not an answer from before the parent saw the death.
                newest = daemon.worker("intake")
                status, text = daemon.get("/healthz")
                if status != 200:
                    reasons.add(text.strip())
                elif newest != first:
                    healthy_again.set()
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        os.kill(first, signal.SIGKILL)
        watcher.join(WAIT)
        assert healthy_again.is_set(), "no healthy new intake worker"
        assert reasons and all(f"the intake worker (pid {first}) killed by SIGKILL" in why for why in reasons)
        load(daemon, range(4, 6), 10)
        wait_for(lambda: daemon.confirmations() >= 120, "120 confirmations")
        assert daemon.stop() == 0
        assert f"the intake worker (pid {first}) killed by SIGKILL; starting another" in daemon.log.read_text()
        every_message_one_ticket_one_confirmation(daemon, 120)


    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
    def test_the_workers_end_with_their_parent_and_give_back_their_claims(self, start: Callable[..., Daemon]) -> None:
        """kill -9 of the parent under load (systemd would kill the rest; a terminal may not): the workers see
        their pipe end, finish what is in hand, give back what they claimed and exit; nothing stays claimed."""
        daemon = start()
        workers = [daemon.worker("intake"), daemon.worker("sender")]
        load(daemon, range(4), 25)
        daemon.process.kill()
        daemon.process.wait()
        wait_for(lambda: not any(alive(pid) for pid in workers), "the workers to exit")
        assert daemon.query(select(InboundMessage.id).where(InboundMessage.status == "pending",
                                                            InboundMessage.claimed_until.is_not(None))) == []
        assert daemon.query(select(OutboxItem.id).where(OutboxItem.status == "pending",
                                                        OutboxItem.claimed_until.is_not(None))) == []


class TestCrashLoop:
    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the supervisor's rule, whatever the database
    def test_five_deaths_within_a_minute_stop_the_daemon_with_status_1(self, start: Callable[..., Daemon]) -> None:
        daemon = start()
        for death in range(5):
            pid = daemon.worker("intake")
            os.kill(pid, signal.SIGKILL)
            if death < 4:
                wait_for(lambda: daemon.worker("intake") != pid, "the next intake worker")  # noqa: B023
        assert daemon.process.wait(timeout=90) == 1
        log = daemon.log.read_text()
        assert "the intake worker died 5 times within 60 s (last: killed by SIGKILL): giving up" in log
        assert "mailbot stopped" in log and not alive(daemon.worker("sender"))


class TestDeadlinesAcrossProcesses:
    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the wake-up's way is the same on both
    def test_a_new_ticket_is_assigned_at_its_instant_by_the_senders_sweep(self, start: Callable[..., Daemon]) -> None:
        """24/7 hours, assignment after 2 s, a sweep every hour: the intake's process tells the sender's
        scheduler the ticket's own instant, through the parent; nothing else would assign it within the hour."""
        daemon = start(
            '[business_hours]\nopen_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\nopens = "00:00"\n'
            'closes = "24:00"\n[sla]\nauto_assign_after = "2s"\nintroduction_within = "20s"\nsweep_interval = "1h"\n',
            ("specialist", "add", "sam@schoolmint.com", "--name", "Sam Lee"),
        )
        send_many(daemon.port, 0, 1)
        wait_for(lambda: daemon.query(select(Ticket.specialist_id).where(Ticket.specialist_id.is_not(None))),
                 "the automatic assignment")
        wait_for(lambda: daemon.query(select(func.count()).where(OutboxItem.kind == "introduction",
                                                                 OutboxItem.status == "sent"))[0][0] == 1,
                 "the introduction sent")
        assert daemon.stop() == 0


class TestLayout:
    @pytest.mark.parametrize(("layout", "cpus", "separate"), [
        ("auto", 1, False), ("auto", 2, True), ("processes", 1, True), ("single", 8, False),
    ])
    def test_auto_means_processes_where_two_cpus_are_there(self, layout: str, cpus: int, separate: bool) -> None:
        from mailbot.config import DaemonConfig

        assert DaemonConfig(layout=layout).separate(cpus) is separate  # type: ignore[arg-type]
