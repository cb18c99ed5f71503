"""Mail out through a real SMTP relay stand-in: retries while it is down, the same message once it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from sqlalchemy import select

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.compose import Outgoing
from mailbot.leases import LEASE
from mailbot.metrics import Metrics
from mailbot.outbox import retry_delay
from mailbot.sender import BATCH, MAX_UNRECORDED
from mailbot.store import outbox as outbox_store
from mailbot.store.inbound import RawMessage, insert_many
from mailbot.store.schema import OutboxItem, Ticket
from tests.mailers import SinkHandler, SmtpSink, message
from tests.test_schedule_flow import queued


def relayed_app(make_app: Callable[..., App], relay: SmtpSink, db: str | None = None) -> App:
    return make_app({"outbound": {"transport": "smtp", "host": "127.0.0.1", "port": relay.port}}, db=db)


def plan(app: App, *outgoing: Outgoing, ticket_id: int | None = None) -> None:
    app.db.call(lambda s: [outbox_store.plan(s, outbox_store.item(o, ticket_id=ticket_id, now=app.clock.now())) for o in outgoing])


def message_ids(relay: SmtpSink) -> list[str]:
    """The Message-IDs of what reached the relay, in order."""
    return [message_from_bytes(m.data, policy=policy.default)["Message-ID"] for m in relay.messages]


def statuses(app: App) -> dict[str, str]:
    return dict(app.db.call(lambda s: s.execute(select(OutboxItem.message_id, OutboxItem.status)).all()))


def sent_records(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many items each record of a group as sent (one transaction) named, as they run."""
    recorded: list[int] = []
    record = outbox_store.record_sent

    def counted(connection: Any, items: Any, at: Any) -> set[int]:
        recorded.append(len(items))
        return record(connection, items, at)

    monkeypatch.setattr(outbox_store, "record_sent", counted)
    return recorded


def ingest(app: App, raw: bytes) -> int:
    [inbound_id] = app.db.call(insert_many, [RawMessage(raw, "test", "ana@lincoln.example")], app.clock.now())
    outcome = app.processor.process_one(inbound_id)
    assert outcome.action == "created"
    assert outcome.ticket_id is not None
    return outcome.ticket_id


class TestRetry:
    def test_backoff_grows_and_is_capped(self) -> None:
        cap = timedelta(seconds=60)
        delays = [retry_delay(n, cap) for n in range(1, 8)]
        assert delays[:4] == [timedelta(seconds=s) for s in (5, 10, 20, 40)]
        assert max(delays) == cap

    async def test_relay_down_then_back(self, make_app, relay: SmtpSink, clock: FrozenClock, db_url: str) -> None:
        """While the relay is down nothing is lost; when it returns the confirmation goes out exactly once."""
        app = relayed_app(make_app, relay, db_url)
        ticket_id = ingest(app, message(message_id="<down@lincoln.example>"))
        planned = app.db.call(lambda s: s.scalars(select(OutboxItem)).one())
        await relay.stop()
        assert await app.sender.drain() == 0
        item = app.db.call(lambda s: s.get(OutboxItem, planned.id))
        assert item.status == "pending" and item.attempts == 1 and "unreachable" in (item.last_error or "")
        assert item.next_attempt_at == clock.now() + timedelta(seconds=5)
        assert await app.sender.drain() == 0  # not due yet: no hammering
        await relay.start()  # back on the same port
        clock.advance(timedelta(seconds=5))
        assert await app.sender.drain() == 1
        assert await app.sender.drain() == 0
        assert len(relay.messages) == 1
        wire = message_from_bytes(relay.messages[0].data, policy=policy.default)
        assert wire["Message-ID"] == planned.message_id  # the very message that was planned
        assert wire["In-Reply-To"] == "<down@lincoln.example>"
        assert wire["Date"] is not None and wire["Auto-Submitted"] == "auto-replied"
        assert relay.messages[0].rcpt_tos == ["ana@lincoln.example"]
        ticket = app.db.call(lambda s: s.get(Ticket, ticket_id))
        assert ticket.confirmation_sent_at == clock.now()

    async def test_relay_refusal_is_permanent(self, make_app, relay: SmtpSink) -> None:
        """A 5xx from the relay will not change by retrying: the item is marked failed with the reason."""
        app = relayed_app(make_app, relay)
        ingest(app, message())
        relay.handler.refuse = "554 5.7.1 rejected by policy"
        assert await app.sender.drain() == 0
        item = app.db.call(lambda s: s.scalars(select(OutboxItem)).one())
        assert item.status == "failed" and "554" in (item.last_error or "")

    async def test_restart_sends_what_the_previous_process_queued(self, make_app, relay: SmtpSink, sqlite_url: str) -> None:
        """The outbox is the truth: a new process on the same database sends what an old one queued."""
        first = relayed_app(make_app, relay, sqlite_url)
        ingest(first, message())
        first.close()
        second = relayed_app(make_app, relay, sqlite_url)
        assert await second.sender.drain() == 1
        assert len(relay.messages) == 1


