"""IMAP in: watch one mailbox and feed each new message through the same door as the SMTP listener.

One `MailboxWatcher` per `[[imap]]` table. A pass selects the folder, asks for every UID above the stored
cursor, fetches them in small batches with BODY.PEEK[] (a plain BODY[] would set \\Seen, RFC 3501 section
6.4.5), hands each message to the sink, which commits it, and once the intake has decided the batch moves
it: what could not be read to the failed folder, the rest to the processed folder (RFC 6851 MOVE, or COPY +
\\Deleted + EXPUNGE) or flagged \\Seen; then the cursor moves on. Between passes it waits in IDLE (RFC
2177), renewed well before servers drop it, or polls.

A crash between the sink's commit and the move re-reads at most one batch; the sink's Message-ID and
content-hash dedupe makes that harmless. Nothing leaves the folder before it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote

import aioimaplib

from mailbot.errors import ConfigError, TransientError

T = TypeVar("T")


class MailboxConfig(Protocol):
    """The attributes of one `[[imap]]` table that the watcher reads (INTERFACE.md names them)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def security(self) -> Literal["ssl", "starttls", "none"]: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def folder(self) -> str: ...
    @property
    def processed_folder(self) -> str | None: ...
    @property
    def failed_folder(self) -> str: ...
    @property
    def idle(self) -> bool: ...
    @property
    def poll_interval(self) -> timedelta: ...


class Sink(Protocol):
    """The ingest door shared with the SMTP listener."""

    async def accept(self, raw: bytes, *, source: str) -> int:
        """Store `raw` durably and return its stored id after the commit; TransientError when it could not."""
        ...

    async def unreadable(self, stored: list[int]) -> set[int]:
        """Which of these stored messages could not be read (they go to the failed folder), once the intake
        has decided them; a message not decided within the sink's patience counts as readable (it is stored,
        and the intake decides it later)."""
        ...


class CursorStore(Protocol):
    """Where each mailbox's UIDVALIDITY and last handled UID survive restarts."""

    async def load(self, mailbox: str) -> tuple[int | None, int]:
        """(uidvalidity, last_uid handled); (None, 0) for a mailbox never seen."""
        ...

    async def save(self, mailbox: str, uidvalidity: int, last_uid: int) -> None: ...


class ImapError(TransientError):
    """The IMAP server refused a command, or the connection failed or timed out: reconnect and retry."""


class LoginRefused(ImapError):
    """The server refused the credentials (or the password file could not be read): retry slowly."""


class WatcherState(enum.StrEnum):
    CONNECTING = "connecting"
    SYNCING = "syncing"
    IDLE = "idle"
    POLLING = "polling"
    BACKOFF = "backoff"
    STOPPED = "stopped"


# ---- pure helpers: configuration, IMAP answers as aioimaplib splits them, retry timing ----------------


def mailbox_key(cfg: MailboxConfig) -> str:
    """The stable name of a watched mailbox, the key of its cursor."""
    return f"{cfg.username}@{cfg.host}:{cfg.port}/{cfg.folder}"


def check_config(cfg: MailboxConfig) -> None:
    """ConfigError unless the password goes over TLS (or loopback), there is one, and nothing is moved
    back into the watched folder."""
    if cfg.security == "none" and not _is_loopback(cfg.host):
        raise ConfigError(
            f'imap.security: "none" sends the password in clear text; it is allowed only for a loopback '
            f"host, not {cfg.host!r}"
        )
    if cfg.password is None and cfg.password_file is None:
        raise ConfigError(f"imap.password: {mailbox_key(cfg)} needs password or password_file")
    # a message moved into the watched folder would come back with a new UID, again and again
    for key, target in (("processed_folder", cfg.processed_folder), ("failed_folder", cfg.failed_folder)):
        if target == cfg.folder:
            raise ConfigError(f"imap.{key}: must differ from folder ({cfg.folder!r})")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":  # RFC 6761 section 6.3: always the loopback interface
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_LITERAL = re.compile(rb"\d+ FETCH \(.*BODY\[\] \{(\d+)\}")
_UID_ITEM = re.compile(rb"\bUID (\d+)")
_EXISTS = re.compile(rb"\* \d+ EXISTS")


