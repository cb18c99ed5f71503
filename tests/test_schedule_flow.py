"""The promise kept end to end: a real listener takes the mail, a real SMTP sink plays the relay, and a frozen
clock moves through nights, weekends, DST changes, holidays, restarts and a dead relay. The daemon's jobs are
called with the new `now` (never a sleep for hours); one test keeps the real APScheduler timing honest."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.compose import Outgoing
from mailbot.daemon import Daemon
from mailbot.store import outbox as outbox_store
from mailbot.store import registry
from mailbot.store.inbound import RawMessage, insert_many
from mailbot.store.schema import OutboxItem, Specialist, Ticket
from tests.conftest import deep_merge
from tests.mailers import SmtpSink, message, smtp_send
from tests.world import Running, until

pytestmark = pytest.mark.calendar  # run again under pinned wall clocks (Makefile: test-calendar)

ET = ZoneInfo("America/New_York")
SAM = ("sam@schoolmint.com", "Sam Lee")
RIA = ("ria@schoolmint.com", "Ria Patel")
MOE = ("moe@schoolmint.com", "Moe Tran")


def et(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A wall-clock time in US Eastern, as the aware UTC instant the store keeps."""
    return datetime(year, month, day, hour, minute, tzinfo=ET).astimezone(UTC)


class Service(Running):
    """A running daemon on a frozen clock, wired to the SMTP sink."""

    def __init__(self, daemon: Daemon, relay: SmtpSink, clock: FrozenClock) -> None:
        super().__init__(daemon)
        self.relay = relay
        self.clock = clock

    async def receive(self, raw: bytes, mail_from: str = "ana@lincoln.example") -> None:
        await asyncio.to_thread(smtp_send, self.port, raw, mail_from=mail_from)
        await until(self.intake_done, "the intake")

    async def tick(self, when: datetime) -> None:
        """Time moves to `when`; the due jobs run, as the scheduler would have run them."""
        self.clock.set(when)
        sending = self.daemon.work.sending
        assert sending is not None  # the single-process layout: the scheduler's jobs run here
        await sending.sweep_sla()
        await sending.drain_outbox()
        await until(self.idle, "sends in flight to finish")

    async def sent(self, count: int) -> list[str]:
        """Wait (bounded) until `count` messages reached the relay and were recorded as sent; their kinds."""
        await until(lambda: len(self.kinds()) >= count and self.idle(), f"{count} message(s) sent")
        return self.kinds()

    def idle(self) -> bool:
        """Nothing due is waiting and nothing is out for sending by this daemon: its scheduler may be sending
        beside the test, in a claim not committed yet (so a drain skipped those items) or in flight."""
        worker, now = self.app.sender.worker, self.clock.now()
        free = or_(OutboxItem.claimed_until.is_(None), OutboxItem.claimed_until < now)
        busy = self.app.db.call(
            lambda s: s.scalars(
                select(OutboxItem.id).where(
                    OutboxItem.status == "pending",
                    or_(
                        and_(OutboxItem.next_attempt_at <= now, free),
                        and_(OutboxItem.claimed_by == worker, OutboxItem.claimed_until.is_not(None)),
                    ),
                )
            ).all()
        )
        return not busy

    def ticket(self, ticket_id: int = 1) -> Ticket:
        return self.app.db.call(lambda s: s.get_one(Ticket, ticket_id))

    def wire(self) -> list[tuple[str, int | None, bytes]]:
        """What reached the relay: (kind, ticket id, bytes), in order, told apart by the planned Message-ID."""
        planned = {i.message_id: i for i in self.app.db.call(lambda s: list(s.scalars(select(OutboxItem))))}
        out = []
        for received in self.relay.messages:
            item = planned[message_from_bytes(received.data, policy=policy.default)["Message-ID"]]
            out.append((item.kind, item.ticket_id, received.data))
        return out

    def kinds(self) -> list[str]:
        """The kinds of what reached the relay, but the specialists' assignment mails (each introduction's
        twin, to the team): these tests are about the customer's promise."""
        return [kind for kind, _, _ in self.wire() if kind != "assignment"]


def queued(n: int, to: str = "ana@lincoln.example") -> Outgoing:
    """A ready-to-send message, planned straight into the outbox."""
    message_id = f"<out{n}@schoolmint.com>"
    body = (
        f"From: herosupport@schoolmint.com\r\nTo: {to}\r\nSubject: n{n}\r\n"
        f"Message-ID: {message_id}\r\n\r\nhello\r\n"
    ).encode()
    return Outgoing(
        "notification",
        message_id,
        "herosupport@schoolmint.com",
        [to],
        f"n{n}",
        "hello",
        body,
    )


