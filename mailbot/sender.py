"""Mail out: drains the outbox through a transport (an SMTP relay, or a maildir folder), DKIM-signs, retries.

Each due item is claimed with a lease before sending, so several instances on one database never send the
same item; a crash after the relay accepted but before we recorded it is the one case that sends twice, and
then it is the very same message (same Message-ID), which mail clients merge. The lease is short and
renewed while the instance lives (mailbot.leases); `stop` ends every drain after the message in hand and
gives back the items it claimed but did not send.

A drain is cheap per message: a batch is claimed in two statements, the relay is reached over one
connection for the drain's messages, and deliveries are recorded by group commit (`_Records`): the next
message goes out while the previous one's record commits, and the records that pile up meanwhile share the
next commit. No record waits for anything but the commit before it, and a drain stops delivering while
MAX_UNRECORDED of its deliveries are unrecorded: a crash sends again at most that many messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiosmtplib

from mailbot.clock import Clock
from mailbot.config import OutboundConfig, read_secret
from mailbot.leases import LEASE
from mailbot.outbox import is_permanent, retry_delay
from mailbot.signing import DkimSigner
from mailbot.store import Database
from mailbot.store import outbox as outbox_store
from mailbot.store.outbox import Claimed, Delivered

if TYPE_CHECKING:
    from mailbot.metrics import Tally

log = logging.getLogger("mailbot.sender")
# Some relays end a session after so many messages; a fresh connection now and then also lets a relay
# behind a load balancer spread a long drain over its members.
MESSAGES_PER_CONNECTION = 100
# A drain delivers on while fewer than this many of its deliveries wait for their record: so a crash sends
# again at most this many messages (the one in hand included), whatever the relay's and the disk's speeds.
# Two: the next message goes out while the previous one's record commits, and no further.
MAX_UNRECORDED = 2
Deliver = Callable[[str, list[str], bytes], Awaitable[None]]  # envelope from, recipients, the bytes


class DeliveryError(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Transport(Protocol):
    def session(self) -> AbstractAsyncContextManager[Deliver]:
        """How one drain hands its messages over; the callable raises DeliveryError when one was not accepted."""
        ...


class SmtpTransport:
    """The relay, over one connection for a drain's messages: a connection per message cost a TCP
    handshake, EHLO, and STARTTLS and AUTH where configured, for every message."""

    def __init__(self, config: OutboundConfig, password: str | None) -> None:
        self.config = config
        self.password = password

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Deliver]:
        relay = _Relay(self.config, self.password)
        try:
            yield relay.deliver
        finally:
            await relay.close()


class _Relay:
    """A connection to the relay, opened for the first message and kept for the next. Any failure closes it,
    so whatever the failure left behind (a refused envelope, a session the relay is ending) never touches the
    next message: that one gets a fresh connection."""

    def __init__(self, config: OutboundConfig, password: str | None) -> None:
        self.config = config
        self.password = password
        self._client: aiosmtplib.SMTP | None = None
        self._messages = 0  # sent over this connection

    async def deliver(self, envelope_from: str, recipients: list[str], message: bytes) -> None:
        try:
            client = await self._connected()
            await client.sendmail(envelope_from, recipients, message)  # accepted for one recipient at least
        except aiosmtplib.SMTPResponseException as exc:
            self._drop()
            raise DeliveryError(f"relay answered {exc.code} {exc.message}", exc.code) from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            self._drop()
            codes = [r.code for r in exc.recipients]
            raise DeliveryError(f"relay refused recipients: {exc}", min(codes) if codes else None) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()
            raise DeliveryError(f"relay unreachable: {exc}") from exc
        self._messages += 1

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and (not self._client.is_connected or self._messages >= MESSAGES_PER_CONNECTION):
            await self.close()  # the relay hung up meanwhile, or this connection has carried its share
        if self._client is None:
            client = aiosmtplib.SMTP(
                hostname=self.config.host,
                port=self.config.port,
                start_tls=self.config.starttls,
                use_tls=False,
                username=self.config.username,
                password=self.password,
                timeout=self.config.timeout.total_seconds(),
            )
            try:
                await client.connect()  # EHLO, then STARTTLS and AUTH as configured
            except BaseException:
                client.close()
                raise
            self._client, self._messages = client, 0
        return self._client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def close(self) -> None:
        """Say QUIT, as a well-behaved client does; a relay that does not answer is simply hung up on."""
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


class MaildirTransport:
    """Writes each message into a maildir's new/ folder, durably (fsync before the rename, as Maildir intends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # what we send is the customers' mail: ours alone
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(mode=0o700, exist_ok=True)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Deliver]:
        yield self.deliver

    async def deliver(self, envelope_from: str, recipients: list[str], message: bytes) -> None:
        await asyncio.to_thread(self._write, message)  # fsync blocks: keep it off the event loop
    def _write(self, message: bytes) -> None:
        name = f"{time.time_ns()}.{os.getpid()}_{os.urandom(4).hex()}.{socket.gethostname()}"
        tmp = self.path / "tmp" / name
        try:
            with open(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as handle:
                handle.write(message.replace(b"\r\n", b"\n"))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, self.path / "new" / name)
            directory = os.open(self.path / "new", os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise DeliveryError(f"cannot write to {self.path}: {exc.strerror}") from exc


def make_transport(config: OutboundConfig) -> Transport:
    if config.transport == "maildir":
        return MaildirTransport(config.maildir)
    return SmtpTransport(config, read_secret(config.password, config.password_file))


class _Records:
    """A drain's deliveries, recorded by group commit (as mailbot.door stores what arrives): each commit
    starts as soon as the one before it ends and takes every delivery that finished meanwhile."""

    def __init__(self, db: Database, metrics: Tally | None) -> None:
        self.db = db
        self.metrics = metrics
        self._waiting: list[Delivered] = []
        self._unrecorded = 0  # waiting, or in the commit under way
        self._writer: asyncio.Task[None] | None = None

    async def turn(self) -> None:
        """Before the next delivery: wait for the records when MAX_UNRECORDED are due; raise at once what the
        database raised when a record failed (a message sent now could not be recorded either)."""
        if self._unrecorded >= MAX_UNRECORDED or (self._writer is not None and self._writer.done()):
            await self.flush()

    def add(self, delivered: Delivered) -> None:
        self._waiting.append(delivered)
        self._unrecorded += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="mailbot-sent")

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            await self.db.run(outbox_store.record_sent, batch)
            self._unrecorded -= len(batch)
            if self.metrics:
                for delivered in batch:
                    self.metrics.delivered(delivered.item.kind)

    async def flush(self) -> None:
        """Until every delivery added is recorded; raises what the database raised."""
        if self._writer is not None:
            await self._writer