class TestRelayConnection:
    """One connection to the relay carries a drain's messages; a failure closes it and never touches the next."""

    async def test_one_connection_for_a_drain(self, make_app, relay: SmtpSink) -> None:
        app = relayed_app(make_app, relay)
        planned = [queued(n) for n in range(5)]
        plan(app, *planned)
        assert await app.sender.drain() == 5
        assert message_ids(relay) == [o.message_id for o in planned]
        assert relay.connections == 1
        assert await app.sender.drain() == 0
        assert relay.connections == 1  # nothing due: no connection opened

    @pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback only
    async def test_the_relay_login_is_made_once_for_a_drain(self, make_app) -> None:
        """AUTH as configured, once for the drain's connection (STARTTLS, where set, comes before it)."""
        logins: list[tuple[bytes, bytes]] = []

        def check(_server: SMTP, _session: Session, _envelope: Envelope, _mechanism: str, login: Any) -> AuthResult:
            logins.append((login.login, login.password))
            return AuthResult(success=login.password == b"s3cret")

        relay = SmtpSink(authenticator=check, auth_required=True, auth_require_tls=False)
        await relay.start()
        try:
            outbound = {"transport": "smtp", "host": "127.0.0.1", "port": relay.port}
            app = make_app({"outbound": {**outbound, "username": "mailbot", "password": "s3cret"}})
            plan(app, *(queued(n) for n in range(3)))
            assert await app.sender.drain() == 3
        finally:
            await relay.stop()
        assert logins == [(b"mailbot", b"s3cret")] and relay.connections == 1 and len(relay.messages) == 3

    @pytest.mark.parametrize(
        ("reply", "status"), [("550 5.1.1 no such user", "failed"), ("451 4.3.0 try again later", "pending")]
    )
    async def test_a_refused_recipient_does_not_stop_the_next_message(
        self, make_app, relay: SmtpSink, reply: str, status: str
    ) -> None:
        """The refused message fails (for good, or to be retried); the one after it goes out all the same."""
        app = relayed_app(make_app, relay)
        relay.handler.refuse_rcpt["gone@lincoln.example"] = reply
        planned = [queued(0), queued(1, to="gone@lincoln.example"), queued(2)]
        plan(app, *planned)
        assert await app.sender.drain() == 2
        assert message_ids(relay) == [planned[0].message_id, planned[2].message_id]
        assert [m.rcpt_tos for m in relay.messages] == [["ana@lincoln.example"]] * 2
        refused = app.db.call(lambda s: s.scalars(select(OutboxItem).where(OutboxItem.recipient == "gone@lincoln.example")).one())
        assert refused.status == status and reply[:3] in (refused.last_error or "")
        assert relay.connections == 2  # the refusal closed the first; the next message opened a fresh one

    async def test_an_address_no_command_can_carry_fails_for_good(self, make_app, relay: SmtpSink) -> None:
        """An address that would smuggle parameters into RCPT is never sent; the messages around it go out
        over the same connection."""
        app = relayed_app(make_app, relay)
        planned = [queued(0), queued(1, to="ana@lincoln.example> NOTIFY=NEVER"), queued(2)]
        plan(app, *planned)
        assert await app.sender.drain() == 2
        assert message_ids(relay) == [planned[0].message_id, planned[2].message_id]
        assert relay.connections == 1
        refused = app.db.call(lambda s: s.scalars(select(OutboxItem).where(OutboxItem.message_id == planned[1].message_id)).one())
        assert refused.status == "failed" and "cannot be sent over SMTP" in (refused.last_error or "")


