"""The IMAP way in, against a real Dovecot on loopback (tests/dovecot.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest

from mailbot.errors import ConfigError, TransientError
from mailbot.imap import (
    ImapError,
    LoginRefused,
    MailboxWatcher,
    WatcherState,
    _Protocol,
    fetched_messages,
    mailbox_key,
    new_uids,
    retry_delay,
    uid_set,
)
from tests.dovecot import Account, Dovecot, message_id_of, running_dovecot, sample_message
from tests.world import until

# ---- test doubles of the lead's config model and store -------------------------------------------------


@dataclass(frozen=True)
class ImapConfig:
    """The attributes of an `[[imap]]` table (the real config model has the same names)."""

    host: str
    port: int
    username: str
    security: Literal["ssl", "starttls", "none"] = "none"
    password: str | None = None
    password_file: Path | None = None
    folder: str = "INBOX"
    processed_folder: str | None = "Processed"
    failed_folder: str = "Failed"
    idle: bool = True
    poll_interval: timedelta = timedelta(seconds=60)


@dataclass
class MemorySink:
    """Keeps every accepted message in order. Messages containing b"BROKEN" do not parse; `before` runs
    before each store and may raise TransientError to refuse it."""

    received: list[tuple[bytes, str]] = field(default_factory=list)
    before: Callable[[bytes, int], object] | None = None
    attempts: int = 0

    async def accept(self, raw: bytes, *, source: str) -> int:
        self.attempts += 1
        if self.before is not None:
            outcome = self.before(raw, self.attempts)
            if asyncio.iscoroutine(outcome):
                await outcome
        self.received.append((raw, source))
        return len(self.received) - 1

    async def unreadable(self, stored: list[int]) -> set[int]:
        return {index for index in stored if b"BROKEN" in self.received[index][0]}

    def message_ids(self) -> list[str]:
        return [message_id_of(raw) for raw, _ in self.received]


@dataclass
class MemoryCursors:
    saved: dict[str, tuple[int, int]] = field(default_factory=dict)

    async def load(self, mailbox: str) -> tuple[int | None, int]:
        return self.saved.get(mailbox, (None, 0))

    async def save(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        self.saved[mailbox] = (uidvalidity, last_uid)


def ids(tag: str, numbers: range) -> list[str]:
    return sorted(f"<{n}.{tag}@test.invalid>" for n in numbers)


# ---- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture
def cfg(account: Account) -> ImapConfig:
    return ImapConfig(
        host="127.0.0.1", port=account.server.port, username=account.username, password=account.password
    )


@pytest.fixture
async def stopped() -> AsyncIterator[list[MailboxWatcher]]:
    """Watchers to stop at the end of a test, whatever happened."""
    watchers: list[MailboxWatcher] = []
    yield watchers
    for watcher in watchers:
        await watcher.stop()


def background(watcher: MailboxWatcher, stopped: list[MailboxWatcher]) -> asyncio.Task[None]:
    stopped.append(watcher)
    return asyncio.create_task(watcher.run())


# ---- the pure parts ------------------------------------------------------------------------------------


class TestWireHelpers:
    def test_search_drops_the_last_uid_that_n_star_always_returns(self) -> None:
        """UID SEARCH UID 8:* answers 7 when 7 is the highest UID: it is not new."""
        assert new_uids([b"7", b"Search completed (0.001 + 0.000 secs)."], 7) == []
        assert new_uids([b"8 9 12", b"Search completed"], 7) == [8, 9, 12]
        assert new_uids([b"", b"Search completed"], 0) == []

    def test_fetch_answer_gives_uid_and_bytes_wherever_the_uid_item_is(self) -> None:
        """The UID item may come before the literal (Dovecot) or after it."""
        lines: list[bytes | bytearray] = [
            b"1 FETCH (UID 5 BODY[] {3}",
            bytearray(b"abc"),
            b")",
            b"2 FETCH (BODY[] {2}",
            bytearray(b"de"),
            b" UID 9)",
            b"Fetch completed (0.001 + 0.000 secs).",
        ]
        assert fetched_messages(lines) == [(5, b"abc"), (9, b"de")]

    def test_fetch_answer_with_a_short_literal_is_an_error(self) -> None:
        with pytest.raises(ImapError):
            fetched_messages([b"1 FETCH (UID 5 BODY[] {9}", bytearray(b"abc"), b")", b"done"])

    def test_uid_set_compresses_runs(self) -> None:
        assert uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"
        assert uid_set([4]) == "4"

    def test_retry_delay_doubles_up_to_the_cap_and_refused_logins_wait_the_cap(self) -> None:
        assert [retry_delay(n, 60, 1.0) for n in (1, 2, 3, 7, 8)] == [1, 2, 4, 60, 60]
        assert retry_delay(1, 60, 0.0) == 0.5
        assert retry_delay(1, 60, 0.0, refused=True) == 30
        assert retry_delay(5000, 60, 1.0) == 60  # a server down for days

    def test_mailbox_key_names_user_server_and_folder(self) -> None:
        cfg = ImapConfig(host="imap.example", port=993, username="help@example.org", password="x")
        assert mailbox_key(cfg) == "help@example.org@imap.example:993/INBOX"


class TestProtocol:
    async def test_new_mail_reported_at_the_end_of_a_search_is_noted(self) -> None:
        """aioimaplib would only log the EXISTS that Dovecot appends to a SEARCH answer."""
        protocol = _Protocol(asyncio.get_running_loop())
        protocol.state = "SELECTED"
        protocol.data_received(b"* SEARCH\r\n* 4 EXISTS\r\n* 1 RECENT\r\n")
        assert protocol.saw_exists

    async def test_the_end_of_the_connection_is_noted(self) -> None:
        protocol = _Protocol(asyncio.get_running_loop())
        protocol.connection_lost(None)
        assert protocol.closed.done()


class TestConfiguration:
    @pytest.mark.parametrize("host", ["mail.example.com", "192.0.2.1", "::ffff:192.0.2.1"])
    def test_clear_text_to_a_remote_host_is_refused(self, host: str) -> None:
        cfg = ImapConfig(host=host, port=143, username="u", password="p", security="none")
        with pytest.raises(ConfigError, match=r"imap\.security"):
            MailboxWatcher(cfg, MemorySink(), MemoryCursors())

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "localhost"])
    def test_clear_text_on_loopback_is_allowed(self, host: str) -> None:
        cfg = ImapConfig(host=host, port=143, username="u", password="p", security="none")
        assert MailboxWatcher(cfg, MemorySink(), MemoryCursors()).state is WatcherState.STOPPED

    @pytest.mark.parametrize(
        ("key", "cfg"),
        [
            ("processed_folder", ImapConfig("127.0.0.1", 143, "u", password="p", processed_folder="INBOX")),
            ("failed_folder", ImapConfig("127.0.0.1", 143, "u", password="p", failed_folder="INBOX")),
        ],
    )
    def test_moving_into_the_watched_folder_is_refused(self, key: str, cfg: ImapConfig) -> None:
        with pytest.raises(ConfigError, match=rf"imap\.{key}"):
            MailboxWatcher(cfg, MemorySink(), MemoryCursors())

    def test_a_mailbox_without_any_password_is_refused(self) -> None:
        cfg = ImapConfig(host="127.0.0.1", port=143, username="u")
        with pytest.raises(ConfigError, match=r"imap\.password"):
            MailboxWatcher(cfg, MemorySink(), MemoryCursors())


# ---- against Dovecot -----------------------------------------------------------------------------------


@pytest.mark.dovecot
class TestBacklog:
    async def test_a_backlog_is_stored_once_each_and_moved(self, account: Account, cfg: ImapConfig) -> None:
        """300 waiting messages: each stored once, all moved to Processed, the cursor at the last UID."""
        account.deliver(sample_message(n, tag="backlog") for n in range(300))
        sink, cursors = MemorySink(), MemoryCursors()
        watcher = MailboxWatcher(cfg, sink, cursors)
        try:
            assert await watcher.sync_once() == 300
            assert await watcher.sync_once() == 0
        finally:
            await watcher.stop()
        assert sorted(sink.message_ids()) == ids("backlog", range(300))
        assert account.message_ids("INBOX") == []
        assert account.message_ids("Processed") == ids("backlog", range(300))
        assert cursors.saved[mailbox_key(cfg)] == (account.uidvalidity(), 300)
        assert all(source.startswith(f"imap://{account.username}@127.0.0.1:") for _, source in sink.received)

    async def test_mail_that_arrives_between_passes_is_seen_by_the_next_pass(
        self, account: Account, cfg: ImapConfig
    ) -> None:
        """Mail written into the maildir by another program: a bare UID SEARCH in Dovecot misses it, the
        NOOP that starts each pass finds it."""
        sink = MemorySink()
        watcher = MailboxWatcher(cfg, sink, MemoryCursors())
        try:
            assert await watcher.sync_once() == 0
            account.deliver([sample_message(1, tag="between")])
            assert await watcher.sync_once() == 1
        finally:
            await watcher.stop()
        assert sink.message_ids() == ids("between", range(1, 2))

    async def test_without_a_processed_folder_messages_are_flagged_seen_and_not_read_again(
        self, account: Account, cfg: ImapConfig
    ) -> None:
        account.deliver(sample_message(n, tag="seen") for n in range(3))
        watcher = MailboxWatcher(replace(cfg, processed_folder=None), MemorySink(), MemoryCursors())
        try:
            assert await watcher.sync_once() == 3
            assert await watcher.sync_once() == 0
        finally:
            await watcher.stop()
        assert account.message_ids("INBOX") == ids("seen", range(3))
        assert all("\\Seen" in flags for flags in account.flags("INBOX"))

    async def test_messages_are_fetched_without_being_marked_seen(
        self, account: Account, cfg: ImapConfig
    ) -> None:
        """BODY.PEEK[]: a message the sink refuses stays unread in the INBOX."""
        account.deliver([sample_message(1, tag="peek")])

        def refuse(raw: bytes, attempt: int) -> None:
            raise TransientError("database is down")

        watcher = MailboxWatcher(cfg, MemorySink(before=refuse), MemoryCursors())
        try:
            with pytest.raises(TransientError):
                await watcher.sync_once()
        finally:
            await watcher.stop()
        assert ["\\Seen" in flags for flags in account.flags("INBOX")] == [False]


@pytest.mark.dovecot
class TestFailures:
    async def test_a_message_the_sink_cannot_store_stays_and_is_retried(
        self, account: Account, cfg: ImapConfig
    ) -> None:
        account.deliver(sample_message(n, tag="retry") for n in range(1, 6))

        def third_fails_once(raw: bytes, attempt: int) -> None:
            if attempt == 3:
                raise TransientError("database is locked")

        sink, cursors = MemorySink(before=third_fails_once), MemoryCursors()
        watcher = MailboxWatcher(cfg, sink, cursors)
        try:
            with pytest.raises(TransientError, match="locked"):
                await watcher.sync_once()
            assert account.message_ids("INBOX") == ids("retry", range(3, 6))
            assert cursors.saved[mailbox_key(cfg)][1] == 2
            assert await watcher.sync_once() == 3
        finally:
            await watcher.stop()
        assert sink.message_ids() == [f"<{n}.retry@test.invalid>" for n in range(1, 6)]
        assert account.message_ids("INBOX") == []

    async def test_an_unexpected_error_is_logged_and_the_message_retried(
        self,
        account: Account,
        cfg: ImapConfig,
        stopped: list[MailboxWatcher],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A bug in the pipeline must not end the watcher (nor the daemon's other tasks)."""
        account.deliver([sample_message(1, tag="bug")])

        def fail_first(raw: bytes, attempt: int) -> None:
            if attempt == 1:
                raise RuntimeError("bug in the pipeline")

        sink = MemorySink(before=fail_first)
        watcher = MailboxWatcher(cfg, sink, MemoryCursors(), backoff_max=0.2)
        background(watcher, stopped)
        await until(lambda: len(sink.received) >= 1, "a message stored", 5)
        await until(lambda: watcher.state is WatcherState.IDLE, "the watcher idling", 5)
        assert sink.message_ids() == ["<1.bug@test.invalid>"]
        assert account.message_ids("Processed") == ["<1.bug@test.invalid>"]
        [report] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "unexpected error" in report.getMessage()
        assert report.exc_info is not None  # the traceback is in the log

    async def test_a_message_that_fails_to_parse_goes_to_the_failed_folder(
        self, account: Account, cfg: ImapConfig
    ) -> None:
        """It is stored like the others, then moved to Failed, which is created on first use."""
        good = [sample_message(n, tag="parse") for n in (1, 3)]
        broken = [sample_message(n, tag="parse") + b"BROKEN\r\n" for n in (2, 4)]
        account.deliver([good[0], broken[0], good[1], broken[1]])
        sink = MemorySink()
        watcher = MailboxWatcher(cfg, sink, MemoryCursors())
        try:
            assert await watcher.sync_once() == 4
        finally:
            await watcher.stop()
        assert len(sink.received) == 4
        assert account.message_ids("Failed") == ["<2.parse@test.invalid>", "<4.parse@test.invalid>"]
        assert account.message_ids("Processed") == ["<1.parse@test.invalid>", "<3.parse@test.invalid>"]
        assert account.message_ids("INBOX") == []

    async def test_dovecot_restarted_mid_batch_loses_and_moves_nothing_twice(
        self,
        dovecot: Dovecot,
        account: Account,
        cfg: ImapConfig,
        stopped: list[MailboxWatcher],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The restart drops the connection between the store and the move of a batch: the watcher
        reconnects, reads that batch again (the store's dedupe drops it) and moves each message once."""
        account.deliver(sample_message(n, tag="restart") for n in range(120))

        async def restart_at_40(raw: bytes, attempt: int) -> None:
            if attempt == 40:
                await asyncio.to_thread(dovecot.restart)

        sink = MemorySink(before=restart_at_40)
        watcher = MailboxWatcher(cfg, sink, MemoryCursors(), batch_size=25, backoff_max=0.5)
        background(watcher, stopped)
        await until(lambda: len(set(sink.message_ids())) == 120 and watcher.state is WatcherState.IDLE, "all 120 messages stored, then idling", 20)
        assert sorted(set(sink.message_ids())) == ids("restart", range(120))
        assert 120 < len(sink.received) <= 120 + 25  # the batch in hand, and only it, was read again
        assert account.message_ids("Processed") == ids("restart", range(120))
        assert account.message_ids("INBOX") == []
        assert any(
            "reconnecting in" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
        )

    async def test_uidvalidity_reset_reads_the_folder_again(
        self, account: Account, cfg: ImapConfig, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A restored mailbox numbers its messages from 1 again, below the cursor: they are still read."""
        cursors = MemoryCursors()
        account.deliver(sample_message(n, tag="before") for n in range(5))
        first = MailboxWatcher(cfg, MemorySink(), cursors)
        try:
            assert await first.sync_once() == 5
        finally:
            await first.stop()
        old_validity = account.uidvalidity()
        account.deliver(sample_message(n, tag="after") for n in range(2))
        account.reset_uidvalidity()
        sink = MemorySink()
        second = MailboxWatcher(cfg, sink, cursors)
        try:
            assert await second.sync_once() == 2
        finally:
            await second.stop()
        assert account.uidvalidity() != old_validity
        assert sorted(sink.message_ids()) == ids("after", range(2))
        assert cursors.saved[mailbox_key(cfg)] == (account.uidvalidity(), 2)
        assert account.message_ids("INBOX") == []
        assert any("UIDVALIDITY changed" in r.getMessage() for r in caplog.records)

    async def test_a_wrong_password_is_reported_retried_slowly_and_recovers(
        self,
        dovecot: Dovecot,
        account: Account,
        cfg: ImapConfig,
        stopped: list[MailboxWatcher],
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Each failed attempt logs one error line, and waits at least backoff_max / 2 before the next
        (Dovecot answers a failed login after 0.5 s: a tight loop would make seven attempts in 3.5 s).
        The password file is read again for each attempt."""
        secret = tmp_path / "imap.secret"
        secret.write_text("wrong password\n")
        account.deliver([sample_message(1, tag="auth")])
        sink = MemorySink()
        watcher = MailboxWatcher(
            replace(cfg, password=None, password_file=secret), sink, MemoryCursors(), backoff_max=1.0
        )
        background(watcher, stopped)
        await asyncio.sleep(3.0)
        await until(lambda: watcher.state is WatcherState.BACKOFF, "the watcher backing off", 2)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert 2 <= len(errors) <= 4
        assert all(
            f"imap {watcher.key}: login refused: [AUTHENTICATIONFAILED]" in r.getMessage() for r in errors
        )
        assert all(later.created - earlier.created >= 0.5 for earlier, later in itertools.pairwise(errors))

        def refused_by_server() -> int:
            return len(dovecot.log_lines("(auth failed,", f"user=<{account.username}>"))

        await until(lambda: refused_by_server() >= len(errors), "every refused login logged", 2)
        assert refused_by_server() == len(errors)
        assert sink.received == []
        secret.write_text(account.password + "\n")
        await until(lambda: len(sink.received) >= 1, "a message stored", 5)
        assert sink.message_ids() == ["<1.auth@test.invalid>"]

    async def test_sync_once_reports_a_wrong_password_as_login_refused(self, cfg: ImapConfig) -> None:
        watcher = MailboxWatcher(replace(cfg, password="nope"), MemorySink(), MemoryCursors())
        with pytest.raises(LoginRefused, match="AUTHENTICATIONFAILED"):
            await watcher.sync_once()


@pytest.mark.dovecot
class TestWaiting:
    async def test_a_message_appended_while_idling_arrives_within_two_seconds(
        self, dovecot: Dovecot, account: Account, cfg: ImapConfig, stopped: list[MailboxWatcher]
    ) -> None:
        """IDLE renewed every 0.4 s here: after a few renewals, an APPEND still reaches the sink."""
        sink = MemorySink()
        watcher = MailboxWatcher(cfg, sink, MemoryCursors(), idle_renew=timedelta(seconds=0.4))
        run = background(watcher, stopped)
        await until(lambda: watcher.state is WatcherState.IDLE, "the watcher idling", 5)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(account.append, sample_message(1, tag="idle"))
        await until(lambda: len(sink.received) >= 1, "a message stored", 2.0)
        await until(lambda: watcher.state is WatcherState.IDLE, "the watcher idling", 5)
        await watcher.stop()
        assert run.done()
        assert account.message_ids("Processed") == ["<1.idle@test.invalid>"]
        assert any("Logged out" in line for line in dovecot.log_lines(f"imap({account.username})"))

    async def test_without_idle_it_polls(
        self, account: Account, cfg: ImapConfig, stopped: list[MailboxWatcher]
    ) -> None:
        sink = MemorySink()
        watcher = MailboxWatcher(
            replace(cfg, idle=False, poll_interval=timedelta(seconds=0.2)), sink, MemoryCursors()
        )
        background(watcher, stopped)
        await until(lambda: watcher.state is WatcherState.POLLING, "the watcher polling", 5)
        account.deliver([sample_message(1, tag="poll")])
        await until(lambda: len(sink.received) >= 1, "a message stored", 5)
        assert sink.message_ids() == ["<1.poll@test.invalid>"]

    async def test_stop_finishes_the_message_in_hand_and_logs_out(
        self, dovecot: Dovecot, account: Account, cfg: ImapConfig
    ) -> None:
        account.deliver(sample_message(n, tag="stop") for n in range(1, 11))
        sink, cursors = MemorySink(), MemoryCursors()
        watcher = MailboxWatcher(cfg, sink, cursors)

        stopping: list[asyncio.Task[None]] = []

        async def stop_at_third(raw: bytes, attempt: int) -> None:
            if attempt == 3:
                stopping.append(asyncio.create_task(watcher.stop()))
                await asyncio.sleep(0.1)  # stop() is waiting while this message is still in hand

        sink.before = stop_at_third
        await asyncio.wait_for(watcher.run(), 10)
        assert sink.message_ids() == [f"<{n}.stop@test.invalid>" for n in (1, 2, 3)]
        assert account.message_ids("Processed") == ids("stop", range(1, 4))
        assert account.message_ids("INBOX") == ids("stop", range(4, 11))
        assert cursors.saved[mailbox_key(cfg)][1] == 3
        assert any("Logged out" in line for line in dovecot.log_lines(f"imap({account.username})"))


@pytest.mark.dovecot
class TestTransport:
    @pytest.mark.parametrize("security", ["ssl", "starttls"])
    async def test_tls(
        self, dovecot: Dovecot, account: Account, cfg: ImapConfig, security: Literal["ssl", "starttls"]
    ) -> None:
        port = dovecot.ssl_port if security == "ssl" else dovecot.port
        trust = ssl.create_default_context(cafile=str(dovecot.cert_file))
        account.deliver([sample_message(1, tag=security)])
        watcher = MailboxWatcher(
            replace(cfg, security=security, port=port), MemorySink(), MemoryCursors(), ssl_context=trust
        )
        try:
            assert await watcher.sync_once() == 1
        finally:
            await watcher.stop()
        logins = dovecot.log_lines(f"Login: user=<{account.username}>")
        assert logins
        assert all(", TLS," in line for line in logins)

    @pytest.mark.parametrize("security", ["ssl", "starttls"])
    async def test_an_untrusted_certificate_is_refused(
        self, dovecot: Dovecot, cfg: ImapConfig, security: Literal["ssl", "starttls"]
    ) -> None:
        port = dovecot.ssl_port if security == "ssl" else dovecot.port
        watcher = MailboxWatcher(replace(cfg, security=security, port=port), MemorySink(), MemoryCursors())
        with pytest.raises(ImapError, match="CERTIFICATE_VERIFY_FAILED"):
            await watcher.sync_once()

    @pytest.mark.parametrize(
        "capability", ["IMAP4rev1 IDLE UIDPLUS", "IMAP4rev1 IDLE"], ids=["without MOVE", "without UIDPLUS"]
    )
    async def test_servers_without_move_get_copy_delete_expunge(self, capability: str) -> None:
        """aioimaplib refuses UID MOVE and UID EXPUNGE that the server does not advertise, so a pass
        that empties the INBOX proves the fallback ran."""
        with running_dovecot(imap_capability=capability) as server:
            account = server.add_account("fallback")
            account.deliver(sample_message(n, tag="copy") for n in range(30))
            cfg = ImapConfig(
                host="127.0.0.1", port=server.port, username="fallback", password=account.password
            )
            watcher = MailboxWatcher(cfg, MemorySink(), MemoryCursors())
            try:
                assert await watcher.sync_once() == 30
            finally:
                await watcher.stop()
            assert account.message_ids("INBOX") == []
            assert account.message_ids("Processed") == ids("copy", range(30))
