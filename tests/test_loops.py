"""mailbot.loops end to end: real mail in over SMTP, real mail out to an SMTP sink; nothing answers a machine.

Out-of-office replies, bounces, our own mail coming back and auto-responders that answer everything: each
test counts what crossed the wire to the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import smtplib
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbot.automatic import LOOP_HEADER
from mailbot.cli import tickets as ticket_commands
from mailbot.clock import FrozenClock
from mailbot.held import HeldReason
from mailbot.loops import Opening, refusal
from mailbot.store import registry
from mailbot.store.schema import Contact, InboundMessage, OutboxItem, Ticket
from tests.mailers import SinkHandler, message
from tests.world import CUSTOMER, SUPPORT, World

pytestmark = pytest.mark.calendar  # run again under pinned wall clocks (Makefile: test-calendar)

DATA = Path(__file__).parent / "data"
SAM = "sam@schoolmint.com"


def sample(name: str, replacements: dict[str, str]) -> bytes:
    """A message from tests/data with some text replaced, in CRLF line ends as on the wire."""
    text = (DATA / name).read_bytes().decode("utf-8")
    for old, new in replacements.items():
        assert old in text, f"{old!r} not in {name}"
        text = text.replace(old, new)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def header(data: bytes, name: str) -> str:
    return str(message_from_bytes(data, policy=policy.default)[name])


def show(app: Any, ticket_id: int, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """`mailbot ticket show ID --json`, run by the command's own code against the running daemon's database."""
    capsys.readouterr()
    context = argparse.Namespace(app=app)
    assert ticket_commands.cmd_show(argparse.Namespace(id=ticket_id, json=True), context) == 0
    return dict(json.loads(capsys.readouterr().out))


async def confirmed(world: World) -> bytes:
    """Ana writes; mailbot confirms: the confirmation's bytes as the relay got them."""
    await world.send(message(message_id="<first@lincoln.example>"))
    await world.settle()
    assert len(world.wire) == 1 and world.wire[0].rcpt_tos == [CUSTOMER], world.describe()
    return world.wire[0].data


class TestOutOfOffice:
    async def test_vacation_reply_to_the_confirmation_gets_nothing_back(self, world, db_url: str) -> None:
        """Gmail's vacation reply threads onto the ticket; no mail goes back, and no notification either."""
        service = await world(db=db_url)
        service.app.db.call(registry.add_specialist, "sam@schoolmint.com", "Sam Lee", service.app.clock.now())
        confirmation = await confirmed(service)
        service.app.sla.claim(1, "sam@schoolmint.com")  # assigned: a customer's reply would notify Sam
        await service.settle()
        before = len(service.wire)
        assert before == 3  # confirmation, introduction, Sam's assignment
        vacation = sample(
            "auto_vacation_gmail.eml",
            {
                "ana.lopez@lincoln-high.example.org": CUSTOMER,
                "<Bx4nJ7sQ2wL9mT5kR1vD8hF3@schoolmint.com>": header(confirmation, "Message-ID"),
            },
        )
        await service.send(vacation)
        await service.settle()
        assert len(service.wire) == before
        row = service.inbound()[-1]
        assert (row.action, row.ticket_id) == ("threaded", 1) and service.count(Ticket) == 1
        last = service.app.db.call(lambda s: s.get_one(Ticket, 1).messages[-1])
        assert (last.direction, last.kind, last.message_id) == ("in", "customer", row.message_id)
        assert [item.kind for item in service.outbox()] == ["confirmation", "introduction", "assignment"]

    async def test_exchange_reply_with_null_sender_and_no_thread_is_held(self, world) -> None:
        """An out-of-office reply that names no message of ours starts a held ticket, reason automatic; silent."""
        service = await world()
        reply = sample("auto_out_of_office_exchange.eml", {"d.whitfield@maplewood.example.edu": CUSTOMER})
        await service.send(reply, mail_from="")
        await service.settle()
        ticket = service.ticket(1)
        assert (ticket.status, ticket.held_reason) == ("held", HeldReason.AUTOMATIC)
        assert service.wire == []


