"""The intake's rules (mailbot.intake.rules) as pure functions: a reading and facts built in memory, no
database (`Facts.given` has no store behind it), and the decision they make."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

import pytest

from mailbot.admission import Gate
from mailbot.authn import AuthVerdict
from mailbot.config import SecurityConfig
from mailbot.entitlement import ContactFacts
from mailbot.errors import TransientDNSError
from mailbot.facts import Facts
from mailbot.followups import Followups
from mailbot.held import HeldReason
from mailbot.identity import Use
from mailbot.intake.decisions import Decision, Duplicate, FollowUp, Found, Ignore, Joining, Open, Refuse
from mailbot.intake.reading import read
from mailbot.intake.rules import Rules
from mailbot.loops import MachineMail
from mailbot.parse import ParseLimits
from mailbot.plans import OrgFacts, Plan, Product
from mailbot.reading import Reading
from mailbot.store.registry import ContactRecord
from mailbot.store.schema import InboundMessage, OutboxItem, Specialist, Ticket, TicketMessage
from mailbot.tokens import ReplyTokens
from mailbot.workflow import Workflow

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
SECRET = b"a secret of the site, sixteen+"
RULES = Rules(
    reopen_within=timedelta(days=7), auth_retry_for=timedelta(days=1), require_sender_auth=True, zone=ZoneInfo("UTC")
)
LINCOLN = OrgFacts("Lincoln High", Product("full"), Plan("silver"), valid_from=None, valid_until=None)
ANA = ContactRecord(ContactFacts("ana@lincoln.example", LINCOLN, None, 0), 1, False, "Ana")


def mail(message_id: str = "<m1@lincoln.example>", *, sender: str = "ana@lincoln.example", headers: str = "",
         text: str = "I cannot log in.") -> bytes:
    return (f"From: {sender}\r\nTo: herosupport@schoolmint.com\r\nSubject: Login broken\r\n"
            f"Message-ID: {message_id}\r\n{headers}\r\n{text}\r\n").encode()


def reading(raw: bytes, *, authenticated: bool = True) -> Reading:
    """What the intake's first stage reads, with the sender's authentication given."""
    workflow = cast(Workflow, None)  # reading writes nothing
    gate = Gate(SecurityConfig(require_sender_auth=False), ZoneInfo("UTC"), workflow, None)
    followups = Followups(workflow, ReplyTokens(SECRET, ("herosupport@schoolmint.com",)), reopen_within=timedelta(0))
    inbound = InboundMessage(raw=raw, envelope_from=None, envelope_to=[], source="test", received_at=NOW)
    read_ = read(inbound, ParseLimits(), gate=gate, followups=followups, machines=MachineMail(SECRET, bouncing_after=3))
    verdict = AuthVerdict(authenticated, "dkim", "lincoln.example", "signed" if authenticated else "no signature")
    return replace(read_, verdict=verdict)


def decide(reading: Reading, facts: Facts) -> Decision:
    """The rules in order until one decides, as the intake runs them."""
    found = Found()
    for rule in RULES.in_order:
        result = rule(reading, facts, found)
        if not isinstance(result, Found):
            return result
        found = result
    raise AssertionError("the last rule always decides")


def ticket(id_: int = 7, *, status: str = "open", resolved_at: datetime | None = None) -> Ticket:
    first = TicketMessage(direction="in", from_address="ana@lincoln.example", to=[], cc=[], message_id="<m0@lincoln.example>")
    return Ticket(id=id_, status=status, requester="ana@lincoln.example", organization_id=1, specialist_id=None,
                  resolved_at=resolved_at, messages=[first])


def steps(decision: Decision) -> list[tuple[str, str]]:
    return [(step, verdict) for step, verdict, _ in decision.found.notes]


class TestMachineMail:
    def test_a_bounce_of_a_message_we_did_not_send_is_ignored(self) -> None:
        dsn = reading(_dsn("<unknown@elsewhere.example>"))
        assert dsn.bounce is not None
        decision = decide(dsn, Facts.given(NOW))
        assert isinstance(decision, Ignore) and decision.detail == "bounce of a message mailbot did not send"
        assert decision.ticket_id is None and decision.item is None

    def test_a_bounce_detail_says_the_delivery_it_leaves(self) -> None:
        item = OutboxItem(ticket_id=7, kind="confirmation", message_id="<c1@mailbot.example>", delivery=None)
        decision = decide(reading(_dsn("<c1@mailbot.example>")), Facts.given(NOW, outgoing={"<c1@mailbot.example>": item}))
        assert isinstance(decision, Ignore) and decision.ticket_id == 7 and decision.item is item
        assert decision.detail == "bounce: confirmation <c1@mailbot.example> bounced"
        assert item.delivery is None  # the rule decides; the write records it

    def test_our_own_mail_coming_back_is_ignored(self) -> None:
        from mailbot.automatic import loop_mark

        own = reading(mail("<c2@mailbot.example>", headers=f"X-Mailbot-Loop: {loop_mark(SECRET, '<c2@mailbot.example>')}\r\n"))
        assert own.own
        item = OutboxItem(ticket_id=3, kind="relay", message_id="<c2@mailbot.example>", delivery=None)
        decision = decide(own, Facts.given(NOW, outgoing={"<c2@mailbot.example>": item}))
        assert isinstance(decision, Ignore) and (decision.detail, decision.ticket_id) == ("our own message came back", 3)
        assert decision.bounce is None


class TestDuplicates:
    def test_the_same_message_again_is_a_duplicate(self) -> None:
        first = reading(mail())
        facts = Facts.given(NOW, uses={first.key: [Use(first.identity, 7, "ana@lincoln.example", "in")]})
        decision = decide(first, facts)
        assert isinstance(decision, Duplicate)
        assert steps(decision) == [("automatic mail", "written by a person"), ("duplicate", "duplicate")]

    def test_another_message_under_a_known_message_id_is_a_collision_and_goes_on(self) -> None:
        again = reading(mail(text="Another question."))
        facts = Facts.given(NOW, uses={again.key: [Use("someone else's", 7, "bo@else.example", "in")]},
                            contacts={"ana@lincoln.example": ANA})
        decision = decide(again, facts)
        assert isinstance(decision, Open) and decision.held is None
        assert decision.found.collision and again.key in decision.found.collision


class TestThreading:
    def test_a_participants_reply_joins_the_ticket_it_names(self) -> None:
        reply = reading(mail("<m2@lincoln.example>", headers="In-Reply-To: <m0@lincoln.example>\r\n"))
        facts = Facts.given(NOW, uses={"<m0@lincoln.example>": [Use("x", 7, "ana@lincoln.example", "in")]},
                            tickets=[ticket()], colleagues={7: []})
        decision = decide(reply, facts)
        assert isinstance(decision, FollowUp) and (decision.ticket_id, decision.joining) == (7, Joining.REPLY)
        assert not decision.reopen and steps(decision)[-1] == ("threading", "threaded")

    def test_a_reply_to_a_ticket_resolved_lately_reopens_it(self) -> None:
        reply = reading(mail("<m2@lincoln.example>", headers="In-Reply-To: <m0@lincoln.example>\r\n"))
        facts = Facts.given(NOW, uses={"<m0@lincoln.example>": [Use("x", 7, "ana@lincoln.example", "in")]},
                            tickets=[ticket(status="resolved", resolved_at=NOW - timedelta(days=1))], colleagues={7: []})
        decision = decide(reply, facts)
        assert isinstance(decision, FollowUp) and decision.reopen

    def test_a_reply_to_a_ticket_resolved_long_ago_opens_a_new_one_linked_to_it(self) -> None:
        reply = reading(mail("<m2@lincoln.example>", headers="In-Reply-To: <m0@lincoln.example>\r\n"))
        facts = Facts.given(NOW, uses={"<m0@lincoln.example>": [Use("x", 7, "ana@lincoln.example", "in")]},
                            tickets=[ticket(status="resolved", resolved_at=NOW - timedelta(days=30))],
                            colleagues={7: []}, contacts={"ana@lincoln.example": ANA})
        decision = decide(reply, facts)
        assert isinstance(decision, Open) and decision.found.continues == 7 and decision.held is None
        assert steps(decision)[-2:] == [("threading", "continues"), ("entitlement", "entitled")]

    def test_a_stranger_naming_a_ticket_is_held_away_from_it(self) -> None:
        stranger = reading(mail("<s1@else.example>", sender="bo@else.example", headers="In-Reply-To: <m0@lincoln.example>\r\n"))
        facts = Facts.given(NOW, uses={"<m0@lincoln.example>": [Use("x", 7, "ana@lincoln.example", "in")]},
                            tickets=[ticket()], colleagues={7: []})
        decision = decide(stranger, facts)
        assert isinstance(decision, Refuse) and decision.held.reason is HeldReason.NOT_A_PARTICIPANT

    def test_an_active_specialists_take_is_decided_as_a_taking(self) -> None:
        take = reading(mail("<t1@team.example>", sender="sam@schoolmint.com", text="#take",
                            headers="In-Reply-To: <m0@lincoln.example>\r\n"))
        sam = Specialist(id=2, address="sam@schoolmint.com", name="Sam", active=True)
        facts = Facts.given(NOW, uses={"<m0@lincoln.example>": [Use("x", 7, "ana@lincoln.example", "in")]},
                            tickets=[ticket()], colleagues={7: []}, specialists={"sam@schoolmint.com": sam})
        decision = decide(take, facts)
        assert isinstance(decision, FollowUp) and decision.joining is Joining.TAKEN and decision.taker is sam

    def test_a_dns_failure_waits_when_the_message_names_a_ticket(self) -> None:
        reply = reading(mail("<m2@lincoln.example>", headers="In-Reply-To: <m0@lincoln.example>\r\n"))
        waiting = replace(reply, verdict=AuthVerdict(False, "dkim", None, "DNS timeout", temporary=True))
        facts = Facts.given(NOW, uses={"<m0@lincoln.example>": [Use("x", 7, "ana@lincoln.example", "in")]},
                            tickets=[ticket()], colleagues={7: []})
        with pytest.raises(TransientDNSError):
            decide(waiting, facts)


class TestNewConversation:
    def test_a_named_contact_is_entitled_to_a_ticket_of_their_organization(self) -> None:
        decision = decide(reading(mail()), Facts.given(NOW, contacts={"ana@lincoln.example": ANA}))
        assert isinstance(decision, Open) and decision.held is None and decision.admission is not None
        assert decision.admission.organization_id == 1
        assert steps(decision) == [
            ("automatic mail", "written by a person"), ("duplicate", "new"), ("threading", "new conversation"),
            ("entitlement", "entitled"),
        ]

    def test_a_stranger_is_held_as_unknown(self) -> None:
        decision = decide(reading(mail(sender="bo@else.example")), Facts.given(NOW))
        assert isinstance(decision, Open) and decision.held is not None
        assert decision.held.reason is HeldReason.UNKNOWN_SENDER

    def test_an_unauthenticated_contact_is_held(self) -> None:
        decision = decide(reading(mail(), authenticated=False), Facts.given(NOW, contacts={"ana@lincoln.example": ANA}))
        assert isinstance(decision, Open) and decision.held is not None
        assert decision.held.reason is HeldReason.NOT_AUTHENTICATED and decision.admission is not None

    def test_automatic_mail_starts_no_conversation_and_is_not_judged(self) -> None:
        decision = decide(reading(mail(headers="Auto-Submitted: auto-replied\r\n")), Facts.given(NOW))
        assert isinstance(decision, Open) and decision.held is not None and decision.admission is None
        assert decision.held.reason is HeldReason.AUTOMATIC
        assert steps(decision)[-1] == ("entitlement", "not judged")

    def test_a_dns_failure_waits_then_holds(self) -> None:
        waiting = replace(reading(mail()), verdict=AuthVerdict(False, "dkim", None, "DNS timeout", temporary=True))
        facts = Facts.given(NOW, contacts={"ana@lincoln.example": ANA})
        with pytest.raises(TransientDNSError):
            decide(waiting, facts)
        late = replace(waiting, received_at=NOW - timedelta(days=2))
        decision = decide(late, facts)
        assert isinstance(decision, Open) and decision.held is not None
        assert decision.held.reason is HeldReason.AUTH_TEMPORARY


def _dsn(original: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example\r\nTo: herosupport@schoolmint.com\r\nSubject: Undelivered Mail\r\n"
        "Message-ID: <dsn1@mx.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
        "Final-Recipient: rfc822; ana@lincoln.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original}\r\n\r\n--b--\r\n"
    ).encode()
