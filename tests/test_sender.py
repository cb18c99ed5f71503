"""Mail out through a real SMTP relay stand-in: retries while it is down, the same message once it is back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from email import message_from_bytes, policy

from sqlalchemy import select

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.outbox import retry_delay
from mailbot.store.inbound import RawMessage, insert_many
from mailbot.store.schema import OutboxItem, Ticket
from tests.mailers import SmtpSink, message


def relayed_app(make_app: Callable[..., App], relay: SmtpSink, db: str | None = None) -> App:
    return make_app({"outbound": {"transport": "smtp", "host": "127.0.0.1", "port": relay.port}}, db=db)


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