class TestRecords:
    async def test_the_relay_gets_its_messages_a_group_at_a_time(
        self, make_app, relay: SmtpSink, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The relay's messages go out MAX_UNRECORDED at a time, each group recorded as sent in one statement
        (one transaction) before the next goes out."""
        app = relayed_app(make_app, relay)
        plan(app, *(queued(n) for n in range(5)))
        recorded = sent_records(monkeypatch)
        assert await app.sender.drain() == 5
        assert recorded == [min(MAX_UNRECORDED, 5 - n) for n in range(0, 5, MAX_UNRECORDED)]
        assert set(statuses(app).values()) == {"sent"} and len(relay.messages) == 5

    async def test_the_maildir_gets_a_claim_at_once(self, app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A maildir delivers nothing before its record, so a claimed batch is one group: one record, each
        message a file in new/, none left in tmp/."""
        plan(app, *(queued(n) for n in range(BATCH + 3)))
        recorded = sent_records(monkeypatch)
        assert await app.sender.drain() == BATCH + 3
        assert recorded == [BATCH, 3]
        assert set(statuses(app).values()) == {"sent"}
        assert len(list((tmp_path / "sent" / "new").iterdir())) == BATCH + 3
        assert list((tmp_path / "sent" / "tmp").iterdir()) == []

    async def test_a_maildir_that_cannot_be_written_keeps_the_mail_for_later(
        self, app: App, clock: FrozenClock, tmp_path: Path
    ) -> None:
        """Nothing is recorded as sent that is not in new/: the items wait for their retry, then go out."""
        plan(app, *(queued(n) for n in range(3)))
        sender = app.sender  # its maildir made
        new = tmp_path / "sent" / "new"
        new.rmdir()
        new.write_text("")  # not a folder: no rename into it succeeds
        assert await sender.drain() == 0
        items = app.db.call(lambda s: s.scalars(select(OutboxItem)).all())
        assert {(i.status, i.attempts) for i in items} == {("pending", 1)}
        assert all("cannot write" in (i.last_error or "") for i in items)
        new.unlink()
        new.mkdir()
        clock.advance(retry_delay(1, timedelta(seconds=60)))
        assert await sender.drain() == 3
        assert set(statuses(app).values()) == {"sent"} and len(list(new.iterdir())) == 3

    def test_only_the_latest_claim_is_recorded(self, app: App, clock: FrozenClock) -> None:
        """A claim taken over (its holder stalled past its lease) is not recorded as sent; the latest is."""
        plan(app, queued(0))
        [first] = app.db.call(outbox_store.claim_due, clock.now(), "stalled", LEASE)
        clock.advance(LEASE + timedelta(seconds=1))
        [second] = app.db.call(outbox_store.claim_due, clock.now(), "successor", LEASE)
        assert app.db.call(outbox_store.record_sent, [first], clock.now()) == set()
        assert app.db.call(outbox_store.record_sent, [second], clock.now()) == {second.id}
        assert app.db.call(outbox_store.record_sent, [first], clock.now()) == set()  # not even once it is sent

    def test_a_ticket_keeps_when_its_first_confirmation_went_out(self, app: App, clock: FrozenClock) -> None:
        """A second confirmation (sent again by hand) changes nothing; the introduction sets its own time."""
        ticket_id = ingest(app, message())
        [confirmation] = app.db.call(outbox_store.claim_due, clock.now(), app.sender.worker, LEASE)
        app.db.call(outbox_store.record_sent, [confirmation], clock.now())
        first_sent = clock.now()
        clock.advance(timedelta(minutes=5))
        plan(app, replace(queued(1), kind="confirmation"), replace(queued(2), kind="introduction"), ticket_id=ticket_id)
        claimed = app.db.call(outbox_store.claim_due, clock.now(), app.sender.worker, LEASE)
        app.db.call(outbox_store.record_sent, claimed, clock.now())
        ticket = app.db.call(lambda s: s.get_one(Ticket, ticket_id))
        assert (ticket.confirmation_sent_at, ticket.introduction_sent_at) == (first_sent, clock.now())
        assert set(statuses(app).values()) == {"sent"}


# A sender in a process of its own (so that it can die): one drain, on the database and relay of the config.
DRAIN = """
import asyncio, sys
from datetime import datetime
from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.config import load
app = App(load(sys.argv[1]), FrozenClock(datetime.fromisoformat(sys.argv[2])))
asyncio.run(app.sender.drain())
"""


@dataclass
class DeadlyRelay(SinkHandler):
    """Takes the `fatal`-th message, then kills its sender before answering: the relay has the message, the
    sender never learns it (a crash between the relay's acceptance and our record, as a crash can come)."""

    fatal: int = 0
    victim: asyncio.subprocess.Process | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.messages) == self.fatal:
            assert self.victim is not None
            os.kill(self.victim.pid, signal.SIGKILL)
        return reply