def add_team(app: App, *members: tuple[str, str], away: tuple[str, ...] = ()) -> None:
    def add(session: Session) -> None:
        for address, name in members:
            registry.add_specialist(session, address, name, app.clock.now())
        for address in away:
            registry.set_specialist_active(session, address, False)

    app.db.call(add)


class Services:
    """Daemons on the SMTP sink and the frozen clock, stopped at the end of the test."""

    def __init__(self, make_app: Callable[..., App], relay: SmtpSink, clock: FrozenClock) -> None:
        self.make_app, self.relay, self.clock = make_app, relay, clock
        self.daemons: list[Daemon] = []

    def app(self, overrides: dict[str, Any] | None = None, *, db: str | None = None) -> App:
        """An app sending through the sink (to prepare a database before its daemon starts)."""
        relayed = {"outbound": {"transport": "smtp", "host": "127.0.0.1", "port": self.relay.port}}
        return self.make_app(deep_merge(relayed, overrides or {}), db=db)

    async def start(self, app: App | None = None, *, db: str | None = None) -> Service:
        daemon = Daemon(app or self.app(db=db))
        await daemon.start()
        self.daemons.append(daemon)
        return Service(daemon, self.relay, self.clock)


@pytest.fixture
async def services(
    make_app: Callable[..., App], relay: SmtpSink, clock: FrozenClock
) -> AsyncIterator[Services]:
    started = Services(make_app, relay, clock)
    yield started
    for daemon in started.daemons:
        await daemon.stop()  # a second stop (after a test's own) does nothing more


def sla_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mailbot.sla" and r.levelno == logging.ERROR]


class TestBusinessClock:
    @pytest.mark.parametrize(
        ("received", "assign_at", "due"),
        [
            (et(2026, 12, 4, 17), et(2026, 12, 7, 10), et(2026, 12, 7, 11)),  # Fri 17:00 -> Mon 11:00
            (et(2027, 3, 12, 17), et(2027, 3, 15, 10), et(2027, 3, 15, 11)),  # spring forward on Sunday
            (et(2026, 10, 30, 17), et(2026, 11, 2, 10), et(2026, 11, 2, 11)),  # fall back on Sunday
        ],
        ids=["weekend", "dst-spring", "dst-fall"],
    )
    async def test_friday_evening_is_introduced_monday_morning(
        self,
        services: Services,
        clock: FrozenClock,
        received: datetime,
        assign_at: datetime,
        due: datetime,
        db_url: str,
    ) -> None:
        """Confirmed at once; nothing over the weekend; assigned at Monday 10:00 local, due 11:00 local."""
        clock.set(received)
        running = await services.start(db=db_url)
        add_team(running.app, SAM)
        await running.receive(message())
        assert await running.sent(1) == ["confirmation"]
        ticket = running.ticket()
        assert (ticket.confirmation_sent_at, ticket.introduction_due_at) == (received, due)
        assert ticket.introduction_due_at.astimezone(ET).hour == 11  # local 11:00 whatever the offset
        assert (await running.app.sla.sweep()).next_check == assign_at  # the next wake-up: Monday 10:00
        for moment in (
            received + timedelta(hours=7),
            received + timedelta(days=1, hours=12),
            assign_at - timedelta(minutes=1),
        ):
            await running.tick(moment)
            assert running.kinds() == ["confirmation"], f"introduced too early, at {moment.astimezone(ET)}"
        await running.tick(assign_at)
        assert running.kinds() == ["confirmation", "introduction"]
        ticket = running.ticket()
        assert ticket.introduction_sent_at == assign_at < due
        assert ticket.sla_breach is None

    async def test_message_on_a_holiday(self, services: Services, clock: FrozenClock) -> None:
        """Thanksgiving is closed: confirmed within the hour anyway, introduced on Friday inside the deadline."""
        clock.set(et(2026, 11, 26, 9))
        running = await services.start()
        add_team(running.app, SAM)
        await running.receive(message())
        assert await running.sent(1) == ["confirmation"]
        assert running.ticket().introduction_due_at == et(2026, 11, 27, 12)
        await running.tick(et(2026, 11, 26, 17, 59))
        assert running.kinds() == ["confirmation"]
        await running.tick(et(2026, 11, 27, 11))
        assert running.kinds() == ["confirmation", "introduction"]
        assert running.ticket().sla_breach is None

    async def test_a_held_ticket_starts_its_clock_when_released(
        self, services: Services, clock: FrozenClock
    ) -> None:
        """Held overnight: never assigned, never late; released Wednesday 09:00, it is due Wednesday 13:00."""
        running = await services.start()
        add_team(running.app, SAM)
        await running.receive(message(sender="Eve Stone <eve@elsewhere.example>"), "eve@elsewhere.example")
        assert running.ticket().status == "held"
        await running.tick(et(2026, 12, 1, 17))
        promised = {"confirmation", "introduction"}
        assert promised.isdisjoint(running.kinds()) and running.ticket().sla_breach is None
        clock.set(et(2026, 12, 2, 9))
        workflow = running.app.workflow
        running.app.db.call(lambda s: workflow.release(s, s.get_one(Ticket, 1), clock.now()))
        await running.tick(et(2026, 12, 2, 9, 1))
        ticket = running.ticket()
        assert (ticket.assign_due_at, ticket.introduction_due_at) == (
            et(2026, 12, 2, 12),
            et(2026, 12, 2, 13),
        )
        await running.tick(et(2026, 12, 2, 11, 59))
        assert Counter(running.kinds()) & Counter(promised) == Counter(["confirmation"])
        await running.tick(et(2026, 12, 2, 12))
        assert Counter(running.kinds()) & Counter(promised) == Counter(promised)
        assert running.ticket().sla_breach is None