class TestBounces:
    async def test_bounce_of_the_confirmation_marks_it_bounced(self, world, db_url: str, capsys) -> None:
        """A DSN makes no ticket and no mail; `ticket show --json` says the confirmation bounced, and why."""
        service = await world(db=db_url)
        confirmation = await confirmed(service)
        dsn = sample(
            "bounce_postfix_dsn.eml",
            {
                "<q9Xv3LmT2pR8sK1wZ4yB6nD0@schoolmint.com>": header(confirmation, "Message-ID"),
                "ana.lopez@lincoln-high.example.org": CUSTOMER,
            },
        )
        await service.send(dsn, mail_from="")
        await service.settle()
        assert len(service.wire) == 1 and service.count(Ticket) == 1
        row = service.inbound()[-1]
        assert (row.action, row.ticket_id) == ("ignored", 1)
        shown = show(service.app, 1, capsys)
        [out] = [m for m in shown["messages"] if m["direction"] == "out"]
        assert out["kind"] == "confirmation" and out["delivery"] == "bounced"
        assert out["delivery_detail"].startswith("5.1.1 550 5.1.1") and CUSTOMER in out["delivery_detail"]
        contact = service.app.db.call(lambda s: registry.find_contact(s, CUSTOMER))
        assert contact is not None and (contact.bounces, contact.bouncing) == (1, False)
        assert ticket_commands.cmd_show(argparse.Namespace(id=1, json=False), argparse.Namespace(app=service.app)) == 0
        assert "Delivery: bounced (5.1.1 550 5.1.1" in capsys.readouterr().out

    async def test_delay_warning_then_bounce(self, world) -> None:
        """A delay warning marks the delivery delayed; the later failure marks it bounced, and stays so."""
        service = await world()
        sent_id = header(await confirmed(service), "Message-ID")
        delayed = sample(
            "bounce_delayed.eml",
            {"<Yd3kR8pN1vB6wQ2tL5hX9cM4@schoolmint.com>": sent_id, "t.brooks@cedar-valley.example.org": CUSTOMER},
        )
        failed = sample(
            "bounce_postfix_dsn.eml",
            {"<q9Xv3LmT2pR8sK1wZ4yB6nD0@schoolmint.com>": sent_id, "ana.lopez@lincoln-high.example.org": CUSTOMER},
        )
        deliveries = []
        for report in (delayed, failed, delayed):
            await service.send(report, mail_from="")
            await service.settle()
            [item] = service.outbox()
            deliveries.append(item.delivery)
        assert deliveries == ["delayed", "bounced", "bounced"]
        assert len(service.wire) == 1

    async def test_bounce_of_mail_we_never_sent(self, world) -> None:
        """Backscatter from a forger's mail is kept, ignored and touches no delivery."""
        service = await world()
        dsn = sample("bounce_postfix_dsn.eml", {})
        await service.send(dsn, mail_from="")
        await service.settle()
        [row] = service.inbound()
        assert row.action == "ignored" and row.ticket_id is None
        assert service.count(Ticket) == 0 and service.wire == []


class TestOwnMail:
    async def test_our_confirmation_fed_back_is_ignored(self, world, db_url: str) -> None:
        """Our own message coming back (a forwarding rule pointing at us) is recognised by its signed mark."""
        service = await world(db=db_url)
        confirmation = await confirmed(service)
        await service.send(confirmation, mail_from=SUPPORT)
        await service.settle()
        row = service.inbound()[-1]
        assert (row.action, row.ticket_id) == ("ignored", 1)
        assert service.count(Ticket) == 1 and len(service.wire) == 1

    async def test_a_copied_mark_does_not_make_mail_ours(self, world) -> None:
        """A stranger who copies our mark onto their own message gets nothing ignored: it is held, unanswered."""
        service = await world()
        mark = header(await confirmed(service), LOOP_HEADER)
        await service.send(message(subject="Another question", headers={LOOP_HEADER: mark}))
        await service.settle()
        row = service.inbound()[-1]
        assert row.action == "held" and service.ticket(2).held_reason == HeldReason.AUTOMATIC
        assert len(service.wire) == 1


