"""Mail out: drains the outbox through a transport (an SMTP relay, or a maildir folder), DKIM-signs, retries.

Each due item is claimed with a lease before sending, so several instances on one database never send the
same item; `stop` ends every drain after the messages in hand and gives back the items it claimed but did
not send. The lease is short and renewed while the instance lives (mailbot.leases).

A drain claims a batch in one statement, then hands the transport a group of messages at a time and records
the group as sent in one transaction (two statements) before the next group goes out. What a crash between
the two does depends on the transport:

- The relay's 250 cannot be taken back: a crash after it and before the record sends the message again
  (the very same message, same Message-ID, which mail clients merge). So the relay gets MAX_UNRECORDED
  messages at a time, the most a crash sends twice; it is reached over one connection for the drain.
- The maildir delivers nothing before the record. Each message is written to tmp/ (fsynced, then tmp/
  once for the group), the group is recorded as sent, and only then are its files renamed into new/ (then
  new/ fsynced once). A file's name carries its item's id and claim (`attempts`) and a digest of its
  Message-ID, and a record takes effect only for an item's latest claim (mailbot.store.outbox). A crash
  before the record leaves files in tmp/ that no record names: never delivered, the items are sent again
  by their next claim. A crash after it leaves recorded files in tmp/: every drain first looks there and
  moves into new/ the files whose claim is recorded as sent (and removes those of claims that can no longer
  be), so each is delivered once, late rather than twice, and none is lost. So a maildir group is the
  whole claimed batch: one record transaction and two folder fsyncs for up to BATCH messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
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
from mailbot.store.outbox import Claimed, ItemState

if TYPE_CHECKING:
    from mailbot.metrics import Tally

log = logging.getLogger("mailbot.sender")
# Some relays end a session after so many messages; a fresh connection now and then also lets a relay
# behind a load balancer spread a long drain over its members.
MESSAGES_PER_CONNECTION = 100
# A drain hands the relay this many messages at most, then records them as sent before the next go out: so a
# crash sends again at most this many messages, whatever the relay's speed. Each group is one record
# transaction: the pair halves those per message.
MAX_UNRECORDED = 2
BATCH = 50  # outbox items per claim; the maildir's group
Parcel = tuple[Claimed, bytes]  # an item and the bytes that go out (Date and DKIM-Signature added)
# A group's outcomes, in order: None where the transport took the message (durably, once the call returns).
Outcomes = list["DeliveryError | None"]
Lookup = Callable[[Sequence[int]], Awaitable[dict[int, ItemState]]]  # items by id, for a maildir's leftovers
# What an SMTP command line can carry between < and > (RFC 5321 4.1.2, ASCII): no space, control or bracket.
PATH = re.compile(r"[!-;=?-~]*")


class DeliveryError(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Handover(Protocol):
    """How one drain hands its messages over, a group at a time."""

    group: int  # messages handed over before they are recorded as sent
    recovered: Sequence[str]  # the kinds of messages an earlier drain recorded as sent and this one delivered

    async def deliver(self, parcels: Sequence[Parcel]) -> Outcomes:
        """The group handed over; the outcome of each, in order."""
        ...

    async def recorded(self, ids: Collection[int]) -> Collection[int]:
        """Of the group's messages the transport took, these were recorded as sent (the others had been
        claimed again meanwhile); returns those of them delivered now (the others: by a later drain)."""
        ...


class Transport(Protocol):
    def session(self, lookup: Lookup) -> AbstractAsyncContextManager[Handover]:
        """One drain's handover; `lookup` reads outbox items (for what an earlier drain left unfinished)."""
        ...


class SmtpTransport:
    """The relay, over one connection for a drain's messages: a connection per message cost a TCP
    handshake, EHLO, and STARTTLS and AUTH where configured, for every message."""

    def __init__(self, config: OutboundConfig, password: str | None) -> None:
        self.config = config
        self.password = password

    @asynccontextmanager
    async def session(self, lookup: Lookup) -> AsyncIterator[Handover]:
        relay = _Relay(self.config, self.password)
        try:
            yield relay
        finally:
            await relay.close()