class TestRestart:
    async def test_restart_before_the_introduction_is_due(
        self, services: Services, clock: FrozenClock, db_url: str
    ) -> None:
        """A new process finds the ticket in the database: exactly one introduction, no second confirmation."""
        first = await services.start(db=db_url)
        add_team(first.app, SAM)
        await first.receive(message())
        assert await first.sent(1) == ["confirmation"]
        await first.daemon.stop()
        clock.set(et(2026, 12, 1, 13, 30))  # down over the assignment instant (13:00), back before 14:00
        second = await services.start(db=db_url)
        assert await second.sent(2) == ["confirmation", "introduction"]  # from the new process's start
        for minutes in (1, 2, 30):
            await second.tick(et(2026, 12, 1, 13, 30) + timedelta(minutes=minutes))
        assert second.kinds() == ["confirmation", "introduction"]
        ticket = second.ticket()
        assert ticket.introduction_sent_at == et(2026, 12, 1, 13, 30) and ticket.sla_breach is None

    async def test_a_day_of_downtime_sends_everything_overdue_at_start(
        self, services: Services, clock: FrozenClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Mail queued before a day down goes out at once on start, each message once; the misses are recorded."""
        app = services.app()
        add_team(app, SAM)
        for n in range(3):
            [inbound] = app.db.call(
                insert_many, [RawMessage(message(message_id=f"<d{n}@lincoln.example>"), "test")], clock.now()
            )
            assert app.processor.process_one(inbound).action == "created"
        clock.set(et(2026, 12, 2, 10))  # Wednesday: the confirmations and introductions are all overdue
        running = await services.start(app)
        await running.sent(6)  # all six overdue messages, from the start
        await running.tick(et(2026, 12, 2, 10, 1))
        assert sorted(Counter(running.kinds()).items()) == [("confirmation", 3), ("introduction", 3)]
        assert sorted(Counter(t for k, t, _ in running.wire() if k != "assignment").values()) == [2, 2, 2]
        ticket = running.ticket()
        assert ticket.sla_breach == (
            "BREACHED: confirmation late (due 2026-12-01 11:00 -05:00); "
            "BREACHED: introduction late (due 2026-12-01 14:00 -05:00)"
        )
        assert sum("ticket 1: BREACHED" in m for m in sla_errors(caplog)) == 1

    async def test_a_send_cut_short_by_a_crash_is_the_same_message(
        self, services: Services, clock: FrozenClock
    ) -> None:
        """A process died holding the confirmation (maybe after the relay took it): once its lease runs out the
        next one sends it, with the very Message-ID planned, so a mail client merges a second copy."""
        app = services.app()
        [inbound] = app.db.call(insert_many, [RawMessage(message(), "test")], clock.now())
        app.processor.process_one(inbound)
        [claimed] = app.db.call(outbox_store.claim_due, clock.now(), "dead-worker", timedelta(minutes=2))
        running = await services.start(app)
        await running.tick(clock.now() + timedelta(minutes=1))
        assert running.relay.messages == []  # still leased by the dead process
        await running.tick(clock.now() + timedelta(minutes=2, seconds=1))
        [(kind, _, data)] = running.wire()
        assert kind == "confirmation"
        assert message_from_bytes(data, policy=policy.default)["Message-ID"] == claimed.message_id


class TestRelayDown:
    async def test_relay_down_two_hours_then_back(
        self,
        services: Services,
        relay: SmtpSink,
        clock: FrozenClock,
        caplog: pytest.LogCaptureFixture,
        db_url: str,
    ) -> None:
        """Retried all along; at risk at 10:45, breached at 11:00 (each reported once); sent within a minute
        of the relay's return, exactly once; the introduction then goes out on time."""
        running = await services.start(db=db_url)
        add_team(running.app, SAM)
        await relay.stop()
        start = clock.now()
        await running.receive(message())
        findings: dict[datetime, str | None] = {}
        for minute in range(1, 121):
            await running.tick(start + timedelta(minutes=minute))
            findings[clock.now()] = running.ticket().sla_breach
        assert findings[et(2026, 12, 1, 10, 44)] is None
        assert findings[et(2026, 12, 1, 10, 45)] == (
            "AT RISK: confirmation due 2026-12-01 11:00 -05:00: the relay keeps failing"
        )
        assert findings[et(2026, 12, 1, 11)] == "BREACHED: confirmation late (due 2026-12-01 11:00 -05:00)"
        assert running.ticket().sla_breached_at == et(2026, 12, 1, 11)
        item = running.app.db.call(lambda s: s.scalars(select(OutboxItem)).one())
        assert item.status == "pending" and item.attempts > 60 and "unreachable" in (item.last_error or "")
        assert item.next_attempt_at - clock.now() <= timedelta(seconds=60)  # the backoff stays capped

        await relay.start()  # back on the same port at 12:00
        back = clock.now()
        for seconds in range(10, 70, 10):
            await running.tick(back + timedelta(seconds=seconds))
            if relay.messages:
                break
        ticket = running.ticket()
        assert ticket.confirmation_sent_at is not None and ticket.confirmation_sent_at - back <= timedelta(
            seconds=60
        )
        assert running.kinds() == ["confirmation"]
        assert ticket.sla_breach == "BREACHED: confirmation late (due 2026-12-01 11:00 -05:00)"

        await running.tick(et(2026, 12, 1, 13))
        await running.tick(et(2026, 12, 1, 13, 1))
        assert running.kinds() == ["confirmation", "introduction"]
        errors = sla_errors(caplog)
        assert errors == [
            "ticket 1: AT RISK: confirmation due 2026-12-01 11:00 -05:00: the relay keeps failing",
            "ticket 1: BREACHED: confirmation late (due 2026-12-01 11:00 -05:00)",
        ]


class TestSpecialists:
    async def test_two_specialists_share_tickets_fairly(
        self, services: Services, clock: FrozenClock, db_url: str
    ) -> None:
        """Round-robin, a claim by hand counting as a turn, the specialist who is away skipped."""
        running = await services.start(db=db_url)
        add_team(running.app, SAM, RIA, MOE, away=(MOE[0],))
        for n in range(6):
            clock.set(et(2026, 12, 1, 10, n))
            await running.receive(message(message_id=f"<fair{n}@lincoln.example>", subject=f"Question {n}"))
        assert await running.sent(6) == ["confirmation"] * 6
        clock.set(et(2026, 12, 1, 10, 30))
        claim = running.app.sla.claim(1, "Sam@SchoolMint.com")
        assert (claim.address, claim.previous, claim.introduction_id is not None) == (SAM[0], None, True)
        await running.tick(et(2026, 12, 1, 10, 31))
        await running.tick(et(2026, 12, 1, 13, 5))
        owners = running.app.db.call(
            lambda s: dict(
                s.execute(
                    select(Ticket.id, Specialist.address).join(
                        Specialist, Ticket.specialist_id == Specialist.id
                    )
                ).all()
            )
        )
        assert owners == {1: SAM[0], 2: RIA[0], 3: SAM[0], 4: RIA[0], 5: SAM[0], 6: RIA[0]}
        introductions = [(t, data) for kind, t, data in running.wire() if kind == "introduction"]
        assert len(introductions) == 6
        for ticket_id, data in introductions:
            name = SAM[1] if owners[ticket_id] == SAM[0] else RIA[1]
            assert f"I am {name}".encode() in data.replace(b"=\r\n", b"")

    async def test_no_active_specialist_is_reported_before_the_deadline(
        self, services: Services, clock: FrozenClock, caplog: pytest.LogCaptureFixture, db_url: str
    ) -> None:
        """Everyone away at the assignment instant: recorded and logged at 13:00, an hour before 14:00."""
        running = await services.start(db=db_url)
        add_team(running.app, SAM, away=(SAM[0],))
        await running.receive(message())
        assert await running.sent(1) == ["confirmation"]
        await running.tick(et(2026, 12, 1, 12, 59))
        assert running.ticket().sla_breach is None
        await running.tick(et(2026, 12, 1, 13))
        ticket = running.ticket()
        assert (
            ticket.sla_breach
            == "AT RISK: introduction due 2026-12-01 14:00 -05:00: no active specialist to assign"
        )
        assert ticket.sla_breached_at == et(2026, 12, 1, 13) < ticket.introduction_due_at
        await running.tick(et(2026, 12, 1, 13, 5))
        assert sla_errors(caplog) == [f"ticket 1: {ticket.sla_breach}"]  # once, not at every sweep
        running.app.db.call(registry.set_specialist_active, SAM[0], True)  # back from lunch
        await running.tick(et(2026, 12, 1, 13, 10))
        assert running.kinds() == ["confirmation", "introduction"]
        assert running.ticket().sla_breach is None  # the risk is over: the introduction went out in time


class TestSeveralInstances:
    async def test_two_senders_on_one_database_send_each_message_once(
        self, make_app: Callable[..., App], relay: SmtpSink, clock: FrozenClock, db_url: str
    ) -> None:
        """More than a claim's batch each, drained by two instances at once: every message crosses once."""
        outbound = {"outbound": {"transport": "smtp", "host": "127.0.0.1", "port": relay.port}}
        one, two = make_app(outbound, db=db_url), make_app(outbound, db=db_url)
        one.sender.worker, two.sender.worker = "instance-one", "instance-two"
        planned = [queued(n) for n in range(120)]
        one.db.call(lambda s: [outbox_store.plan(s, outbox_store.item(o, ticket_id=None, now=clock.now())) for o in planned])
        sent = await asyncio.gather(
            one.sender.drain(), two.sender.drain(), one.sender.drain(), two.sender.drain()
        )
        assert sum(sent) == 120
        ids = [message_from_bytes(m.data, policy=policy.default)["Message-ID"] for m in relay.messages]
        assert sorted(ids) == sorted(o.message_id for o in planned)  # each once, none lost
        workers = one.db.call(lambda s: set(s.scalars(select(OutboxItem.claimed_by))))
        assert workers <= {"instance-one", "instance-two"}

    async def test_two_instances_assign_each_ticket_once_in_turn(
        self, make_app: Callable[..., App], clock: FrozenClock, db_url: str
    ) -> None:
        one, two = make_app(db=db_url), make_app(db=db_url)
        add_team(one, SAM, RIA)
        raws = [RawMessage(message(message_id=f"<turn{n}@lincoln.example>"), "test") for n in range(10)]
        one.db.call(insert_many, raws, clock.now())
        one.processor.run_once()
        clock.set(et(2026, 12, 1, 13))
        sweeps = await asyncio.gather(one.sla.sweep(), two.sla.sweep())
        assert sorted(t for sweep in sweeps for t, _ in sweep.assigned) == list(range(1, 11))
        introductions = one.db.call(
            lambda s: s.scalars(select(OutboxItem.ticket_id).where(OutboxItem.kind == "introduction")).all()
        )
        assert sorted(introductions) == list(range(1, 11))
        shares = one.db.call(lambda s: Counter(s.scalars(select(Ticket.specialist_id)).all()))
        assert sorted(shares.values()) == [5, 5]


async def test_real_scheduler_sends_the_introduction_when_it_falls_due(
    services: Services, clock: FrozenClock
) -> None:
    """The APScheduler wiring itself: a sweep every 200 ms notices the due assignment and the woken outbox
    job sends the introduction, nobody calling a job by hand (bounded wait)."""
    app = services.app({"sla": {"sweep_interval": "200ms"}})
    add_team(app, SAM)
    running = await services.start(app)
    await running.receive(message())
    assert await running.sent(1) == ["confirmation"]
    clock.set(et(2026, 12, 1, 13))
    assert await running.sent(2) == ["confirmation", "introduction"]  # the sweep every 200 ms did it
    assert [kind for kind, _, _ in running.wire()].count("assignment") == 1  # and the specialist was told