@dataclass
class AutoResponder(SinkHandler):
    """The relay, and behind it auto-responders (the customer's; with `specialist`, Sam's too) that answer
    every message mailbot sends them.

    `marked`: its replies say what they are (Auto-Submitted, a null envelope sender); `threaded`: they carry
    In-Reply-To and keep our subject; otherwise each reply looks like a new message from the customer.
    """

    port: int = 0
    marked: bool = False
    threaded: bool = False
    specialist: bool = False
    limit: int = 30  # a runaway loop stops here, and the test fails on the count
    replies: int = 0
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        responders = [CUSTOMER, SAM] if self.specialist else [CUSTOMER]
        for who in (r for r in envelope.rcpt_tos if r in responders and self.replies < self.limit):
            self.replies += 1
            task = asyncio.create_task(asyncio.to_thread(self._answer, envelope.original_content or b"", self.replies, who))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        return reply

    def _answer(self, data: bytes, number: int, who: str) -> None:
        original = message_from_bytes(data, policy=policy.default)
        # A threaded responder answers like a mail client, to the Reply-To (the ticket's reply address).
        to = original["Reply-To"].addresses[0].addr_spec if self.threaded and original["Reply-To"] else SUPPORT
        answer = EmailMessage()
        answer["From"] = who
        answer["To"] = to
        answer["Message-ID"] = f"<away-{number}@lincoln.example>"
        if self.threaded:
            answer["Subject"] = f"Away: {original['Subject']}"
            answer["In-Reply-To"] = str(original["Message-ID"])
        else:
            answer["Subject"] = "I am away this week"
        if self.marked:
            answer["Auto-Submitted"] = "auto-replied"
        answer.set_content("I am away this week and will answer when I am back.\n")
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.sendmail("" if self.marked else who, [to], answer.as_bytes(policy=policy.SMTP))


class TestAutoResponderLoop:
    async def quiet(self, service: World, responder: AutoResponder) -> None:
        """Until a whole round passes in which neither side said anything new."""
        for _ in range(100):
            seen = (len(service.wire), service.count(InboundMessage))
            await service.settle()
            if responder.in_flight:
                await asyncio.wait(list(responder.in_flight))
            elif (len(service.wire), service.count(InboundMessage)) == seen:
                return
        raise AssertionError("the two sides never went quiet")

    @pytest.mark.parametrize(
        ("marked", "threaded"), [(True, True), (True, False), (False, True)], ids=["marked", "marked-new", "threaded"]
    )
    async def test_responder_gets_one_message(self, world, relay, marked: bool, threaded: bool) -> None:
        """A responder whose replies say what they are, or that reply on our thread, hears from us once."""
        service = await world()
        responder = AutoResponder(port=service.port, marked=marked, threaded=threaded)
        relay.handler = responder
        await service.send(message())
        await self.quiet(service, responder)
        assert (len(service.wire), responder.replies) == (1, 1)
        assert service.count(InboundMessage) == 2 and service.count(OutboxItem) == 1

    async def test_unmarked_responder_stops_at_the_limit(self, world, relay) -> None:
        """Replies that look like new mail open new tickets, but confirmations stop at the per-address limit;
        past it a named contact's confirmation is withheld (its deadline stands), not dropped."""
        service = await world({"security": {"contact_mail_limit": 3}})
        responder = AutoResponder(port=service.port)
        relay.handler = responder
        await service.send(message())
        await self.quiet(service, responder)
        assert (len(service.wire), responder.replies) == (3, 3)
        assert service.count(Ticket) == 4
        last = service.ticket(4)
        assert last.confirmation_due_at is not None and "limit is 3" in (last.auto_reply_refused or "")
        assert [item.status for item in service.outbox()] == ["sent"] * 3 + ["withheld"]

    async def test_unmarked_responder_is_cut_off_for_introductions_too(self, world, relay, caplog) -> None:
        """With a short auto_assign_after every new ticket is introduced at once: confirmations and
        introductions count together against the per-address limit, so a responder answering each of them
        with a new thread is cut off whatever the kind, and each limit hit is in the daemon's log."""
        service = await world({"security": {"contact_mail_limit": 6}, "sla": {"auto_assign_after": "0s"}})
        service.app.db.call(registry.add_specialist, SAM, "Sam Lee", service.app.clock.now())
        responder = AutoResponder(port=service.port, limit=2)  # answers two confirmations, then waits
        relay.handler = responder
        caplog.set_level("WARNING", logger="mailbot.governor")
        await service.send(message())
        await self.quiet(service, responder)
        assert [item.kind for item in service.outbox()] == ["confirmation"] * 3
        responder.limit = 30  # from now on it answers everything, introductions included
        for _ in range(30):  # each round: the sweep introduces the tickets due, the responder answers
            if not (await service.app.sla.sweep()).assigned:
                break
            await self.quiet(service, responder)
        else:
            raise AssertionError(f"the loop never stopped: {service.describe()}")
        promised = [item for item in service.outbox() if item.kind in ("confirmation", "introduction")]
        sent = [item.kind for item in promised if item.status == "sent"]
        to_customer = [m for m in service.wire if m.rcpt_tos == [CUSTOMER]]
        assert sent == ["confirmation"] * 3 + ["introduction"] * 3 and len(to_customer) == 6
        withheld = [item.kind for item in promised if item.status == "withheld"]
        assert withheld == ["confirmation"] * 3 + ["introduction"] * 3, service.describe()
        hits = [r.getMessage() for r in caplog.records if r.name == "mailbot.governor"]
        assert len(hits) == 6 and all("withheld" in hit and "the limit is 6" in hit for hit in hits)

    async def test_responders_on_both_sides_stop_at_the_ticket_limit(self, world, relay) -> None:
        """Ana's and Sam's responders reply on the thread and mark nothing: each reply is passed on (a
        notification, a relay) until ticket_mail_per_hour of them went out within the hour."""
        service = await world({"security": {"ticket_mail_per_hour": 4}})
        service.app.db.call(registry.add_specialist, SAM, "Sam Lee", service.app.clock.now())
        responder = AutoResponder(port=service.port, threaded=True, specialist=True)
        relay.handler = responder
        await service.send(message())
        await self.quiet(service, responder)
        service.app.sla.claim(1, SAM)
        await self.quiet(service, responder)
        kinds = [item.kind for item in service.outbox()]
        # Sam's responder answers his assignment too: relays and notifications, in the order the responders
        # happen to answer, up to the four the limit lets through.
        assert sorted(kinds[:3]) == ["assignment", "confirmation", "introduction"], kinds
        assert len(kinds[3:]) == 4 and set(kinds[3:]) == {"notification", "relay"}, kinds
        assert len(service.wire) == responder.replies == 7
        assert "mail loop suspected" in (service.ticket(1).auto_reply_refused or "")


