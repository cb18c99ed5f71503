"""The batch's facts (mailbot.facts): within one batch, each message sees what the messages before it did,
although nothing of the batch is written until its one flush; on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from mailbot.app import App
from mailbot.compose import Outgoing
from mailbot.facts import Facts
from mailbot.store import inbound as inbound_store
from mailbot.store import outbox
from mailbot.store.inbound import RawMessage
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket, TicketMessage
from tests.test_intake import plain


def one_batch(app: App, raws: list[bytes], sender: str = "ana@lincoln.example") -> list[str]:
    """Store `raws` as pending rows and decide them in one batch; the actions, in order."""
    app.db.call(inbound_store.insert_many, [RawMessage(raw, "test", sender) for raw in raws], app.clock.now())
    outcomes = app.processor.run_once()
    assert len(outcomes) == len(raws)  # one batch, not several
    return [o.action for o in outcomes]


def count(app: App, table: type) -> int:
    return int(app.db.call(lambda s: s.scalar(select(func.count()).select_from(table))))


class TestWithinABatch:
    """Two messages of one batch see each other through its facts."""

    def test_the_same_message_twice_is_a_duplicate(self, make_app: Callable[..., App], db_url: str) -> None:
        app = make_app(db=db_url)
        assert one_batch(app, [plain("<d1@x.example>"), plain("<d1@x.example>")]) == ["created", "duplicate"]
        assert count(app, Ticket) == 1

    def test_a_new_message_reusing_a_message_id_is_a_collision_not_a_duplicate(
        self, make_app: Callable[..., App], db_url: str
    ) -> None:
        """A Message-ID proves nothing (mailbot.identity): a different message under one seen earlier in the
        batch is processed, its collision recorded."""
        app = make_app(db=db_url)
        raws = [plain("<d2@x.example>"), plain("<d2@x.example>", "Another question")]
        assert one_batch(app, raws) == ["created", "created"]
        collisions = app.db.call(lambda s: list(s.scalars(select(InboundMessage.collision).order_by(InboundMessage.id))))
        assert collisions[0] is None and collisions[1] and "<d2@x.example>" in collisions[1]

    def test_a_reply_threads_onto_a_ticket_opened_earlier_in_the_batch(
        self, make_app: Callable[..., App], db_url: str
    ) -> None:
        app = make_app(db=db_url)
        reply = plain("<t2@x.example>", "Re: Login broken", extra="In-Reply-To: <t1@x.example>\r\n")
        assert one_batch(app, [plain("<t1@x.example>"), reply]) == ["created", "threaded"]
        [ticket] = app.db.call(lambda s: list(s.scalars(select(Ticket))))
        texts = app.db.call(lambda s: list(s.scalars(select(TicketMessage.message_id).where(
            TicketMessage.ticket_id == ticket.id, TicketMessage.direction == "in").order_by(TicketMessage.id))))
        assert texts == ["<t1@x.example>", "<t2@x.example>"]

    def test_a_subject_reference_names_a_ticket_opened_earlier_in_the_batch(
        self, make_app: Callable[..., App], db_url: str
    ) -> None:
        """The ticket number of a ticket not written yet is one the batch's facts know exists."""
        app = make_app(db=db_url)
        reply = plain("<s2@x.example>", "Re: [Ticket #1] Login broken")
        assert one_batch(app, [plain("<s1@x.example>"), reply]) == ["created", "threaded"]
        assert count(app, Ticket) == 1

    def test_the_governor_counts_mail_queued_earlier_in_the_batch(
        self, make_app: Callable[..., App], db_url: str
    ) -> None:
        """A named contact writing four issues in one batch with a cap of two: two confirmations pending,
        two withheld (their deadlines stand)."""
        app = make_app({"security": {"contact_mail_limit": 2}}, db=db_url)
        assert one_batch(app, [plain(f"<c{n}@x.example>", f"Issue {n}") for n in range(4)]) == ["created"] * 4
        statuses = app.db.call(lambda s: list(s.scalars(select(OutboxItem.status).order_by(OutboxItem.id))))
        assert statuses == ["pending", "pending", "withheld", "withheld"]

    def test_a_batch_after_a_batch_sees_what_it_wrote(self, make_app: Callable[..., App], db_url: str) -> None:
        """The cap counts across batches too: the stored confirmations are read with the next batch's facts."""
        app = make_app({"security": {"contact_mail_limit": 2}}, db=db_url)
        assert one_batch(app, [plain("<a1@x.example>", "One")]) == ["created"]
        assert one_batch(app, [plain("<a2@x.example>", "Two"), plain("<a3@x.example>", "Three")]) == ["created"] * 2
        statuses = app.db.call(lambda s: list(s.scalars(select(OutboxItem.status).order_by(OutboxItem.id))))
        assert statuses == ["pending", "pending", "withheld"]


