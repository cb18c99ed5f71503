"""Mail out: drains the outbox through a transport (an SMTP relay, or a maildir folder), DKIM-signs, retries.

Each due item is claimed with a lease before sending, so several instances on one database never send the
same item; a crash after the relay accepted but before we recorded it is the one case that sends twice, and
then it is the very same message (same Message-ID), which mail clients merge. The lease is short and
renewed while the instance lives (mailbot.leases); `stop` ends every drain after the messages in hand and
gives back the items it claimed but did not send.

A drain is cheap per message: a batch is claimed in two statements, the relay is reached over one
connection for the drain's messages, and the messages go to the transport MAX_UNRECORDED at a time, then are
recorded as sent together, in one transaction: a crash sends again at most that many messages. A maildir
makes such a group durable with one fsync of its folder, not one per message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
# A drain hands the transport this many messages at most, then records them as sent before the next go out:
# so a crash sends again at most this many messages, whatever the relay's and the disk's speeds. Each group
# is one record transaction (and with a maildir, one fsync of its folder): the pair halves both per message.
MAX_UNRECORDED = 2
Envelope = tuple[str, Sequence[str], bytes]  # envelope from, recipients, the bytes
# A group's outcomes, in order: None where the transport took the message (durably, once the call returns).
Deliver = Callable[[Sequence[Envelope]], Awaitable[list["DeliveryError | None"]]]
# What an SMTP command line can carry between < and > (RFC 5321 4.1.2, ASCII): no space, control or bracket.
PATH = re.compile(r"[!-;=?-~]*")


class DeliveryError(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Transport(Protocol):
    def session(self) -> AbstractAsyncContextManager[Deliver]:
        """How one drain hands its messages over, a group at a time."""
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
            yield relay.deliver_all
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

    async def deliver_all(self, envelopes: Sequence[Envelope]) -> list[DeliveryError | None]:
        outcomes: list[DeliveryError | None] = []
        for envelope in envelopes:
            try:
                await self.deliver(*envelope)
            except DeliveryError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    async def deliver(self, envelope_from: str, recipients: Sequence[str], message: bytes) -> None:
        try:
            client = await self._connected()
            await _transaction(client, envelope_from, recipients, message)  # accepted for one recipient at least
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
                if client.is_ehlo_or_helo_needed:  # neither was: greet it now (HELO for a relay without ESMTP)
                    try:
                        await client.ehlo()
                    except aiosmtplib.SMTPHeloError:
                        await client.helo()
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


async def _transaction(client: aiosmtplib.SMTP, envelope_from: str, recipients: Sequence[str], message: bytes) -> None:
    """MAIL, RCPT for each recipient, DATA: aiosmtplib's `sendmail` without its address parsing, which took a
    quarter of the relay's CPU (each address through email.utils.parseaddr twice, for addr-specs we made)."""
    reverse_path, forward_paths = _path(envelope_from), [_path(r) for r in recipients]  # before any command
    size = [b"SIZE=%d" % len(message)] if client.supports_extension("size") else []
    reply = await client.execute_command(b"MAIL", b"FROM:" + reverse_path, *size)
    if reply.code != 250:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, envelope_from)
    refused = []
    for recipient, forward_path in zip(recipients, forward_paths):
        reply = await client.execute_command(b"RCPT", b"TO:" + forward_path)
        if reply.code not in (250, 251):
            refused.append(aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient))
    if len(refused) == len(recipients):
        raise aiosmtplib.SMTPRecipientsRefused(refused)
    await client.data(message)  # raises SMTPDataError unless 250


def _path(address: str) -> bytes:
    if not PATH.fullmatch(address):  # it would end the command or add parameters to it: never sent, never will be
        raise DeliveryError(f"{address!r} cannot be sent over SMTP", 553)
    return b"<" + address.encode() + b">"


