"""IMAP mail through the whole daemon: a real Dovecot, the real store, tickets and confirmations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import select

from mailbot.app import App
from mailbot.daemon import Daemon
from mailbot.intake import reading as intake_module
from mailbot.store.schema import ImapCursor, InboundMessage, Ticket
from tests.dovecot import Account
from tests.mailers import message


@pytest.fixture
async def daemon_for(make_app: Callable[..., App], account: Account) -> AsyncIterator[Callable[[], object]]:
    started: list[Daemon] = []

    async def start(db: str | None = None) -> Daemon:
        imap = {"host": "127.0.0.1", "port": account.server.port, "security": "none",
                "username": account.username, "password": account.password}
        daemon = Daemon(make_app({"smtp": {"enabled": False}, "imap": [imap]}, db=db))
        await daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        await daemon.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def tickets(app: App) -> list[Ticket]:
    return app.db.call(lambda s: list(s.scalars(select(Ticket))))


class TestImapFlow:
    async def test_appended_while_idle_becomes_ticket_within_2s(self, daemon_for, account: Account) -> None:
        daemon = await daemon_for()
        assert await wait_for(lambda: daemon.watchers[0].state.value == "idle", 10)
        await asyncio.to_thread(account.append, message(message_id="<idle@lincoln.example>"))
        start = asyncio.get_running_loop().time()
        assert await wait_for(lambda: len(tickets(daemon.app)) == 1, 2.0), "no ticket within 2 seconds"
        assert asyncio.get_running_loop().time() - start <= 2.0
        assert await wait_for(lambda: account.message_ids("Processed") == ["<idle@lincoln.example>"], 5)
        assert account.message_ids() == []
        inbound = daemon.app.db.call(lambda s: s.scalars(select(InboundMessage)).one())
        assert inbound.source.startswith("imap:") and inbound.action == "created"

    async def test_cursor_survives_restart_and_nothing_repeats(self, daemon_for, account: Account,
                                                              sqlite_url: str) -> None:
        account.deliver([message(message_id=f"<r{n}@lincoln.example>") for n in range(5)])
        first = await daemon_for(sqlite_url)
        assert await wait_for(lambda: len(tickets(first.app)) == 5, 15)
        await first.stop()
        account.deliver([message(message_id="<after@lincoln.example>")])
        second = await daemon_for(sqlite_url)
        assert await wait_for(lambda: len(tickets(second.app)) == 6, 15)
        await asyncio.sleep(0.5)
        assert len(tickets(second.app)) == 6
        cursor = second.app.db.call(lambda s: s.scalars(select(ImapCursor)).one())
        assert cursor.last_uid >= 6
        assert sorted(account.message_ids("Processed")) == sorted(
            [f"<r{n}@lincoln.example>" for n in range(5)] + ["<after@lincoln.example>"]
        )

    async def test_mail_that_fails_goes_to_failed_folder(
        self, daemon_for, account: Account, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A message our reader fails on (a bug, here injected) is moved to the Failed folder, kept."""
        hostile = b"From: x@lincoln.example\r\nMessage-ID: <deep@x>\r\n\r\nbody\r\n"

        def broken(raw: bytes, limits: object) -> None:
            raise RuntimeError("a bug in the reader")

        monkeypatch.setattr(intake_module, "read_message", broken)
        account.deliver([hostile])
        daemon = await daemon_for()
        assert await wait_for(lambda: account.message_ids("Failed") == ["<deep@x>"], 10)
        row = daemon.app.db.call(lambda s: s.scalars(select(InboundMessage)).one())
        assert row.status == "failed" and row.raw == hostile