class TestGuard:
    """The guard on confirmations and explanations, through the intake (no SMTP needed)."""

    def ingest(self, app: Any, raw: bytes, envelope: str | None = CUSTOMER) -> Any:
        from mailbot.store.inbound import RawMessage, insert_many

        [inbound_id] = app.db.call(insert_many, [RawMessage(raw, "test", envelope, (SUPPORT,))], app.clock.now())
        return app.processor.process_one(inbound_id)

    def kinds(self, app: Any) -> list[str]:
        return [item.kind for item in app.db.call(lambda s: list(s.query(OutboxItem).order_by(OutboxItem.id)))]

    def test_forged_sender_gets_no_confirmation(self, app) -> None:
        """From names our customer but the envelope comes from elsewhere: the ticket waits, unconfirmed."""
        outcome = self.ingest(app, message(), envelope="bulk@spammer.example")
        assert outcome.action == "created" and self.kinds(app) == []
        ticket = app.db.call(lambda s: s.get_one(Ticket, outcome.ticket_id))
        assert "cannot be trusted" in (ticket.auto_reply_refused or "") and ticket.confirmation_due_at is None

    def test_sub_domain_envelope_is_aligned(self, app) -> None:
        outcome = self.ingest(app, message(), envelope="bounces@mail.lincoln.example")
        assert outcome.action == "created" and self.kinds(app) == ["confirmation"]

    def test_no_envelope_at_all_trusts_from(self, app) -> None:
        """`mailbot ingest FILE` without --sender: no return path to compare, the person's From stands."""
        assert self.ingest(app, message(), envelope=None).action == "created"
        assert self.kinds(app) == ["confirmation"]

    def statuses(self, app: Any) -> list[str]:
        return [item.status for item in app.db.call(lambda s: list(s.query(OutboxItem).order_by(OutboxItem.id)))]

    def test_limit_counts_per_address_and_window(self, make_app, clock: FrozenClock) -> None:
        """Case and plus tags fold into one address; past the limit a named contact's confirmation is
        withheld; an hour later the window has moved on."""
        app = make_app({"security": {"contact_mail_limit": 2, "auto_reply_window": "1h"}})
        for sender in ("Ana@lincoln.example", "ana+billing@lincoln.example", "ana@lincoln.example"):
            self.ingest(app, message(sender=sender), envelope=sender)
        assert self.statuses(app) == ["pending", "pending", "withheld"]
        clock.set(clock.now() + timedelta(minutes=61))
        self.ingest(app, message())
        assert self.statuses(app) == ["pending", "pending", "withheld", "pending"]

    def test_bouncing_contact_gets_no_confirmation(self, app) -> None:
        def bounce(session) -> None:  # type: ignore[no-untyped-def]
            contact = session.query(Contact).one()
            contact.bouncing = True

        app.db.call(bounce)
        outcome = self.ingest(app, message())
        assert self.kinds(app) == []
        assert "bouncing" in (app.db.call(lambda s: s.get_one(Ticket, outcome.ticket_id)).auto_reply_refused or "")

    def test_release_of_held_automatic_mail_sends_nothing(self, app) -> None:
        """A person may release a held list message into the flow; the guard still sends it nothing."""
        outcome = self.ingest(app, message(headers={"Precedence": "bulk"}))
        assert outcome.action == "held"

        def release(session) -> None:  # type: ignore[no-untyped-def]
            app.workflow.release(session, session.get_one(Ticket, outcome.ticket_id), app.clock.now())

        app.db.call(release)
        assert self.kinds(app) == []
        ticket = app.db.call(lambda s: s.get_one(Ticket, outcome.ticket_id))
        assert ticket.status == "new" and ticket.auto_reply_refused == "automatic mail: Precedence: bulk"

    def test_hard_bounces_mark_the_contact_bouncing(self, make_app) -> None:
        """Each outgoing message counts once, however many reports arrive; the third marks the contact."""
        app = make_app({"security": {"bouncing_after": 3, "auto_reply_limit": 10}})
        sent = []
        for _ in range(3):
            ticket_id = self.ingest(app, message()).ticket_id
            sent.append(app.db.call(lambda s, t=ticket_id: s.query(OutboxItem).filter_by(ticket_id=t).one().message_id))
        states = []
        for message_id in [sent[0], sent[0], sent[1], sent[2]]:
            dsn = sample(
                "bounce_postfix_dsn.eml",
                {"<q9Xv3LmT2pR8sK1wZ4yB6nD0@schoolmint.com>": message_id, "ana.lopez@lincoln-high.example.org": CUSTOMER},
            )
            assert self.ingest(app, dsn, envelope="").action == "ignored"
            contact = app.db.call(lambda s: registry.find_contact(s, CUSTOMER))
            states.append((contact.bounces, contact.bouncing))
        assert states == [(1, False), (1, False), (2, False), (3, True)]