class TestCrash:
    async def test_only_what_was_not_recorded_goes_out_again(
        self, make_app, relay: SmtpSink, clock: FrozenClock, db_url: str, tmp_path: Path
    ) -> None:
        """Killed while the relay takes its 8th of 12 messages: what was recorded as sent never goes out again,
        and what was not is at most MAX_UNRECORDED messages; after the lease the rest goes out, each the very
        message planned, and none is lost."""
        app = relayed_app(make_app, relay, db_url)
        planned = [queued(n) for n in range(12)]
        plan(app, *planned)
        config = tmp_path / "sender.toml"
        config.write_text(
            f'[database]\nurl = "{db_url}"\n[outbound]\ntransport = "smtp"\nhost = "127.0.0.1"\n'
            f"port = {relay.port}\n[security]\nrequire_sender_auth = false\n"
        )
        relay.handler = deadly = DeadlyRelay(fatal=8)
        deadly.victim = await asyncio.create_subprocess_exec(sys.executable, "-c", DRAIN, str(config), clock.now().isoformat())
        assert await deadly.victim.wait() == -signal.SIGKILL
        before = message_ids(relay)
        recorded = {mid for mid, status in statuses(app).items() if status == "sent"}
        assert len(before) == 8 and recorded <= set(before[:7])  # the one in hand is not recorded
        assert len(set(before) - recorded) <= MAX_UNRECORDED  # records follow their deliveries closely
        deadly.fatal = 0
        clock.advance(LEASE + timedelta(seconds=1))  # the dead sender's claims run out
        assert await app.sender.drain() == 12 - len(recorded)
        after = message_ids(relay)
        assert sorted(set(after)) == sorted(o.message_id for o in planned)  # none lost
        twice = sorted(mid for mid in set(after) if after.count(mid) > 1)
        assert twice == sorted(set(before) - recorded)  # sent again: what went out unrecorded, that only
        assert max(after.count(mid) for mid in after) == 2
        assert set(statuses(app).values()) == {"sent"}


# A maildir sender in a process of its own that kills itself around its `fatal`-th record of a group as sent:
# "before" it commits (the group's files are in tmp/, nothing recorded), or "after" (recorded, not yet in new/).
DRAIN_TO_MAILDIR = """
import asyncio, os, signal, sys
from datetime import datetime
from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.config import load
from mailbot.store import outbox
config, now, when, fatal = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
record, calls = outbox.record_sent, []

def deadly(connection, items, at):
    calls.append(items)
    if len(calls) == fatal and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    recorded = record(connection, items, at)
    if len(calls) == fatal and when == "after":
        connection.commit()
        os.kill(os.getpid(), signal.SIGKILL)
    return recorded

outbox.record_sent = deadly
app = App(load(config), FrozenClock(datetime.fromisoformat(now)))
asyncio.run(app.sender.drain())
"""


