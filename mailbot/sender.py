"""Mail out: drains the outbox through a transport (an SMTP relay, or a maildir folder), DKIM-signs, retries.

Each due item is claimed with a lease before sending, so several instances on one database never send the
same item; a crash after the relay accepted but before we recorded it is the one case that sends twice, and
then it is the very same message (same Message-ID), which mail clients merge. The lease is short and
renewed while the instance lives (mailbot.leases); `stop` ends every drain after the message in hand and
gives back the items it claimed but did not send.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiosmtplib
from sqlalchemy.orm import Session

from mailbot.clock import Clock
from mailbot.config import OutboundConfig, read_secret
from mailbot.leases import LEASE
from mailbot.outbox import is_permanent, retry_delay
from mailbot.signing import DkimSigner
from mailbot.store import Database
from mailbot.store import outbox as outbox_store
from mailbot.store.schema import OutboxItem, Ticket

if TYPE_CHECKING:
    from mailbot.metrics import Tally

log = logging.getLogger("mailbot.sender")


class DeliveryError(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Transport(Protocol):
    async def deliver(self, envelope_from: str, recipients: list[str], message: bytes) -> None:
        """Hand the message over; raise DeliveryError when it was not accepted."""
        ...


class SmtpTransport:
    def __init__(self, config: OutboundConfig, password: str | None) -> None:
        self.config = config
        self.password = password

    async def deliver(self, envelope_from: str, recipients: list[str], message: bytes) -> None:
        try:
            await aiosmtplib.send(
                message,
                sender=envelope_from,
                recipients=recipients,
                hostname=self.config.host,
                port=self.config.port,
                start_tls=self.config.starttls,
                use_tls=False,
                username=self.config.username,
                password=self.password,
                timeout=self.config.timeout.total_seconds(),
            )
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"relay answered {exc.code} {exc.message}", exc.code) from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise DeliveryError(f"relay refused recipients: {exc}", min(codes) if codes else None) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"relay unreachable: {exc}") from exc


class MaildirTransport:
    """Writes each message into a maildir's new/ folder, durably (fsync before the rename, as Maildir intends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # what we send is the customers' mail: ours alone
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(mode=0o700, exist_ok=True)

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


def _record_delivery(session: Session, item_id: int, now: datetime) -> None:
    item = outbox_store.mark_sent(session, item_id, now)
    if item.ticket_id is None:
        return
    ticket = session.get_one(Ticket, item.ticket_id)
    if item.kind == "confirmation" and ticket.confirmation_sent_at is None:
        ticket.confirmation_sent_at = now
    elif item.kind == "introduction" and ticket.introduction_sent_at is None:
        ticket.introduction_sent_at = now


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

    async def finish(self, item: OutboxItem) -> bytes:
        """The bytes that go on the wire: Date set now, then the DKIM signature over everything
        (an RSA signature costs milliseconds of CPU: made on a worker thread, not on the event loop)."""
        message = f"Date: {format_datetime(self.clock.now())}\r\n".encode() + item.body
        return await asyncio.to_thread(self.signer.sign, message) if self.signer else message

    async def drain(self) -> int:
        """Send everything due now (until stopped); returns how many went out."""
        sent = 0
        while not self._stopping and self.current():
            items = await self.db.run(outbox_store.claim_due, self.clock.now(), self.worker, LEASE)
            if not items:
                break
            for done, item in enumerate(items):
                if self._stopping or not self.current():
                    await self.db.run(outbox_store.release, [i.id for i in items[done:]], self.worker)
                    return sent
                sent += await self._send(item)
        return sent

    def stop(self) -> None:
        """Every drain ends after the message in hand; what it claimed beyond is given back unsent (as when
        its claims may have been taken over: another instance sends those)."""
        self._stopping = True

    async def _send(self, item: OutboxItem) -> int:
        try:
            await self.transport.deliver(item.envelope_from, list(item.recipients), await self.finish(item))
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
        await self.db.run(_record_delivery, item.id, self.clock.now())
        if self.metrics:
            self.metrics.delivered(item.kind)
        log.info("sent %s %s for ticket %s to %s", item.kind, item.message_id, item.ticket_id, ", ".join(item.recipients))
        return 1

    async def next_due(self) -> datetime | None:
        return await self.db.run(outbox_store.next_due)