class _Relay:
    """A connection to the relay, opened for the first message and kept for the next. Any failure closes it,
    so whatever the failure left behind (a refused envelope, a session the relay is ending) never touches the
    next message: that one gets a fresh connection."""

    group = MAX_UNRECORDED  # what the relay took is out: a crash before its record sends it again
    recovered: Sequence[str] = ()

    def __init__(self, config: OutboundConfig, password: str | None) -> None:
        self.config = config
        self.password = password
        self._client: aiosmtplib.SMTP | None = None
        self._messages = 0  # sent over this connection

    async def deliver(self, parcels: Sequence[Parcel]) -> Outcomes:
        outcomes: Outcomes = []
        for item, message in parcels:
            try:
                await self.send(item.envelope_from, item.recipients, message)
            except DeliveryError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    async def recorded(self, ids: Collection[int]) -> Collection[int]:
        return ids  # sent already

    async def send(self, envelope_from: str, recipients: Sequence[str], message: bytes) -> None:
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
    """Writes each message into a maildir's new/ folder, durably, and only once it is recorded as sent (the
    module's docstring says how, and why a crash then delivers nothing twice)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.host = socket.gethostname()  # in every file's name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # what we send is the customers' mail: ours alone
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(mode=0o700, exist_ok=True)

    @asynccontextmanager
    async def session(self, lookup: Lookup) -> AsyncIterator[Handover]:
        try:
            folders = _Folders(self.path)
        except OSError as exc:  # nothing can be written: every message waits for its retry
            yield _Refusing(_error(self.path, exc))
            return
        try:
            yield _Staging(folders, self.host, await _recover(folders, lookup))
        finally:
            folders.close()


class _Folders:
    """The maildir's tmp/ and new/, open for one drain: files are made, renamed and removed by name in them
    (no path built per file), and each folder is fsynced once for a group."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = os.open(path / "tmp", os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.new = os.open(path / "new", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            os.close(self.tmp)
            raise

    def write(self, files: Sequence[tuple[str, bytes]]) -> list[OSError | None]:
        """The files in tmp/, their bytes durable (not yet their names: `os.fsync(self.tmp)`): what failed for
        each, None where nothing did. Every file is written before the first fsync: the file system then
        makes them durable in fewer journal commits (a third less CPU for 50 files, measured here)."""
        failures: list[OSError | None] = [None] * len(files)
        opened: list[tuple[int, int]] = []  # (index, descriptor)
        for index, (name, message) in enumerate(files):
            try:
                fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=self.tmp)
            except OSError as exc:
                failures[index] = exc
                continue
            opened.append((index, fd))
            try:
                view = memoryview(message.replace(b"\r\n", b"\n"))
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                failures[index] = exc
        for index, fd in opened:
            try:
                if failures[index] is None:
                    os.fsync(fd)
            except OSError as exc:
                failures[index] = exc
            finally:
                os.close(fd)
        return failures

    def settle(self, placed: Collection[str], removed: Collection[str]) -> list[str]:
        """Files from tmp/ into new/, durably, and others removed; returns the files this call moved. One
        already gone was placed by another drain (one that found it after a crash, below): a rename happens
        once, so no file is placed twice. A file that cannot be moved stays in tmp/, recorded as sent: a
        later drain moves it (_recover), and counts it then."""
        self.remove(removed)
        moved = []
        try:
            for name in placed:
                try:
                    os.rename(name, name, src_dir_fd=self.tmp, dst_dir_fd=self.new)
                except FileNotFoundError:
                    continue
                moved.append(name)
            if moved:
                os.fsync(self.new)
        except OSError as exc:
            log.error("cannot move sent mail into %s: %s; the next drain tries again", self.path / "new", exc.strerror)
        return moved

    def remove(self, names: Collection[str]) -> None:
        """Files of tmp/ that will never be placed; one that cannot be removed is left there, harmless."""
        for name in names:
            try:
                os.unlink(name, dir_fd=self.tmp)
            except OSError:
                pass

    def close(self) -> None:
        os.close(self.tmp)
        os.close(self.new)