def delivered(maildir: Path) -> list[str]:
    """The Message-IDs of the files in the maildir's new/ (what its reader gets), in no order."""
    return [message_from_bytes(f.read_bytes(), policy=policy.default)["Message-ID"] for f in (maildir / "new").iterdir()]


class TestMaildirCrash:
    """A maildir sender killed between handing a group over and recording it, or between recording it and
    placing its files in new/: no message is ever in new/ twice, and none is lost."""

    async def killed(self, app: App, tmp_path: Path, db_url: str, clock: FrozenClock, when: str) -> list[Outgoing]:
        planned = [queued(n) for n in range(BATCH + 10)]
        plan(app, *planned)
        config = tmp_path / "sender.toml"
        config.write_text(
            f'[database]\nurl = "{db_url}"\n[outbound]\ntransport = "maildir"\nmaildir = "{tmp_path / "sent"}"\n'
            "[security]\nrequire_sender_auth = false\n"
        )
        victim = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DRAIN_TO_MAILDIR, str(config), clock.now().isoformat(), when, "2"
        )
        assert await victim.wait() == -signal.SIGKILL
        return planned

    async def test_killed_before_the_record(self, make_app, tmp_path: Path, db_url: str, clock: FrozenClock) -> None:
        """The second group's files were written to tmp/, never delivered: they go out with the items' next
        claim, once, and the dead claim's files are removed."""
        app = make_app(db=db_url)
        planned = await self.killed(app, tmp_path, db_url, clock, "before")
        maildir = tmp_path / "sent"
        assert len(delivered(maildir)) == BATCH and len(list((maildir / "tmp").iterdir())) == 10
        assert list(statuses(app).values()).count("sent") == BATCH
        clock.advance(LEASE + timedelta(seconds=1))  # the dead sender's claims run out
        assert await app.sender.drain() == 10
        assert await app.sender.drain() == 0  # its first look at tmp/ finds the dead claim's files
        assert sorted(delivered(maildir)) == sorted(o.message_id for o in planned)  # each once, none lost
        assert list((maildir / "tmp").iterdir()) == []
        assert set(statuses(app).values()) == {"sent"}

    async def test_killed_after_the_record(self, make_app, tmp_path: Path, db_url: str, clock: FrozenClock) -> None:
        """The second group was recorded as sent, its files still in tmp/: the next drain delivers them, once,
        before anything else, and sends nothing again."""
        app = make_app(db=db_url)
        planned = await self.killed(app, tmp_path, db_url, clock, "after")
        maildir = tmp_path / "sent"
        assert len(delivered(maildir)) == BATCH and len(list((maildir / "tmp").iterdir())) == 10
        assert set(statuses(app).values()) == {"sent"}
        app.sender.metrics = metrics = Metrics()
        assert await app.sender.drain() == 0
        assert sorted(delivered(maildir)) == sorted(o.message_id for o in planned)  # each once, none lost
        assert list((maildir / "tmp").iterdir()) == []
        # The dead sender never counted them: the drain that delivered them did, once.
        assert metrics.registry.get_sample_value("mailbot_outbox_sent_total", {"kind": "notification"}) == 10
        assert await app.sender.drain() == 0
        assert metrics.registry.get_sample_value("mailbot_outbox_sent_total", {"kind": "notification"}) == 10

    async def test_a_file_of_another_database_is_left_alone(self, app: App, tmp_path: Path) -> None:
        """A staged file in a shared maildir that names an item of this database's numbering but not its
        message (another database's) is neither delivered nor removed."""
        plan(app, queued(0))
        assert await app.sender.drain() == 1
        [item] = app.db.call(lambda s: s.scalars(select(OutboxItem)).all())
        stranger = tmp_path / "sent" / "tmp" / f"1.mailbot-{item.id}-{item.attempts}-{'0' * 16}.elsewhere"
        stranger.write_bytes(b"Subject: not ours\n\n")
        assert await app.sender.drain() == 0
        assert stranger.exists() and len(delivered(tmp_path / "sent")) == 1