class TestRefusalRule:
    """mailbot.loops.refusal, the pure rule behind the guard."""

    def parsed(self, raw: bytes, envelope: str | None = CUSTOMER, *, bouncing: bool = False) -> Opening:
        parsed = message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return Opening.read(parsed, envelope, bouncing=bouncing)

    def test_person_with_aligned_envelope_may_be_answered(self) -> None:
        assert refusal(self.parsed(message()), CUSTOMER) is None

    @pytest.mark.parametrize(
        ("headers", "envelope", "expected"),
        [
            ({"Auto-Submitted": "auto-generated"}, CUSTOMER, "automatic mail: Auto-Submitted: auto-generated"),
            ({"List-Id": "<staff.lincoln.example>"}, CUSTOMER, "automatic mail: mailing list (List-Id header)"),
            ({}, "", "automatic mail: null return path (a bounce or an auto-reply)"),
            ({}, "ana@elsewhere.example", "the sender's address cannot be trusted"),
            ({"Return-Path": "<x@elsewhere.example>"}, None, "the sender's address cannot be trusted"),
        ],
    )
    def test_refused(self, headers: dict[str, str], envelope: str | None, expected: str) -> None:
        got = refusal(self.parsed(message(headers=headers), envelope), CUSTOMER)
        assert got is not None and got.startswith(expected)

    def test_requester_must_be_the_from_address(self) -> None:
        """A ticket whose requester came from Reply-To or the envelope (no usable From) is never auto-answered."""
        got = refusal(self.parsed(message()), "someone@lincoln.example")
        assert got is not None

    def test_bouncing(self) -> None:
        bouncing = self.parsed(message(), bouncing=True)
        assert "bouncing" in (refusal(bouncing, CUSTOMER) or "")
