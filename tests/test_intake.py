"""The intake on stored rows: attachments kept once, HTML-only text, no sender, failed ingests re-run."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from email.policy import SMTP

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbot.app import App
from mailbot.dns import FixedResolver
from mailbot.errors import TransientStoreError
from mailbot.identity import Use
from mailbot.intake import reading as intake_module
from mailbot.store import conversations
from mailbot.store import inbound as inbound_store
from mailbot.store.inbound import RawMessage
from mailbot.store.schema import Attachment, Blob, InboundMessage, OutboxItem, Ticket, TicketMessage
from mailbot.store.tickets import KEEP, TicketIds
from tests.conftest import query_plan


def ingest(app: App, raw: bytes, sender: str | None = "ana@lincoln.example"):  # type: ignore[no-untyped-def]
    [inbound_id] = app.db.call(inbound_store.insert_many, [RawMessage(raw, "test", sender)], app.clock.now())
    return app.processor.process_one(inbound_id)


def with_attachment(message_id: str, data: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ana Diaz <ana@lincoln.example>"
    msg["To"] = "herosupport@schoolmint.com"
    msg["Subject"] = "Report attached"
    msg["Message-ID"] = message_id
    msg.set_content("See the attached report.\n")
    msg.add_attachment(data, maintype="application", subtype="pdf", filename="../../report.pdf")
    return msg.as_bytes(policy=SMTP)


class TestIntake:
    def test_attachment_bytes_stored_once_by_hash(self, app: App) -> None:
        data = b"%PDF-1.4 " + bytes(range(256)) * 40
        assert ingest(app, with_attachment("<a1@lincoln.example>", data)).action == "created"
        assert ingest(app, with_attachment("<a2@lincoln.example>", data)).action == "created"
        attachments = app.db.call(lambda s: list(s.scalars(select(Attachment))))
        assert len(attachments) == 2
        assert {a.filename for a in attachments} == {"report.pdf"}  # no path reaches the store
        assert {a.size for a in attachments} == {len(data)}
        blobs = app.db.call(lambda s: list(s.scalars(select(Blob))))
        assert len(blobs) == 1 and blobs[0].data == data

    def test_html_only_mail_gets_a_text_rendering(self, app: App) -> None:
        raw = (b"From: ana@lincoln.example\r\nSubject: html\r\nMessage-ID: <h@lincoln.example>\r\n"
               b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>Hello <b>team</b></p><p>Second&nbsp;line</p>\r\n")
        outcome = ingest(app, raw)
        text = app.db.call(lambda s: s.scalars(select(TicketMessage.text).where(TicketMessage.direction == "in")).one())
        assert outcome.action == "created" and "Hello team" in text and "Second" in text and "<p>" not in text

    def test_no_sender_at_all_is_held_not_answered(self, app: App) -> None:
        raw = b"Subject: who am I\r\nMessage-ID: <n@x.example>\r\n\r\nno From, no envelope sender\r\n"
        outcome = ingest(app, raw, sender=None)
        ticket = app.db.call(lambda s: s.get(Ticket, outcome.ticket_id))
        assert outcome.action == "held" and ticket.status == "held" and ticket.held_reason == "no-sender-address"
        assert ticket.clock_started_at is None and ticket.confirmation_due_at is None

    def test_failed_ingest_can_be_retried(self, app: App, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bug of ours while reading marks the message failed, kept; once fixed, a retry makes its ticket."""
        raw = with_attachment("<bug@lincoln.example>", b"x")

        def broken(raw: bytes, limits: object) -> None:
            raise RuntimeError("a bug in the reader")

        monkeypatch.setattr(intake_module, "read_message", broken)
        assert ingest(app, raw).action == "failed"
        [failed] = app.db.call(inbound_store.failed)
        assert failed.error and "a bug in the reader" in failed.error and failed.raw == raw
        assert [o.action for o in app.processor.run_once()] == []  # failed rows wait for a person
        monkeypatch.undo()
        assert len(app.db.call(inbound_store.requeue, [])) == 1
        assert [o.action for o in app.processor.run_once()] == ["created"]
        assert app.db.call(lambda s: s.scalar(select(func.count()).select_from(InboundMessage))) == 1

    def test_mail_over_the_parse_limits_still_makes_a_ticket(self, app: App) -> None:
        """600 levels of nesting: a degraded reading, its raw bytes kept as original.eml on the ticket."""
        deep = b"From: ana@lincoln.example\r\nSubject: deep\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + (
            b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" * 600)
        outcome = ingest(app, deep)
        assert outcome.action == "created"
        names = app.db.call(lambda s: [(a.filename, a.size) for a in s.scalars(select(Attachment))])
        assert names == [("original.eml", len(deep))]


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_database_trouble_during_intake_leaves_the_message_pending(make_app, db_url: str) -> None:
    """A lock timeout while the intake writes is the database's trouble, not the message's: the row stays
    pending for the next pass instead of being marked failed."""
    app = make_app(db=db_url)
    [inbound_id] = app.db.call(
        inbound_store.insert_many, [RawMessage(with_attachment("<lock@lincoln.example>", b"x"), "test")], app.clock.now()
    )
    database = sa.make_url(db_url).database
    admin = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
    blocker = sa.create_engine(db_url).connect()
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{database}" SET lock_timeout = \'300ms\'')
        app.db.engine.dispose()  # new connections take the setting
        blocker.begin()
        blocker.exec_driver_sql("LOCK TABLE tickets IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(TransientStoreError):
            app.processor.process_one(inbound_id)
        blocker.rollback()
        row = app.db.call(lambda s: inbound_store.get(s, inbound_id))
        assert (row.status, row.action) == ("pending", None)
    finally:
        blocker.close()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{database}" RESET lock_timeout')
        admin.dispose()
        app.db.engine.dispose()
    assert app.processor.process_one(inbound_id).action == "created"


def plain(message_id: str, subject: str = "Login broken", *, sender: str = "ana@lincoln.example",
          extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: herosupport@schoolmint.com\r\nSubject: {subject}\r\n"
            f"Message-ID: {message_id}\r\n{extra}\r\nI cannot log in.\r\n").encode()


def run_batch(app: App, raws: list[bytes], sender: str = "ana@lincoln.example") -> list[str]:
    """Store `raws` as pending rows and run one batch of the intake over them; the actions, in order."""
    app.db.call(inbound_store.insert_many, [RawMessage(raw, "test", sender) for raw in raws], app.clock.now())
    return [o.action for o in app.processor.run_once()]


class TestBatches:
    """A batch runs in one savepoint; a failure anywhere in it is isolated to its own message."""

    def test_a_failure_mid_write_is_kept_on_its_row_and_the_batch_goes_on(self, app: App, monkeypatch) -> None:
        raws = [plain("<b1@x.example>"), plain("<b2@x.example>", "explode"), plain("<b3@x.example>"),
                plain("<b1@x.example>")]
        app.db.call(inbound_store.insert_many, [RawMessage(raw, "test", "ana@lincoln.example") for raw in raws],
                    app.clock.now())
        start_clock = app.workflow.start_clock

        def exploding(session, ticket, now, *rest):  # type: ignore[no-untyped-def]
            if ticket.subject == "explode":  # after the ticket and its first message were written
                raise RuntimeError("a bug in the workflow")
            start_clock(session, ticket, now, *rest)

        monkeypatch.setattr(app.workflow, "start_clock", exploding)
        assert [o.action for o in app.processor.run_once()] == ["created", "failed", "created", "duplicate"]
        rows = app.db.call(lambda s: list(s.scalars(select(InboundMessage).order_by(InboundMessage.id))))
        assert [r.status for r in rows] == ["processed", "failed", "processed", "processed"]
        assert "a bug in the workflow" in (rows[1].error or "")
        tickets = app.db.call(lambda s: list(s.scalars(select(Ticket).order_by(Ticket.id))))
        assert [t.subject for t in tickets] == ["Login broken", "Login broken"]  # nothing of the failed one
        assert [r.ticket_id for r in rows] == [tickets[0].id, None, tickets[1].id, None]

    def test_duplicates_within_a_batch_are_seen(self, app: App) -> None:
        """A Message-ID stored earlier in the same batch makes a later message a duplicate."""
        raws = [plain(f"<c{n % 3}@x.example>") for n in range(5)]
        app.db.call(inbound_store.insert_many, [RawMessage(raw, "test", "ana@lincoln.example") for raw in raws],
                    app.clock.now())
        actions = [o.action for o in app.processor.run_once()]
        assert actions == ["created", "created", "created", "duplicate", "duplicate"]
        assert app.db.call(lambda s: s.scalar(select(func.count()).select_from(Ticket))) == 3

    def test_the_auto_reply_limit_holds_within_a_batch(self, make_app) -> None:  # type: ignore[no-untyped-def]
        """Confirmations planned earlier in the same batch count against the governor's per-address limit; a
        named contact's past it are withheld, their deadlines standing."""
        app = make_app({"security": {"contact_mail_limit": 10}})
        raws = [plain(f"<l{n}@x.example>") for n in range(12)]
        app.db.call(inbound_store.insert_many, [RawMessage(raw, "test", "ana@lincoln.example") for raw in raws],
                    app.clock.now())
        assert len(app.processor.run_once()) == 12
        statuses = app.db.call(lambda s: list(s.scalars(select(OutboxItem.status).order_by(OutboxItem.id))))
        tickets = app.db.call(lambda s: list(s.scalars(select(Ticket).order_by(Ticket.id))))
        assert statuses == ["pending"] * 10 + ["withheld"] * 2
        assert [t.auto_reply_refused is None for t in tickets] == [True] * 10 + [False] * 2
        assert all(t.confirmation_due_at is not None for t in tickets)

    def test_a_reply_to_a_message_earlier_in_the_batch_threads(self, app: App) -> None:
        """The ticket a reply names may not be written yet when the reply is decided: it still threads."""
        actions = run_batch(app, [plain("<r1@x.example>"), plain("<r2@x.example>", "Re: Login broken",
                                                                  extra="In-Reply-To: <r1@x.example>\r\n")])
        assert actions == ["created", "threaded"]
        assert app.db.call(lambda s: s.scalar(select(func.count()).select_from(Ticket))) == 1

    def test_the_same_attachment_twice_in_a_batch_is_stored_once(self, app: App) -> None:
        data = b"%PDF-1.4 logo" * 50
        actions = run_batch(app, [with_attachment("<p1@x.example>", data), with_attachment("<p2@x.example>", data)])
        assert actions == ["created", "created"]
        assert app.db.call(lambda s: s.scalar(select(func.count()).select_from(Blob))) == 1
        assert app.db.call(lambda s: s.scalar(select(func.count()).select_from(Attachment))) == 2

    def test_the_explanation_limit_holds_within_a_batch(self, make_app) -> None:  # type: ignore[no-untyped-def]
        """A stranger writing five times in one batch is told why at most explanations_per_day times."""
        security = {"require_sender_auth": True, "trusted_authserv_ids": ["mx.schoolmint.com"]}
        app = make_app({"security": security}, resolver=FixedResolver({}))
        stranger = "zoe@elsewhere.example"
        proven = "Authentication-Results: mx.schoolmint.com; dmarc=pass header.from=elsewhere.example\r\n"
        raws = [plain(f"<z{n}@elsewhere.example>", sender=stranger, extra=proven) for n in range(5)]
        assert run_batch(app, raws, sender=stranger) == ["held"] * 5
        explained = app.db.call(lambda s: s.scalar(select(func.count()).select_from(OutboxItem)))
        assert explained == app.config.security.explanations_per_day == 3

    def test_tickets_are_numbered_in_the_order_their_mail_came(self, make_app, db_url: str) -> None:  # type: ignore[no-untyped-def]
        """A batch's new tickets are numbered in the order of their mail, on both databases; on PostgreSQL the
        ids drawn for a batch and left (a reply opens no ticket) number the next batch's tickets, none
        skipped."""
        app = make_app(db=db_url)
        reply = plain("<o2@x.example>", "Re: Login broken", extra="In-Reply-To: <o1@x.example>\r\n")
        assert run_batch(app, [plain("<o1@x.example>"), reply, plain("<o3@x.example>")]) == [
            "created", "threaded", "created"
        ]
        assert run_batch(app, [plain("<o4@x.example>")]) == ["created"]
        order = select(InboundMessage.ticket_id).order_by(InboundMessage.id)
        assert app.db.call(lambda s: s.scalars(order).all()) == [1, 1, 2, 3]

    def test_a_batch_finds_stored_messages_by_index_on_a_table_never_analysed(  # type: ignore[no-untyped-def]
        self, make_app, db_url: str, monkeypatch
    ) -> None:
        """The batch's Message-ID look-up searches the index, not the table, on both databases. PostgreSQL's
        planner guesses an IN list's rows from statistics that a table autovacuum has not analysed yet lacks
        (a new database, a restored one): it took 200 Message-IDs for the whole table and scanned it."""
        app = make_app(db=db_url)
        assert run_batch(app, [plain("<n1@x.example>")]) == ["created"]
        postgresql = not app.db.is_sqlite

        def plan(session: Session, ids: list[str]) -> str:
            return query_plan(session, conversations._USES.params(ids=ids))

        def fill(session: Session) -> None:
            if postgresql:  # no analysis may come meanwhile
                session.connection().exec_driver_sql("ALTER TABLE ticket_messages SET (autovacuum_enabled = off)")
            stored = [
                {"ticket_id": 1, "direction": "in", "kind": "customer", "message_id": f"<f{n}@x.example>",
                 "identity": f"<f{n}@x.example> {n}", "from_address": "ana@lincoln.example", "at": app.clock.now()}
                for n in range(5000)
            ]
            session.execute(sa.insert(TicketMessage), stored)

        app.db.call(fill)
        ids = [f"<f{n}@x.example>" for n in range(0, 5000, 25)]
        if postgresql:  # the premise: without the intake's setting, the planner scans the table
            assert "Seq Scan" in app.db.call(plan, ids)
        plans: list[str] = []
        uses = conversations.uses

        def explained(session: Session, message_ids: list[str]) -> dict[str, list[Use]]:
            plans.append(plan(session, list(message_ids)))
            return uses(session, message_ids)

        monkeypatch.setattr(conversations, "uses", explained)
        assert len(run_batch(app, [plain(message_id) for message_id in ids])) == len(ids)
        assert plans and all("ix_ticket_messages_message_id" in found for found in plans), plans
        assert not any("Seq Scan" in found or "SCAN ticket_messages" in found for found in plans), plans

    def test_a_batch_draws_ids_only_for_the_tickets_it_may_open(self, make_app, db_url: str) -> None:  # type: ignore[no-untyped-def]
        """A reply to a stored message and a duplicate open no ticket: on PostgreSQL no id is drawn
        for them, so none is left to be skipped once its time to serve a later batch has passed."""
        app = make_app(db=db_url)
        instant = [0.0]
        app.intake.ticket_ids = TicketIds(clock=lambda: instant[0])
        assert run_batch(app, [plain("<s1@x.example>")]) == ["created"]
        reply = plain("<s2@x.example>", "Re: Login broken", extra="In-Reply-To: <s1@x.example>\r\n")
        assert run_batch(app, [reply, plain("<s1@x.example>"), plain("<s3@x.example>")]) == [
            "threaded", "duplicate", "created"
        ]
        instant[0] += KEEP + 1
        assert run_batch(app, [plain("<s4@x.example>")]) == ["created"]
        opened = select(InboundMessage.ticket_id).where(InboundMessage.action == "created").order_by(InboundMessage.id)
        assert app.db.call(lambda s: s.scalars(opened).all()) == [1, 2, 3]

    def test_a_duplicate_of_an_earlier_batch_is_seen(self, app: App) -> None:
        """The batch finds it at its flush (the unique Message-ID index) and reruns message by message."""
        assert run_batch(app, [plain("<e1@x.example>")]) == ["created"]
        assert run_batch(app, [plain("<e2@x.example>"), plain("<e1@x.example>")]) == ["created", "duplicate"]
        assert app.db.call(lambda s: s.scalar(select(func.count()).select_from(Ticket))) == 2


class TestRunner:
    """The runner's loop, as the daemon runs it."""

    async def test_mail_stored_during_a_batch_is_not_left_for_the_sweep(self, app: App) -> None:
        """A door that stores (and wakes the runner) while a batch is being processed gets the next batch at
        once, not at the next sweep."""
        app.db.call(inbound_store.insert_many, [RawMessage(plain("<w1@x.example>"), "test")], app.clock.now())
        done: list[str] = []

        def stored_meanwhile(outcome) -> None:  # type: ignore[no-untyped-def]
            done.append(outcome.action)
            if len(done) == 1:  # as the door does: store, then wake
                app.db.call(inbound_store.insert_many, [RawMessage(plain("<w2@x.example>"), "test")], app.clock.now())
                app.processor.wake()

        app.processor.on_outcome = stored_meanwhile
        runner = asyncio.create_task(app.processor.run(sweep=60))
        try:
            async with asyncio.timeout(10):
                while len(done) < 2:
                    await asyncio.sleep(0.01)
        finally:
            runner.cancel()
        assert done == ["created", "created"]

    async def test_while_the_doors_store_mail_a_batch_is_short_and_claims_the_next(
        self, app: App, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A door waiting for its turn to write waits for one short batch: `batch_while_storing` rows while
        the doors store mail, `batch` once they are quiet. The transaction that decides a batch claims the
        next one, so the next batch is read and decided without a claim of its own."""
        raws = [RawMessage(plain(f"<b{n}@x.example>"), "test") for n in range(12)]
        ids = app.db.call(inbound_store.insert_many, raws, app.clock.now())
        processor = app.processor
        processor.batch, processor.batch_while_storing = 6, 2
        claims: list[int | None] = []  # each claim's limit
        claim = processor._claim

        def counted(session: Session, limit: int | None = None) -> list[InboundMessage]:
            claims.append(limit)
            return claim(session, limit)

        monkeypatch.setattr(processor, "_claim", counted)

        def owners() -> dict[int, str | None]:
            rows = app.db.call(lambda s: s.execute(select(InboundMessage.id, InboundMessage.claimed_by)).all())
            return {row_id: owner for row_id, owner in rows}

        monkeypatch.setattr("mailbot.processor.STORING", 60.0)  # whatever this machine's speed
        processor.wake()  # a door stored mail just now
        assert len(await processor._run_batch()) == 2
        assert claims == [2, 2]  # its own claim, then the next batch's in the deciding transaction
        held = owners()
        assert [held[i] for i in ids[2:5]] == [processor.owner, processor.owner, None]
        assert len(await processor._run_batch()) == 2 and claims == [2, 2, 2]  # no claim of its own
        monkeypatch.setattr("mailbot.processor.STORING", 0.0)  # the doors fell quiet
        assert len(await processor._run_batch()) == 2  # the batch claimed while they were storing
        assert claims[-1] == 6  # the rest, in one batch
        assert len(await processor._run_batch()) == 6
        assert app.db.call(lambda s: s.scalar(select(func.count()).select_from(Ticket))) == 12

    async def test_the_next_batch_is_claimed_before_this_one_is_done(self, make_app, db_url: str) -> None:  # type: ignore[no-untyped-def]
        """No pass waits for a claim of its own while a backlog drains: the transaction that decides a batch
        claims the next, on both databases; the backlog becomes tickets in the order it came."""
        app = make_app(db=db_url)
        raws = [RawMessage(plain(f"<n{n}@x.example>"), "test") for n in range(7)]
        ids = app.db.call(inbound_store.insert_many, raws, app.clock.now())
        app.processor.batch = 3
        decided = [len(await app.processor._run_batch())]
        claimed = (InboundMessage.status == "pending") & InboundMessage.claimed_until.is_not(None)
        held = app.db.call(lambda s: s.scalars(select(InboundMessage.id).where(claimed)).all())
        assert decided == [3] and sorted(held) == ids[3:6]
        while len(decided) < 4:
            decided.append(len(await app.processor._run_batch()))
        assert decided == [3, 3, 1, 0]
        tickets = app.db.call(lambda s: s.execute(select(InboundMessage.id, InboundMessage.ticket_id).order_by(InboundMessage.id)).all())
        assert [ticket for _, ticket in tickets] == sorted(ticket for _, ticket in tickets) and None not in dict(tickets).values()