class TestFacts:
    """Each key is read from the store once, then kept in memory: nothing is counted twice or missed."""

    def test_an_update_about_a_key_not_read_yet_reads_it_first(self, make_app: Callable[..., App], db_url: str) -> None:
        app = make_app(db=db_url)
        assert one_batch(app, [plain("<f1@x.example>")]) == ["created"]  # one confirmation stored
        now = app.clock.now()

        def queue_one(session: Session) -> tuple[int, int]:
            facts = Facts(session, counts_from=app.workflow.governor.counts_from(now))
            [ticket] = session.scalars(select(Ticket)).all()
            outgoing = app.workflow.to_requester(session, ticket, "confirmation", now=now)
            facts.queued(outbox.item(outgoing, ticket_id=ticket.id, now=now))
            before_flush = facts.sent_to("ANA@lincoln.example", {"confirmation"}, now - timedelta(hours=1))
            app.intake.write.finish(session, facts)  # written now: still counted once
            return before_flush, facts.sent_to("ana+x@lincoln.example", {"confirmation"}, now - timedelta(hours=1))

        assert app.db.call(queue_one) == (2, 2)

    def test_the_batch_s_questions_ask_the_store_nothing_more(self, make_app: Callable[..., App], db_url: str) -> None:
        """Loaded for a batch, the facts answer every question its rules ask about its messages from memory."""
        app = make_app(db=db_url)
        now = app.clock.now()
        reply = plain("<q2@x.example>", "Re: [Ticket #7] Login broken", extra="In-Reply-To: <q1@x.example>\r\n")
        raws = [plain("<q1@x.example>"), reply]
        ids = app.db.call(inbound_store.insert_many, [RawMessage(r, "test", "ana@lincoln.example") for r in raws], now)
        rows = app.db.call(lambda s: [inbound_store.get(s, inbound_id) for inbound_id in ids])
        readings = [app.intake.read(row) for row in rows]

        def ask(session: Session) -> list[str]:
            facts = app.intake.facts(session, readings, now)
            statements: list[str] = []

            def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
                statements.append(statement)

            event.listen(app.db.engine, "before_cursor_execute", seen)
            try:
                for r in readings:
                    facts.uses(r.key)
                    facts.owners(r.clues.message_ids)
                    facts.existing(r.clues.ticket_ids())
                    facts.contact(r.sender)
                    facts.contact(r.requester)
                    facts.sent_to(r.requester, {"confirmation"}, now - timedelta(hours=1))
            finally:
                event.remove(app.db.engine, "before_cursor_execute", seen)
            return statements

        assert app.db.call(ask) == []

    def test_the_store_s_counts_are_the_rows_counted_one_by_one(self, make_app: Callable[..., App], db_url: str) -> None:
        """Counted by the database (by kind, withheld or not, and the latest window start each row follows):
        every count equals the rows' own, whatever the windows, kinds and statuses."""
        app = make_app(db=db_url)
        now = app.clock.now()
        rng = random.Random(13)
        kinds = ["confirmation", "explanation", "introduction", "notification", "relay"]
        people = ["ana@lincoln.example", "bo@lincoln.example", "cy@lincoln.example"]
        rows = [
            (rng.choice(people), rng.choice(kinds), now - timedelta(minutes=rng.randrange(0, 3 * 24 * 60)), rng.random() < 0.2)
            for _ in range(300)
        ]
        items = [
            outbox.item(
                Outgoing(kind, f"<c{n}@schoolmint.com>", "herosupport@schoolmint.com", [to], "s", "t", b"b"),
                ticket_id=None, now=at, withheld="kept back" if withheld else None,
            )
            for n, (to, kind, at, withheld) in enumerate(rows)
        ]
        app.db.call(lambda s: s.add_all(items))
        starts = app.workflow.governor.counts_from(now)

        def counts(session: Session) -> list[int]:
            facts = Facts(session, counts_from=starts)
            return [
                facts.sent_to(to.upper(), wanted, since)
                for to in people for since in starts for wanted in ({"confirmation"}, {"explanation", "introduction"})
            ]

        expected = [
            sum(1 for t, kind, at, withheld in rows if t == to and kind in wanted and at >= since and not withheld)
            for to in people for since in starts for wanted in ({"confirmation"}, {"explanation", "introduction"})
        ]
        assert app.db.call(counts) == expected and sum(expected) > 0

    def test_counts_from_an_instant_not_read_are_refused(self, make_app: Callable[..., App], db_url: str) -> None:
        """The store counted from the facts' instants only: a count from another would be silently wrong, so
        it raises instead."""
        app = make_app(db=db_url)
        now = app.clock.now()

        def too_far(session: Session) -> None:
            facts = Facts(session, counts_from=[now - timedelta(hours=1)])
            facts.sent_to("ana@lincoln.example", {"x"}, now - timedelta(minutes=30))

        with pytest.raises(ValueError, match="since"):
            app.db.call(too_far)



@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_a_message_stored_by_another_instance_meanwhile_is_seen_with_facts_read_again(
    make_app: Callable[..., App], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One message decided alone: another instance stores the same message after this one's facts were read
    and before its write; the unique index refuses the write, and the decision is made again with facts read
    again, which see it: a duplicate. (PostgreSQL: on SQLite the first writer holds the lock throughout.)"""
    app, other = make_app(db=db_url), make_app(db=db_url)
    now = app.clock.now()
    raw = plain("<m1@x.example>")
    [mine] = app.db.call(inbound_store.insert_many, [RawMessage(raw, "test", "ana@lincoln.example")], now)
    [theirs] = other.db.call(inbound_store.insert_many, [RawMessage(raw, "test", "ana@lincoln.example")], now)
    read_facts = app.intake.facts
    reads: list[int] = []

    def then_the_other_instance(session: Session, readings: Any, at: Any) -> Facts:
        facts = read_facts(session, readings, at)
        reads.append(len(readings))
        if len(reads) == 1:
            assert other.processor.process_one(theirs).action == "created"
        return facts

    monkeypatch.setattr(app.intake, "facts", then_the_other_instance)
    assert app.processor.process_one(mine).action == "duplicate"
    assert reads == [1, 1] and count(app, Ticket) == 1
    trail = app.db.call(lambda s: inbound_store.get(s, mine).trail)
    [duplicate] = [step for step in trail if step["step"] == "duplicate"]
    assert duplicate["detail"] == "<m1@x.example> is already stored, the same message"