def uidvalidity_of(lines: Sequence[bytes | bytearray]) -> int:
    """The UIDVALIDITY of a SELECT answer (RFC 3501 section 6.3.1 makes it mandatory)."""
    for line in lines:
        found = _UIDVALIDITY.search(line)
        if found is not None:
            return int(found.group(1))
    raise ImapError("SELECT answer carries no UIDVALIDITY")


def new_uids(lines: Sequence[bytes | bytearray], last_uid: int) -> list[int]:
    """The UIDs above `last_uid` in a UID SEARCH answer (search data first, the completion text last).

    `UID SEARCH UID n:*` also names the highest UID when it is below n, because `*` is the largest UID in
    use and n:* means the same as *:n (RFC 3501 section 6.4.8), hence the filter.
    """
    found = {int(token) for line in lines[:-1] for token in line.split() if token.isdigit()}
    return sorted(uid for uid in found if uid > last_uid)


def fetched_messages(lines: Sequence[bytes | bytearray]) -> list[tuple[int, bytes]]:
    """(UID, raw message) pairs, by UID, from a `UID FETCH ... (UID BODY.PEEK[])` answer.

    aioimaplib gives each message as three items: the line announcing the literal, the literal, and the
    rest of the FETCH line; the UID item may be in the first or (on some servers) the last.
    """
    found: list[tuple[int, bytes]] = []
    index = 0
    while index + 2 < len(lines):
        head = _FETCH_LITERAL.fullmatch(lines[index])
        if head is None:
            index += 1
            continue
        raw, tail = lines[index + 1], lines[index + 2]
        uid = _UID_ITEM.search(lines[index]) or _UID_ITEM.search(tail)
        if uid is None or len(raw) != int(head.group(1)):
            raise ImapError(f"malformed FETCH answer: {bytes(lines[index])[:80]!r}")
        found.append((int(uid.group(1)), bytes(raw)))
        index += 3
    return sorted(found)


def uid_set(uids: Sequence[int]) -> str:
    """An RFC 3501 sequence-set for ascending UIDs: [1, 2, 3, 7] -> "1:3,7"."""
    runs: list[tuple[int, int]] = []
    for uid in uids:
        if runs and uid == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], uid)
        else:
            runs.append((uid, uid))
    return ",".join(str(first) if first == last else f"{first}:{last}" for first, last in runs)


def retry_delay(failures: int, cap: float, jitter: float, *, refused: bool = False) -> float:
    """Seconds to wait after `failures` failures in a row: 1, 2, 4 ... up to `cap` (straight to `cap`
    for refused credentials, so a wrong password is not hammered), spread over [half, full] by `jitter`
    in [0, 1) so that watchers of one server do not reconnect in step."""
    nominal = cap if refused else min(cap, 2.0 ** min(failures - 1, 32))  # a float overflows past 2**1023
    return nominal * (0.5 + jitter / 2)


def _text(response: aioimaplib.Response) -> str:
    """The completion text of a command (the last line aioimaplib keeps)."""
    last = response.lines[-1] if response.lines else b""
    return bytes(last).decode(errors="replace")


def _expect_ok(what: str, response: aioimaplib.Response) -> None:
    if response.result != "OK":
        raise ImapError(f"{what} refused: {response.result} {_text(response)}")


