"""The store on both backends: the migration matches the models, leases are exclusive, times stay UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Dialect, TypeDecorator, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.orm import Session

from mailbot.compose import Outgoing
from mailbot.store import Database, by_index, deliveries
from mailbot.store import inbound as inbound_store
from mailbot.store import outbox as outbox_store
from mailbot.store import tickets as ticket_store
from mailbot.store.inbound import RawMessage
from mailbot.store.schema import Base, ImapCursor, InboundMessage, UtcDateTime
from tests.conftest import query_plan

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


@pytest.fixture
def db(db_url: str):  # type: ignore[no-untyped-def]
    database = Database(db_url)
    database.upgrade()
    yield database
    database.close()


def outgoing(n: int) -> Outgoing:
    return Outgoing("confirmation", f"<m{n}@schoolmint.com>", "herosupport@schoolmint.com", ["ana@lincoln.example"],
                    "Re: x", "text", b"Subject: x\r\n\r\ntext\r\n")


class TestSchema:
    def test_migration_matches_models(self, db: Database) -> None:
        """`db upgrade` builds exactly the schema the code expects (no drift between models and migration)."""
        with db.engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []

    def test_upgrade_is_idempotent_and_current(self, db: Database) -> None:
        db.upgrade()
        db.check_current()

    def test_times_round_trip_as_utc(self, db: Database) -> None:
        eastern = datetime(2026, 12, 1, 10, 0, tzinfo=timezone(timedelta(hours=-5)))
        db.call(lambda s: s.add(ImapCursor(mailbox="m", uidvalidity=2**32 - 1, last_uid=7, updated_at=eastern)))
        stored = db.call(lambda s: s.get(ImapCursor, "m"))
        assert stored.updated_at == eastern and stored.updated_at.tzinfo == UTC
        assert stored.uidvalidity == 2**32 - 1  # RFC 3501 allows the full unsigned 32-bit range

    @pytest.mark.parametrize("dialect", [sqlite.dialect(), psycopg.dialect()], ids=["sqlite", "postgresql"])
    def test_instants_bound_as_the_column_type_binds_them(self, dialect: Dialect) -> None:
        """UtcDateTime's one-step bind gives what its two steps chained give (naive UTC, then the driver's
        DATETIME text on SQLite), and refuses a naive instant as they do."""
        column = UtcDateTime().dialect_impl(dialect)
        fused, chained = column.bind_processor(dialect), TypeDecorator.bind_processor(column, dialect)
        assert fused is not None and chained is not None
        instants = [
            datetime(2026, 12, 1, 10, 0, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2026, 3, 8, 6, 59, 59, 999_999, tzinfo=ZoneInfo("America/New_York")),
            datetime(2027, 1, 1, 0, 30, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            datetime(999, 12, 31, 23, 59, tzinfo=UTC),
            NOW,
        ]
        assert [fused(i) for i in instants] == [chained(i) for i in instants]
        assert fused(None) is None is chained(None)
        for bind in (fused, chained):
            with pytest.raises(ValueError, match="naive"):
                bind(datetime(2026, 12, 1, 10, 0))


class TestTicketIds:
    def test_ids_count_up_and_ids_left_too_long_are_skipped(self, db: Database) -> None:
        """Within one transaction each id follows the last. On PostgreSQL ids are drawn a batch at a time:
        those left serve the next transaction within KEEP seconds, then are skipped, never used twice."""
        instant = [0.0]
        ids = ticket_store.TicketIds(clock=lambda: instant[0])
        postgresql = not db.is_sqlite
        assert db.call(lambda s: [ids.next(s, None, 3), ids.next(s, 1, 3)]) == [1, 2]
        assert db.call(lambda s: ids.next(s, None, 3)) == (3 if postgresql else 1)  # SQLite: nothing was written
        assert db.call(lambda s: ids.next(s, None, 3)) == (4 if postgresql else 1)  # PostgreSQL: 4, 5, 6 drawn
        instant[0] += ticket_store.KEEP + 0.1
        assert db.call(lambda s: ids.next(s, None, 3)) == (7 if postgresql else 1)  # 5 and 6 were left too long


class TestInbound:
    def test_insert_many_returns_ids_in_order(self, db: Database) -> None:
        messages = [RawMessage(f"Subject: {i}\r\n\r\n".encode(), "smtp", "a@b.example", ("x@y.example",)) for i in range(5)]
        ids = db.call(inbound_store.insert_many, messages, NOW)
        assert len(ids) == 5 and ids == sorted(ids)
        rows = db.call(lambda s: [inbound_store.get(s, i) for i in ids])
        assert [r.raw for r in rows] == [m.raw for m in messages]
        assert all(r.status == "pending" and r.envelope_to == ["x@y.example"] for r in rows)

    def test_insert_many_stores_every_field_as_the_orm_would(self, db: Database) -> None:
        """SQLite's fast path (the driver itself) stores times, JSON, bytes and NULLs in the ORM's own format."""
        messages = [
            RawMessage(b"a\r\n", "smtp", "a@b.example", ("x@y.example", "z@y.example"), "127.0.0.1"),
            RawMessage(b"", "imap:INBOX"),
        ]
        ids = db.call(inbound_store.insert_many, messages, NOW)
        rows = db.call(lambda s: [inbound_store.get(s, i) for i in ids])
        assert [(r.received_at, r.source, r.envelope_from, r.envelope_to, r.peer, r.size, r.raw) for r in rows] == [
            (NOW, "smtp", "a@b.example", ["x@y.example", "z@y.example"], "127.0.0.1", 3, b"a\r\n"),
            (NOW, "imap:INBOX", None, [], None, 0, b""),
        ]
        since = select(InboundMessage.id).where(InboundMessage.received_at >= NOW).order_by(InboundMessage.id)
        assert db.call(lambda s: s.scalars(since).all()) == ids  # compared in SQL, against the ORM's binding

    def test_claim_is_exclusive_until_the_lease_runs_out(self, db: Database) -> None:
        db.call(inbound_store.insert_many, [RawMessage(b"x", "smtp")] * 3, NOW)
        first = db.call(lambda s: [r.id for r in inbound_store.claim_pending(s, NOW, timedelta(minutes=5), 10)])
        second = db.call(lambda s: [r.id for r in inbound_store.claim_pending(s, NOW, timedelta(minutes=5), 10)])
        later = db.call(
            lambda s: [r.id for r in inbound_store.claim_pending(s, NOW + timedelta(minutes=6), timedelta(minutes=5), 10)]
        )
        assert len(first) == 3 and second == [] and later == first

    def test_a_claim_takes_its_limit_and_no_more(self, db: Database) -> None:
        """The oldest `limit` rows, on PostgreSQL too (a subquery run again per row once took all 52)."""
        ids = db.call(inbound_store.insert_many, [RawMessage(b"x", "smtp")] * 52, NOW)
        claims = [
            db.call(lambda s: [r.id for r in inbound_store.claim_pending(s, NOW, timedelta(minutes=5), 8, "me")])
            for _ in range(8)
        ]
        assert claims == [ids[i : i + 8] for i in range(0, 52, 8)] + [[]]

    def test_a_claim_takes_no_more_raw_mail_than_its_budget_beyond_its_first_message(self, db: Database) -> None:
        """Memory stays bounded: rows are taken, oldest first, while the mail before them in the claim is under
        the budget, and the first always, however large."""
        sizes = [3000, 500, 400, 200, 100, 5000, 10]
        ids = db.call(inbound_store.insert_many, [RawMessage(b"x" * n, "smtp") for n in sizes], NOW)

        def claim(budget: int) -> list[int]:
            return db.call(
                lambda s: [r.id for r in inbound_store.claim_pending(s, NOW, timedelta(minutes=5), 10, "me", budget=budget)]
            )

        assert claim(1000) == ids[:1]  # 3000 bytes, alone
        assert claim(1000) == ids[1:4]  # 500 + 400 = 900 before the third: under; 1100 before the fourth
        assert claim(1000) == ids[4:6]  # the 5000-byte message after 100 bytes
        assert claim(1000) == ids[6:]

    def test_failed_rows_can_be_retried(self, db: Database) -> None:
        [row_id] = db.call(inbound_store.insert_many, [RawMessage(b"x", "smtp")], NOW)

        def fail(session):  # type: ignore[no-untyped-def]
            row = inbound_store.get(session, row_id)
            row.status, row.error = "failed", "boom"

        db.call(fail)
        assert [r.id for r in db.call(inbound_store.failed)] == [row_id]
        assert len(db.call(inbound_store.requeue, [row_id])) == 1
        assert db.call(lambda s: inbound_store.get(s, row_id).status) == "pending"


class TestDeliveries:
    def test_the_governors_count_is_read_from_its_index(self, db: Database) -> None:
        """The loop governor's count of mail planned to an address reads its index, not the table's rows
        (SQLite: a covering index; PostgreSQL: the index, as the intake's batch runs it)."""
        statement = deliveries._counted("recipient", 3).params(keys=["ana@lincoln.example"], cut0=NOW, cut1=NOW, cut2=NOW)

        def plan(session: Session) -> str:
            by_index(session)
            return query_plan(session, statement)

        found = db.call(plan)
        assert ("USING COVERING INDEX" if db.is_sqlite else "Index") in found, found
        assert "ix_outbox_recipient_created" in found, found


class TestOutbox:
    def test_two_workers_never_claim_the_same_item(self, db: Database) -> None:
        for n in range(6):
            db.call(lambda s, n=n: outbox_store.plan(s, outbox_store.item(outgoing(n), ticket_id=None, now=NOW)))
        a = db.call(lambda s: [i.id for i in outbox_store.claim_due(s, NOW, "a", timedelta(minutes=2), limit=4)])
        b = db.call(lambda s: [i.id for i in outbox_store.claim_due(s, NOW, "b", timedelta(minutes=2), limit=4)])
        assert len(a) == 4 and len(b) == 2 and not set(a) & set(b)

    def test_not_due_until_next_attempt(self, db: Database) -> None:
        item = db.call(lambda s: outbox_store.plan(s, outbox_store.item(outgoing(1), ticket_id=None, now=NOW, due_at=NOW + timedelta(hours=1))))
        assert db.call(outbox_store.claim_due, NOW, "a", timedelta(minutes=2)) == []
        assert db.call(outbox_store.next_due) == NOW + timedelta(hours=1)
        claimed = db.call(outbox_store.claim_due, NOW + timedelta(hours=1), "a", timedelta(minutes=2))
        assert [i.id for i in claimed] == [item.id]

    def test_failed_attempt_backs_off_and_permanent_failure_stops(self, db: Database) -> None:
        item = db.call(lambda s: outbox_store.plan(s, outbox_store.item(outgoing(1), ticket_id=None, now=NOW)))
        db.call(outbox_store.claim_due, NOW, "a", timedelta(minutes=2))
        db.call(outbox_store.mark_attempt_failed, item.id, "relay down", NOW + timedelta(seconds=5))
        assert db.call(outbox_store.claim_due, NOW, "a", timedelta(minutes=2)) == []
        [again] = db.call(outbox_store.claim_due, NOW + timedelta(seconds=5), "a", timedelta(minutes=2))
        assert again.attempts == 2
        db.call(outbox_store.mark_attempt_failed, item.id, "550 no such user", None)
        assert db.call(outbox_store.next_due) is None