class Sender:
    def __init__(
        self,
        db: Database,
        transport: Transport,
        clock: Clock,
        *,
        signer: DkimSigner | None = None,
        retry_cap: timedelta = timedelta(seconds=60),
        worker: str | None = None,
        metrics: Tally | None = None,
        current: Callable[[], bool] = lambda: True,
    ) -> None:
        self.db = db
        self.metrics = metrics  # set by the daemon when it serves /metrics
        self.transport = transport
        self.clock = clock
        self.signer = signer
        self.retry_cap = retry_cap
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"  # the name its claims carry
        self.current = current  # whether its claims are surely still its own (mailbot.leases.Leases.current)
        self._stopping = False

    async def finish(self, item: Claimed) -> bytes:
        """The bytes that go on the wire: Date set now, then the DKIM signature over everything
        (an RSA signature costs milliseconds of CPU: made on a worker thread, not on the event loop)."""
        message = f"Date: {format_datetime(self.clock.now())}\r\n".encode() + item.body
        return await asyncio.to_thread(self.signer.sign, message) if self.signer else message

    async def drain(self) -> int:
        """Send everything due now (until stopped); returns how many went out, every one of them recorded."""
        records = _Records(self.db, self.metrics)
        async with self.transport.session() as deliver:
            try:
                return await self._drain(deliver, records)
            finally:
                await records.flush()

    async def _drain(self, deliver: Deliver, records: _Records) -> int:
        sent = 0
        while not self._stopping and self.current():
            await records.flush()  # what this drain sent is recorded before it claims again, never claimed again
            items = await self.db.run(outbox_store.claim_due, self.clock.now(), self.worker, LEASE)
            if not items:
                break
            for done, item in enumerate(items):
                await records.turn()
                if self._stopping or not self.current():
                    await self.db.run(outbox_store.release, [i.id for i in items[done:]], self.worker)
                    return sent
                sent += await self._send(item, deliver, records)
        return sent

    def stop(self) -> None:
        """Every drain ends after the message in hand; what it claimed beyond is given back unsent (as when
        its claims may have been taken over: another instance sends those)."""
        self._stopping = True

    async def _send(self, item: Claimed, deliver: Deliver, records: _Records) -> int:
        try:
            await deliver(item.envelope_from, list(item.recipients), await self.finish(item))
        except DeliveryError as exc:
            permanent = is_permanent(exc.code)
            retry_at = None if permanent else self.clock.now() + retry_delay(item.attempts, self.retry_cap)
            log.error(
                "%s %s for ticket %s to %s not sent (attempt %d): %s; %s",
                item.kind, item.message_id, item.ticket_id, ", ".join(item.recipients), item.attempts, exc,
                "giving up" if permanent else f"retrying at {retry_at:%H:%M:%S}",
            )
            await self.db.run(outbox_store.mark_attempt_failed, item.id, str(exc), retry_at)
            return 0
        records.add(Delivered(item, self.clock.now()))
        log.info("sent %s %s for ticket %s to %s", item.kind, item.message_id, item.ticket_id, ", ".join(item.recipients))
        return 1

    async def next_due(self) -> datetime | None:
        return await self.db.run(outbox_store.next_due)