def _describe(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


# ---- the connection ------------------------------------------------------------------------------------


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, noting two things it drops: new mail reported outside IDLE, and the end
    of the connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.saw_exists = False
        self.closed: asyncio.Future[None] = loop.create_future()

    def _untagged_response(self, line: bytes) -> Any:
        # A server may report new mail (EXISTS) at the end of any command (RFC 3501 section 7.3.1), and
        # Dovecot does so after a UID SEARCH that could not see it yet; aioimaplib only logs such lines.
        if _EXISTS.match(line):
            self.saw_exists = True
        return super()._untagged_response(line)

    def connection_lost(self, exc: Exception | None) -> None:
        # aioimaplib leaves pending commands waiting for their timeout: _Session.call races this instead.
        if not self.closed.done():
            self.closed.set_result(None)
        super().connection_lost(exc)


class _Client(aioimaplib.IMAP4):  # type: ignore[misc]
    """aioimaplib's client on `_Protocol` (IMAP4_SSL is the same with a default TLS context)."""

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # IMAP4.create_client, with our protocol class
        running = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(running)
        self._client_task = running.create_task(
            running.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


class _Session:
    """One connection to the server, through login and SELECT; every command fails fast as ImapError."""

    def __init__(self, client: _Client, timeout: float) -> None:
        self.client = client
        self.protocol: _Protocol = client.protocol
        self.timeout = timeout

    async def call(self, what: str, command: Awaitable[T], timeout: float | None) -> T:
        """The command's answer; ImapError when it fails, times out or loses its connection."""
        task = asyncio.ensure_future(command if timeout is None else asyncio.wait_for(command, timeout))
        try:
            waits: set[asyncio.Future[Any]] = {task, self.protocol.closed}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if task not in done:
            raise ImapError(f"{what}: the server closed the connection")
        try:
            return task.result()
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:  # ssl.SSLError is an OSError
            raise ImapError(f"{what} failed: {_describe(exc)}") from exc

    async def ok(self, what: str, command: Awaitable[aioimaplib.Response]) -> aioimaplib.Response:
        response = await self.call(what, command, self.timeout)
        _expect_ok(what, response)
        return response

    async def noop(self) -> None:
        """NOOP makes the server look for new mail (RFC 3501 section 6.1.2): Dovecot's SEARCH does not
        rescan a maildir that another program delivered into."""
        await self.ok("NOOP", self.client.noop())

    async def greeting(self) -> None:
        await self.call("connect", self.client.wait_hello_from_server(), None)  # it has its own timeout

    async def starttls(self, context: ssl.SSLContext, hostname: str) -> None:
        """Upgrade to TLS (RFC 3501 section 6.2.1), which aioimaplib lacks; never go on in clear text."""
        protocol = self.protocol
        if not self.client.has_capability("STARTTLS"):
            raise ImapError("the server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        await self.ok("STARTTLS", protocol.execute(command))
        handshake = asyncio.get_running_loop().start_tls(
            protocol.transport, protocol, context, server_hostname=hostname
        )
        protocol.transport = await self.call("TLS handshake", handshake, self.timeout)
        # the capabilities learned before TLS must be forgotten (RFC 3501 section 6.2.1)
        await self.call("CAPABILITY", protocol.capability(), self.timeout)

    async def login(self, username: str, password: str) -> None:
        response = await self.call("LOGIN", self.client.login(aioimaplib.quoted(username), password), None)
        if response.result != "OK":
            if "[UNAVAILABLE]" in _text(response):  # RFC 5530 section 3: a temporary failure
                raise ImapError(f"login failed: {_text(response)}")
            raise LoginRefused(f"login refused: {_text(response)}")
        # capabilities may change after login (RFC 3501 section 6.2.3): MOVE, UIDPLUS, IDLE are read then
        await self.call("CAPABILITY", self.protocol.capability(), self.timeout)

    async def select(self, folder: str) -> int:
        """SELECT the folder; its UIDVALIDITY."""
        response = await self.call("SELECT", self.client.select(aioimaplib.quoted(folder)), None)
        _expect_ok(f"SELECT {folder}", response)
        return uidvalidity_of(response.lines)

    async def uids_after(self, last_uid: int) -> list[int]:
        search = self.client.uid_search(f"UID {last_uid + 1}:*", charset=None)
        response = await self.call("UID SEARCH", search, None)
        _expect_ok("UID SEARCH", response)
        return new_uids(response.lines, last_uid)

    async def fetch(self, uids: Sequence[int]) -> list[tuple[int, bytes]]:
        # no overall timeout: aioimaplib times out a FETCH only when the data stops flowing
        response = await self.call(
            "UID FETCH", self.client.uid("fetch", uid_set(uids), "(UID BODY.PEEK[])"), None
        )
        _expect_ok("UID FETCH", response)
        return fetched_messages(response.lines)

    async def flag_seen(self, uids: Sequence[int]) -> None:
        await self.ok("UID STORE", self.client.uid("store", uid_set(uids), "+FLAGS.SILENT", r"(\Seen)"))

    async def move(self, uids: Sequence[int], folder: str) -> None:
        """UID MOVE (RFC 6851), else UID COPY + \\Deleted + (UID) EXPUNGE."""
        uid_text, target = uid_set(uids), aioimaplib.quoted(folder)
        if self.client.has_capability("MOVE"):
            await self._into(folder, "UID MOVE", lambda: self.client.uid("move", uid_text, target))
            return
        await self._into(folder, "UID COPY", lambda: self.client.uid("copy", uid_text, target))
        await self.ok("UID STORE", self.client.uid("store", uid_text, "+FLAGS.SILENT", r"(\Deleted)"))
        if self.client.has_capability("UIDPLUS"):  # RFC 4315 section 2.1: expunges only these UIDs
            await self.ok("UID EXPUNGE", self.client.uid("expunge", uid_text))
        else:  # also expunges what other clients marked \Deleted (RFC 4315 section 1): the only way left
            await self.ok("EXPUNGE", self.client.expunge())

    async def _into(
        self, folder: str, what: str, command: Callable[[], Awaitable[aioimaplib.Response]]
    ) -> None:
        """Run a MOVE or COPY; create the folder and retry once when the server says TRYCREATE."""
        response = await self.call(what, command(), self.timeout)
        if response.result == "NO" and "[TRYCREATE]" in _text(response):  # RFC 3501 section 6.4.7
            created = await self.call("CREATE", self.client.create(aioimaplib.quoted(folder)), None)
            if created.result != "OK" and "[ALREADYEXISTS]" not in _text(created):  # RFC 5530: a race
                raise ImapError(f"CREATE {folder} refused: {_text(created)}")
            response = await self.call(what, command(), self.timeout)
        _expect_ok(f"{what} to {folder}", response)

    async def idle(self, renew: float, stopping: asyncio.Event) -> None:
        """Wait in IDLE (RFC 2177) until new mail is reported, `renew` seconds pass or `stopping` is set."""
        idle = await self.call("IDLE", self.client.idle_start(timeout=renew), self.timeout)
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not self.protocol.saw_exists:  # "* OK Still here" and EXPUNGE reports keep us idling
                push = asyncio.ensure_future(self.client.wait_server_push(timeout=renew + self.timeout))
                done, _ = await asyncio.wait(
                    {push, stop, self.protocol.closed}, return_when=asyncio.FIRST_COMPLETED
                )
                if push not in done:
                    push.cancel()
                    break
                if push.exception() is not None or push.result() == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break  # time to renew
        finally:
            stop.cancel()
        if self.protocol.closed.done():
            idle.cancel()  # its answer will never come
            raise ImapError("IDLE: the server closed the connection")
        self.client.idle_done()
        _expect_ok("IDLE", await self.call("IDLE", idle, self.timeout))

    async def logout(self) -> None:
        try:
            await self.call("LOGOUT", self.client.logout(), None)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the connection without a word (after an error, or when cancelled)."""
        if self.protocol.transport is not None:
            self.protocol.transport.close()


# ---- the watcher ---------------------------------------------------------------------------------------


class MailboxWatcher:
    """Feeds one IMAP folder into the sink until stopped; one mailbox's trouble stays its own."""

    def __init__(
        self,
        cfg: MailboxConfig,
        sink: Sink,
        cursors: CursorStore,
        *,
        batch_size: int = 25,
        idle_renew: timedelta = timedelta(minutes=9),
        backoff_max: float = 60.0,
        log: logging.Logger | None = None,
        ssl_context: ssl.SSLContext | None = None,
        command_timeout: float = 30.0,
    ) -> None:
        """`batch_size` stays in the tens: aioimaplib's FETCH parsing grows with the square of the
        messages in one answer. `idle_renew` stays well under the 29 minutes of RFC 2177 section 3.
        `ssl_context` defaults to the system's trust store with hostname checks."""
        check_config(cfg)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._cfg = cfg
        self._sink = sink
        self._cursors = cursors
        self._batch_size = batch_size
        self._idle_renew = idle_renew.total_seconds()
        self._backoff_max = backoff_max
        self._log = log or logging.getLogger(__name__)
        self._tls = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._timeout = command_timeout
        self._key = mailbox_key(cfg)
        self._session: _Session | None = None
        self._uidvalidity = 0
        self._last_uid = 0
        self._state = WatcherState.STOPPED
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False

    @property
    def key(self) -> str:
        return self._key

    @property
    def state(self) -> WatcherState:
        return self._state

    async def run(self) -> None:
        """Pass, wait for news (IDLE or poll), pass again, until stop(); reconnect after any trouble."""
        self._running = True
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    await self.sync_once()
                    if failures:
                        self._log.info("imap %s: working again", self._key)
                    failures = 0
                    await self._wait_for_news()
                except Exception as exc:  # noqa: BLE001 - even a bug must not stop the other mailboxes
                    failures += 1
                    await self._recover(exc, failures)
            await self._logout()
        except asyncio.CancelledError:
            self._drop()
            raise
        finally:
            self._state = WatcherState.STOPPED
            self._running = False
            self._finished.set()

    async def stop(self) -> None:
        """Finish the message in hand, move what is stored, log out; returns once run() has ended."""
        self._stopping.set()
        if self._running:
            await self._finished.wait()
        else:
            await self._logout()

    async def sync_once(self) -> int:
        """One pass: connect if needed, store and move every message above the cursor; how many."""
        if self._session is None:
            self._state = WatcherState.CONNECTING
            self._session = await self._connect()
        self._state = WatcherState.SYNCING
        try:
            return await self._drain(self._session)
        except ImapError:
            self._drop()
            raise

    async def _connect(self) -> _Session:
        cfg = self._cfg
        password = self._password()
        implicit_tls = self._tls if cfg.security == "ssl" else None
        session = _Session(
            _Client(cfg.host, cfg.port, timeout=self._timeout, ssl_context=implicit_tls), self._timeout
        )
        try:
            await session.greeting()
            if cfg.security == "starttls":
                await session.starttls(self._tls, cfg.host)
            await session.login(cfg.username, password)
            uidvalidity = await session.select(cfg.folder)
            await self._load_cursor(uidvalidity)
        except BaseException:
            session.abort()
            raise
        self._log.info(
            "imap %s: connected (UIDVALIDITY %d, last UID handled %d, %s)",
            self._key,
            uidvalidity,
            self._last_uid,
            "IDLE" if self._can_idle(session) else f"polling every {cfg.poll_interval}",
        )
        return session

    def _password(self) -> str:
        """The password; password_file is read at each connection, so a rotated secret is picked up."""
        if self._cfg.password_file is None:
            assert self._cfg.password is not None  # check_config
            return self._cfg.password
        try:
            text = self._cfg.password_file.read_text()
        except OSError as exc:
            raise LoginRefused(
                f"cannot read password_file {self._cfg.password_file}: {exc.strerror}"
            ) from exc
        return text.removesuffix("\n").removesuffix("\r")

    async def _load_cursor(self, uidvalidity: int) -> None:
        stored, last_uid = await self._cursors.load(self._key)
        if stored != uidvalidity:
            if stored is not None:
                # RFC 3501 section 2.3.1.1: the old UIDs mean nothing now; read the folder again, the
                # sink's dedupe drops what was already stored
                self._log.warning(
                    "imap %s: UIDVALIDITY changed from %d to %d; reading the whole folder again",
                    self._key,
                    stored,
                    uidvalidity,
                )
            last_uid = 0
            await self._cursors.save(self._key, uidvalidity, 0)
        self._uidvalidity, self._last_uid = uidvalidity, last_uid

    async def _drain(self, session: _Session) -> int:
        handled = 0
        while not self._stopping.is_set():
            await session.noop()
            session.protocol.saw_exists = False
            uids = await session.uids_after(self._last_uid)
            if not uids and not session.protocol.saw_exists:
                break  # an EXISTS at the end of that search names mail it could not see yet: search again
            for start in range(0, len(uids), self._batch_size):
                if self._stopping.is_set():
                    break
                handled += await self._handle_batch(session, uids[start : start + self._batch_size])
        return handled

    async def _handle_batch(self, session: _Session, uids: list[int]) -> int:
        """Store each fetched message, then settle the stored ones; a sink failure is raised after."""
        stored: list[tuple[int, int]] = []  # (uid, stored id)
        failure: TransientError | None = None
        for uid, raw in await session.fetch(uids):
            if self._stopping.is_set():
                break
            try:
                stored.append((uid, await self._sink.accept(raw, source=self._source(uid))))
            except TransientError as exc:
                failure = exc
                break
        unreadable = await self._sink.unreadable([inbound_id for _, inbound_id in stored]) if stored else set()
        done = [(uid, inbound_id in unreadable) for uid, inbound_id in stored]
        complete = failure is None and not self._stopping.is_set()
        # UIDs the server no longer has (expunged meanwhile) are passed over with a complete batch
        await self._settle(session, done, uids[-1] if complete else None)
        if failure is not None:
            raise failure
        return len(done)

    async def _settle(self, session: _Session, done: list[tuple[int, bool]], through: int | None) -> None:
        """Move (or flag) the stored messages out of the way, then advance the cursor past them."""
        failed = [uid for uid, parse_failed in done if parse_failed]
        fine = [uid for uid, parse_failed in done if not parse_failed]
        if failed:
            await session.move(failed, self._cfg.failed_folder)
        processed = self._cfg.processed_folder
        if fine and processed is None:
            await session.flag_seen(fine)
        elif fine and processed is not None:
            await session.move(fine, processed)
        last = through if through is not None else (done[-1][0] if done else self._last_uid)
        if last > self._last_uid:
            await self._cursors.save(self._key, self._uidvalidity, last)
            self._last_uid = last

    def _source(self, uid: int) -> str:
        """The message's IMAP URL (RFC 5092), for the record of where it came from."""
        cfg = self._cfg
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        return (
            f"imap://{quote(cfg.username, safe='')}@{host}:{cfg.port}/{quote(cfg.folder)}"
            f";UIDVALIDITY={self._uidvalidity}/;UID={uid}"
        )

    def _can_idle(self, session: _Session) -> bool:
        return self._cfg.idle and bool(session.client.has_capability("IDLE"))

    async def _wait_for_news(self) -> None:
        session = self._session
        assert session is not None  # sync_once connected
        if self._stopping.is_set():
            return
        if self._can_idle(session):
            self._state = WatcherState.IDLE
            await session.idle(self._idle_renew, self._stopping)
        else:
            self._state = WatcherState.POLLING
            await self._pause(self._cfg.poll_interval.total_seconds())

    async def _recover(self, exc: Exception, failures: int) -> None:
        """One log line for the failure, then wait (stop() cuts the wait short)."""
        refused = isinstance(exc, LoginRefused)
        delay = retry_delay(failures, self._backoff_max, random.random(), refused=refused)
        if refused:
            # one line per attempt, and attempts are backoff_max apart: no flood for a wrong password
            self._log.error("imap %s: %s; next attempt in %.1f s", self._key, exc, delay)
        elif isinstance(exc, ImapError):
            self._log.warning("imap %s: %s; reconnecting in %.1f s", self._key, exc, delay)
        elif isinstance(exc, TransientError):  # the sink or the cursor store: the connection is fine
            self._log.warning("imap %s: could not store: %s; retrying in %.1f s", self._key, exc, delay)
        else:
            self._log.error(
                "imap %s: unexpected error; reconnecting in %.1f s", self._key, delay, exc_info=exc
            )
        if isinstance(exc, ImapError) or not isinstance(exc, TransientError):
            self._drop()
        self._state = WatcherState.BACKOFF
        await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _logout(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            await session.logout()
        except ImapError as exc:
            self._log.info("imap %s: logout: %s", self._key, exc)
        else:
            self._log.info("imap %s: logged out", self._key)

    def _drop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.abort()