class MaildirTransport:
    """Writes each message into a maildir's new/ folder, durably: each file's fsync before its rename, as
    Maildir intends, then one fsync of new/ for the group (what a crash before it loses was not recorded as
    sent either: it is written again, at most MAX_UNRECORDED messages)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.host = socket.gethostname()  # in every file's name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # what we send is the customers' mail: ours alone
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(mode=0o700, exist_ok=True)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Deliver]:
        yield self.deliver

    async def deliver(self, envelopes: Sequence[Envelope]) -> list[DeliveryError | None]:
        return await asyncio.to_thread(self._write_all, [message for _, _, message in envelopes])  # fsync blocks

    def _write_all(self, messages: list[bytes]) -> list[DeliveryError | None]:
        outcomes = [self._write(message) for message in messages]
        if any(outcome is None for outcome in outcomes):
            try:
                directory = os.open(self.path / "new", os.O_RDONLY)
                try:
                    os.fsync(directory)  # the renames of the whole group
                finally:
                    os.close(directory)
            except OSError as exc:
                failed = self._error(exc)
                outcomes = [outcome or failed for outcome in outcomes]
        return outcomes

    def _write(self, message: bytes) -> DeliveryError | None:
        """The message's file in new/ (its rename not yet durable), or why not."""
        name = f"{time.time_ns()}.{os.getpid()}_{os.urandom(4).hex()}.{self.host}"
        tmp = self.path / "tmp" / name
        try:
            with open(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as handle:
                handle.write(message.replace(b"\r\n", b"\n"))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, self.path / "new" / name)
        except OSError as exc:
            return self._error(exc)
        return None

    def _error(self, exc: OSError) -> DeliveryError:
        return DeliveryError(f"cannot write to {self.path}: {exc.strerror}")


def make_transport(config: OutboundConfig) -> Transport:
    if config.transport == "maildir":
        return MaildirTransport(config.maildir)
    return SmtpTransport(config, read_secret(config.password, config.password_file))


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

    async def finish(self, items: Sequence[Claimed]) -> list[bytes]:
        """The bytes that go on the wire: Date set now, then the DKIM signature over everything
        (an RSA signature costs milliseconds of CPU: made on a worker thread, not on the event loop)."""
        date = f"Date: {format_datetime(self.clock.now())}\r\n".encode()
        messages = [date + item.body for item in items]
        if self.signer is None:
            return messages
        sign = self.signer.sign
        return await asyncio.to_thread(lambda: [sign(message) for message in messages])

    async def drain(self) -> int:
        """Send everything due now (until stopped); returns how many went out, every one of them recorded."""
        sent = 0
        async with self.transport.session() as deliver:
            while not self._stopping and self.current():
                items = await self.db.run(outbox_store.claim_due, self.clock.now(), self.worker, LEASE)
                if not items:
                    break
                for start in range(0, len(items), MAX_UNRECORDED):
                    if self._stopping or not self.current():
                        await self.db.run(outbox_store.release, [i.id for i in items[start:]], self.worker)
                        return sent
                    sent += await self._send(items[start : start + MAX_UNRECORDED], deliver)
        return sent

    def stop(self) -> None:
        """Every drain ends after the messages in hand; what it claimed beyond is given back unsent (as when
        its claims may have been taken over: another instance sends those)."""
        self._stopping = True

    async def _send(self, items: Sequence[Claimed], deliver: Deliver) -> int:
        """One group: handed to the transport, then what it took recorded as sent, and what it refused as a
        failed attempt. Returns how many went out."""
        outcomes = await deliver(
            [(item.envelope_from, item.recipients, message) for item, message in zip(items, await self.finish(items))]
        )
        now = self.clock.now()
        delivered = [Delivered(item, now) for item, failure in zip(items, outcomes) if failure is None]
        if delivered:
            await self.db.run(outbox_store.record_sent, delivered)
        for item, failure in zip(items, outcomes):
            if failure is None:
                log.info("sent %s %s for ticket %s to %s", item.kind, item.message_id, item.ticket_id, ", ".join(item.recipients))
                if self.metrics:
                    self.metrics.delivered(item.kind)
            else:
                await self._failed(item, failure)
        return len(delivered)

    async def _failed(self, item: Claimed, exc: DeliveryError) -> None:
        permanent = is_permanent(exc.code)
        retry_at = None if permanent else self.clock.now() + retry_delay(item.attempts, self.retry_cap)
        log.error(
            "%s %s for ticket %s to %s not sent (attempt %d): %s; %s",
            item.kind, item.message_id, item.ticket_id, ", ".join(item.recipients), item.attempts, exc,
            "giving up" if permanent else f"retrying at {retry_at:%H:%M:%S}",
        )
        await self.db.run(outbox_store.mark_attempt_failed, item.id, str(exc), retry_at)

    async def next_due(self) -> datetime | None:
        return await self.db.run(outbox_store.next_due)