class _Staging:
    """A drain's handover to the maildir: each group written to tmp/, then placed in new/ as recorded."""

    group = BATCH  # a crash delivers nothing twice, whatever the group's size

    def __init__(self, folders: _Folders, host: str, recovered: Sequence[str]) -> None:
        self.folders = folders
        self.host = host
        self.recovered = recovered
        self._staged: dict[int, str] = {}  # the group's files in tmp/, by item

    async def deliver(self, parcels: Sequence[Parcel]) -> Outcomes:
        return await asyncio.to_thread(self._write, parcels)  # fsync blocks

    def _write(self, parcels: Sequence[Parcel]) -> Outcomes:
        # Every name before any file: a Message-ID's digest made between two fsyncs ran on cold caches (10 µs
        # of CPU each instead of 0.5, measured in the drain).
        names = [f"{time.time_ns()}.{_staged_name(item.id, item.attempts, item.message_id)}.{self.host}" for item, _ in parcels]
        failures = self.folders.write([(name, message) for name, (_, message) in zip(names, parcels)])
        self.folders.remove([name for name, failure in zip(names, failures) if failure is not None])
        outcomes: Outcomes = []
        for name, (item, _), failure in zip(names, parcels, failures):
            if failure is None:
                self._staged[item.id] = name
            outcomes.append(None if failure is None else _error(self.folders.path, failure))
        if self._staged:
            try:
                os.fsync(self.folders.tmp)  # the group's names: a record must never name a file a crash lost
            except OSError as exc:
                self.folders.remove(self._staged.values())
                self._staged.clear()
                return [_error(self.folders.path, exc)] * len(parcels)
        return outcomes

    async def recorded(self, ids: Collection[int]) -> Collection[int]:
        staged, self._staged = self._staged, {}
        placed = [name for item, name in staged.items() if item in ids]
        withdrawn = [name for item, name in staged.items() if item not in ids]  # claimed again: not ours to send
        moved = set(await asyncio.to_thread(self.folders.settle, placed, withdrawn))
        return [item for item, name in staged.items() if name in moved]


class _Refusing:
    """The handover of a maildir that cannot be opened: every message fails, to be retried."""

    group = BATCH
    recovered: Sequence[str] = ()

    def __init__(self, failure: DeliveryError) -> None:
        self.failure = failure

    async def deliver(self, parcels: Sequence[Parcel]) -> Outcomes:
        return [self.failure] * len(parcels)

    async def recorded(self, ids: Collection[int]) -> Collection[int]:
        return ()  # nothing was taken


def _error(path: Path, exc: OSError) -> DeliveryError:
    return DeliveryError(f"cannot write to {path}: {exc.strerror}")


# The middle of a staged file's name (between its time and its host): the item, its claim, and a digest of
# its Message-ID (so a file of another database's item with the same id, in a shared folder, is left alone).
STAGED = re.compile(r"mailbot-(\d+)-(\d+)-([0-9a-f]{16})")


def _staged_name(item: int, attempts: int, message_id: str) -> str:
    return f"mailbot-{item}-{attempts}-{_digest(message_id)}"


def _digest(message_id: str) -> str:
    return hashlib.sha256(message_id.encode()).hexdigest()[:16]


