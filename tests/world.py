"""The suite's one end-to-end harness: a running mailbot between real SMTP clients and, for outgoing mail, a
maildir (`running`) or a real SMTP sink standing in for the relay (`world`). `until` is the one bounded wait and
`Running.settle` the one "everything done" for every test that drives a daemon. Fixtures `running`, `relay` and
`world` (conftest.py makes them available to every test module)."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from mailbot.app import App
from mailbot.daemon import Daemon
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket
from tests.mailers import Received, SmtpSink

SUPPORT = "herosupport@schoolmint.com"
CUSTOMER = "ana@lincoln.example"  # the named contact conftest registers


async def until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait (bounded) for work the daemon does on its own tasks."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


class Running:
    """One started daemon: its port, what it stored, and `settle` until it has done all it will."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.app: App = daemon.app

    @property
    def port(self) -> int:
        return int(self.daemon.servers[0].sockets[0].getsockname()[1])

    def intake_done(self) -> bool:
        return self.count(InboundMessage, InboundMessage.status == "pending") == 0

    async def settle(self) -> None:
        """Every stored message processed, every due outgoing message sent (or failed) and delivered."""
        await until(self.intake_done, "the intake")
        for _ in range(750):
            await self.app.sender.drain()
            if self._outbox_quiet():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"gave up waiting for the outbox: {self.describe()}")

    def _outbox_quiet(self) -> bool:
        """Nothing pending that is leased (being sent) or due (about to be), and nothing recorded as sent still
        on its way into the maildir. The daemon's own drain may hold a due item's row lock while it claims it:
        SKIP LOCKED hides it from ours, so look again until it is sent. And it records a group as sent before
        it moves the group's files from tmp/ into new/ (mailbot.sender): look again until tmp/ is empty."""
        now = self.app.clock.now()
        busy = (OutboxItem.status == "pending") & (
            OutboxItem.claimed_until.is_not(None) | (OutboxItem.next_attempt_at <= now)
        )
        return self.count(OutboxItem, busy) == 0 and not self._staged()

    def _staged(self) -> bool:
        outbound = self.app.config.outbound
        tmp = outbound.maildir / "tmp"
        return outbound.transport == "maildir" and tmp.is_dir() and any(tmp.iterdir())

    def count(self, model: type, *where: Any) -> int:
        return int(self.app.db.call(lambda s: s.scalar(select(func.count()).select_from(model).where(*where))))

    def inbound(self) -> list[InboundMessage]:
        return self.app.db.call(lambda s: list(s.scalars(select(InboundMessage).order_by(InboundMessage.id))))

    def ticket(self, ticket_id: int) -> Ticket:
        return self.app.db.call(lambda s: s.get_one(Ticket, ticket_id))

    def outbox(self) -> list[OutboxItem]:
        return self.app.db.call(lambda s: list(s.scalars(select(OutboxItem).order_by(OutboxItem.id))))

    def describe(self) -> str:
        """What the daemon did with the mail so far, for an assertion's message."""
        inbound = [(m.id, m.status, m.action, m.error) for m in self.inbound()]
        outbox = [(o.id, o.kind, o.status, o.attempts, o.last_error) for o in self.outbox()]
        return f"inbound {inbound}; outbox {outbox}"


class World(Running):
    """A daemon whose outgoing mail goes to a real SMTP sink: `send` mail in over SMTP, read what it sent."""

    def __init__(self, daemon: Daemon, relay: SmtpSink) -> None:
        super().__init__(daemon)
        self.relay = relay

    async def send(self, raw: bytes, *, mail_from: str = CUSTOMER, rcpt: tuple[str, ...] = (SUPPORT,)) -> None:
        """Deliver one message as an MTA would (smtplib, off the loop); raises on any refusal."""

        def deliver() -> None:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                client.sendmail(mail_from, list(rcpt), raw)

        await asyncio.to_thread(deliver)

    def describe(self) -> str:
        return f"{super().describe()}; relay got {len(self.wire)}"

    @property
    def wire(self) -> list[Received]:
        """What reached the relay, in order."""
        return self.relay.messages


def raw_session(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Write `data` to a fresh SMTP connection as is (pipelined, no waiting for replies) and read until the
    server closes the connection (end `data` with QUIT, or expect the server to hang up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.fixture
async def running(make_app: Callable[..., App]) -> AsyncIterator[Callable[..., Any]]:
    """`await running(overrides, db=...)`: a started daemon writing its outgoing mail to tmp_path/sent."""
    daemons: list[Daemon] = []

    async def start(overrides: dict[str, Any] | None = None, *, db: str | None = None) -> Running:
        daemon = Daemon(make_app(overrides, db=db))
        await daemon.start()
        daemons.append(daemon)
        return Running(daemon)

    yield start
    for daemon in daemons:
        await daemon.stop()


@pytest.fixture
async def relay() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink()
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture
async def world(make_app: Callable[..., App], relay: SmtpSink) -> AsyncIterator[Callable[..., Any]]:
    """`await world(overrides, db=...)`: a started daemon whose outgoing mail goes to `relay` over SMTP."""
    daemons: list[Daemon] = []

    async def start(overrides: dict[str, Any] | None = None, *, db: str | None = None, **app_options: Any) -> World:
        overrides = dict(overrides or {})
        relayed = {"transport": "smtp", "host": "127.0.0.1", "port": relay.port}
        overrides["outbound"] = {**relayed, **overrides.get("outbound", {})}
        daemon = Daemon(make_app(overrides, db=db, **app_options))
        await daemon.start()
        daemons.append(daemon)
        return World(daemon, relay)

    yield start
    for daemon in daemons:
        await daemon.stop()