async def _recover(folders: _Folders, lookup: Lookup) -> list[str]:
    """What earlier drains left in tmp/ (a crash, a failed record): files whose claim is recorded as sent go
    into new/, files of a claim that can no longer be recorded (the item was sent by another claim, or
    claimed again) are removed, and files of a claim still open are left to it. Returns the kinds of the
    messages it delivered (they count as sent: the drain that recorded them never got to)."""
    found: dict[str, tuple[int, int, str]] = {}
    for name in os.listdir(folders.tmp):
        parts = name.split(".", 2)
        if len(parts) == 3 and (matched := STAGED.fullmatch(parts[1])):
            found[name] = (int(matched[1]), int(matched[2]), matched[3])
    if not found:
        return []
    items = await lookup(sorted({item for item, _, _ in found.values()}))
    placed, removed, kinds = [], [], {}
    for name, (item, attempts, digest) in found.items():
        state = items.get(item)
        if state is None or _digest(state.message_id) != digest:
            continue  # not an item of this database
        if state.sent and state.attempts == attempts:
            placed.append(name)
            kinds[name] = state.kind
        elif state.sent or state.attempts > attempts:
            removed.append(name)
    if placed:
        log.warning("delivering %d message(s) recorded as sent before a crash: %s", len(placed), ", ".join(placed))
    if not (placed or removed):
        return []
    return [kinds[name] for name in await asyncio.to_thread(folders.settle, placed, removed)]


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
        async with self.transport.session(self._lookup) as handover:
            for kind in handover.recovered:
                self._delivered(kind)
            while not self._stopping and self.current():
                items = await self.db.run_statements(outbox_store.claim_due, self.clock.now(), self.worker, LEASE, BATCH)
                for start in range(0, len(items), handover.group):
                    if self._stopping or not self.current():
                        await self.db.run_statements(outbox_store.release, [i.id for i in items[start:]], self.worker)
                        return sent
                    sent += await self._send(items[start : start + handover.group], handover)
                if len(items) < BATCH:  # all that was due when it claimed: what came since wakes the drain again
                    break
        return sent

    def stop(self) -> None:
        """Every drain ends after the messages in hand; what it claimed beyond is given back unsent (as when
        its claims may have been taken over: another instance sends those)."""
        self._stopping = True

    async def _send(self, items: Sequence[Claimed], handover: Handover) -> int:
        """One group: handed to the transport, then what it took recorded as sent, and what it refused as a
        failed attempt. Returns how many went out."""
        outcomes = await handover.deliver(list(zip(items, await self.finish(items))))
        delivered = [item for item, failure in zip(items, outcomes) if failure is None]
        recorded: set[int] = set()
        placed: set[int] = set()
        if delivered:
            now = self.clock.now()
            recorded = await self.db.run_statements(outbox_store.record_sent, delivered, now)
            placed = set(await handover.recorded(recorded))
        for item, failure in zip(items, outcomes):
            if failure is not None:
                await self._failed(item, failure)
            elif item.id in recorded:
                log.info("sent %s %s for ticket %s to %s", item.kind, item.message_id, item.ticket_id, ", ".join(item.recipients))
                if item.id in placed:  # else a later drain delivers it, and counts it then
                    self._delivered(item.kind)
            else:
                log.warning(
                    "%s %s for ticket %s: handed over after another instance claimed it again; not recorded here",
                    item.kind, item.message_id, item.ticket_id,
                )
        return len(recorded)

    def _delivered(self, kind: str) -> None:
        if self.metrics:
            self.metrics.delivered(kind)

    async def _failed(self, item: Claimed, exc: DeliveryError) -> None:
        permanent = is_permanent(exc.code)
        retry_at = None if permanent else self.clock.now() + retry_delay(item.attempts, self.retry_cap)
        log.error(
            "%s %s for ticket %s to %s not sent (attempt %d): %s; %s",
            item.kind, item.message_id, item.ticket_id, ", ".join(item.recipients), item.attempts, exc,
            "giving up" if permanent else f"retrying at {retry_at:%H:%M:%S}",
        )
        await self.db.run_statements(outbox_store.mark_attempt_failed, item.id, str(exc), retry_at)

    async def next_due(self) -> datetime | None:
        return await self.db.run_statements(outbox_store.next_due)

    async def _lookup(self, ids: Sequence[int]) -> dict[int, ItemState]:
        return await self.db.run_statements(outbox_store.states, ids)
