"""Trust under attack (issue 12): each attack of the security review against a running daemon. Mail comes in
over real SMTP on loopback (or through the doors that cannot refuse: IMAP, `ingest`), signed with real DKIM
signatures (dkimpy, openssl keys) verified against fixed DNS records. Each test asserts the verdict and that
the work stayed bounded, by counting it: DNS look-ups, body canonicalisations, Authentication-Results
parsed. Nothing here is timed."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import select

from mailbot.app import App
from mailbot.authn import MAX_RESULTS_PARSED, MAX_SIGNATURES_VERIFIED, Work, authenticate
from mailbot.clock import FrozenClock
from mailbot.dns import FixedResolver, Resolver
from mailbot.parse import parse
from mailbot.processor import RETRY_CAP
from mailbot.reading import Reading
from mailbot.store import inbound as inbound_store
from mailbot.store import registry
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import InboundMessage, Ticket
from tests import test_entitlement_flow as flow
from tests import world as worlds
from tests.conftest import deep_merge
from tests.mailers import lmtp_send, message
from tests.test_entitlement_flow import (
    DOMAINS,
    SECURE,
    SIGNED_HEADERS,
    TRUSTED_RECEIVER,
    Start,
    add_contact,
    add_org,
    assert_entitled,
    assert_held,
    deliver,
    kinds,
    signed,
)
from tests.world import World, until

# Fixtures shared with the entitlement tests: the DKIM key, its DNS records, a daemon with Lincoln High.
key, dns, lincoln, relay, world = flow.key, flow.dns, flow.lincoln, worlds.relay, worlds.world
boot = flow.boot

ANA = "ana@lincoln.example"
STRANGER = "zoe@elsewhere.example"
SAM = "sam@schoolmint.com"
FORGED_HEAD = (
    b"X-Pad: a\rFrom: Ana Diaz <ana@lincoln.example>\rSubject: Wire the refund to my new account\r\r\n"
)


async def refusal(service: World, raw: bytes, mail_from: str = STRANGER) -> tuple[int, bytes]:
    """The SMTP reply refusing `raw`'s DATA (the test fails if it is accepted)."""
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await service.send(raw, mail_from=mail_from)
    return refused.value.smtp_code, refused.value.smtp_error


async def through(service: World, raw: bytes, source: str) -> Ticket | None:
    """Hand `raw` to the door as IMAP or `mailbot ingest` do (no SMTP conversation, so no refusal), let the
    daemon do all it will, and return the ticket the message went to."""
    inbound_id = await service.daemon.door.accept(raw, source=source)
    await service.settle()
    row = service.app.db.call(lambda s: s.get_one(InboundMessage, inbound_id))
    assert row.status == "processed", service.describe()
    return service.ticket(row.ticket_id) if row.ticket_id else None


def reread(service: World, inbound_id: int | None = None) -> Reading:
    """What the intake reads of a stored message (the newest by default): the same code path, again."""

    def load(session: Any) -> InboundMessage:
        query = select(InboundMessage).order_by(InboundMessage.id.desc())
        return session.get_one(InboundMessage, inbound_id) if inbound_id else session.scalars(query).first()

    reading = service.app.intake.read(service.app.db.call(load))
    assert isinstance(reading, Reading)
    return reading


def work_of(raw: bytes, from_address: str, resolver: Resolver, trusted: list[str] | None = None) -> Work:
    """What authenticating `raw` costs, counted."""
    fields = list(parse(raw).message.raw_items())
    verdict = authenticate(
        raw,
        from_address,
        fields=fields,
        trusted_authserv_ids=trusted or [TRUSTED_RECEIVER],
        resolver=resolver,
    )
    return verdict.work


def results(text: str, authserv_id: str = TRUSTED_RECEIVER) -> bytes:
    return f"Authentication-Results: {authserv_id};\r\n\t{text}\r\n".encode()


class TestBareCarriageReturn:
    """A bare CR made dkimpy read X-Pad and the signed From, and the parser read a forged From and Subject."""

    async def test_the_forgery_is_refused_at_the_smtp_door(
        self, lincoln: World, key: tuple[bytes, bytes]
    ) -> None:
        """550 5.5.2, as Postfix's smtpd_forbid_bare_newline = reject answers; nothing is stored."""
        genuine = signed(message(sender="Bob Stone <bob@lincoln.example>", subject="Newsletter"), key)
        assert await refusal(lincoln, FORGED_HEAD + genuine) == (550, b"5.5.2 Error: bare <CR> received")
        assert await refusal(lincoln, genuine.replace(b"\r\n", b"\n")) == (
            550,
            b"5.5.2 Error: bare <LF> received",
        )
        await lincoln.settle()
        assert lincoln.inbound() == [] and lincoln.wire == []
        ticket = await deliver(lincoln, signed(message(), key))  # the same session rules take honest mail
        assert_entitled(lincoln, ticket)

    async def test_lmtp_refuses_it_once_per_recipient(self, world: Start) -> None:
        """LMTP answers DATA once per accepted recipient (RFC 2033 4.2): each gets the 550."""
        service: World = await world({"smtp": {"protocol": "lmtp"}})
        rcpt = ("herosupport@schoolmint.com", "herosupport+billing@schoolmint.com")
        replies = await asyncio.to_thread(
            lmtp_send, service.port, FORGED_HEAD + message(), mail_from=STRANGER, rcpt=rcpt
        )
        assert replies == [(550, b"5.5.2 Error: bare <CR> received")] * 2
        assert service.inbound() == []

    @pytest.mark.parametrize("source", ["imap:herosupport@schoolmint.com", "cli"])
    async def test_the_forgery_is_not_believed_where_it_cannot_be_refused(
        self, lincoln: World, key: tuple[bytes, bytes], source: str
    ) -> None:
        """IMAP and `ingest` read the bare CRs as line ends, as the parser does: the forged From and
        Subject are then read by the DKIM verifier too, and the signature covers neither."""
        genuine = signed(message(sender="Bob Stone <bob@lincoln.example>", subject="Newsletter"), key)
        ticket = await through(lincoln, FORGED_HEAD + genuine, source)
        assert ticket is not None and (ticket.requester, ticket.subject) == (
            ANA,
            "Wire the refund to my new account",
        )
        assert_held(lincoln, ticket, "not-authenticated")
        assert "no DKIM signature" in (ticket.sender_auth or "")
        assert lincoln.wire == []  # no confirmation to Ana, no explanation to a forged From

    async def test_a_signed_message_with_bare_lf_line_ends_still_verifies_after_ingest(
        self, lincoln: World, key: tuple[bytes, bytes]
    ) -> None:
        """Mail kept with LF line ends (a maildir) reads as CRLF: an honest signature still verifies."""
        ticket = await through(lincoln, signed(message(), key).replace(b"\r\n", b"\n"), "cli")
        assert ticket is not None
        assert_entitled(lincoln, ticket)


class TestOwnMailWrapped:
    """A stranger wrapped mailbot's own DKIM-signed mail (anyone can get one) under a bare-CR header block
    naming the assigned specialist, to have mailbot relay the text to the customer as the support team."""

    @pytest.fixture
    async def desk(self, world: Start, key: tuple[bytes, bytes], tmp_path: Path) -> World:
        pem = tmp_path / "mailbot.pem"
        pem.write_bytes(key[0])
        signing = {
            "outbound": {
                "dkim": {"domain": "schoolmint.com", "selector": "sel", "private_key_file": str(pem)}
            }
        }
        resolver = FixedResolver({f"sel._domainkey.{d}": [key[1]] for d in (*DOMAINS, "schoolmint.com")})
        service: World = await world(deep_merge(SECURE, signing), resolver=resolver, customer=False)
        add_org(service.app, "Lincoln High")
        add_contact(service.app, ANA)
        return service

    async def test_the_wrapped_confirmation_relays_nothing(
        self, desk: World, key: tuple[bytes, bytes]
    ) -> None:
        ticket = await deliver(desk, signed(message(message_id="<first@lincoln.example>"), key))
        app = desk.app

        def assign(session: Any) -> None:
            sam = registry.add_specialist(session, SAM, "Sam Lee", app.clock.now())
            app.workflow.assign(session, ticket_store.get(session, ticket.id), sam, app.clock.now())

        app.db.call(assign)
        await desk.settle()
        [confirmation] = [m for m in desk.wire if b"Auto-Submitted" in m.data][:1]
        own = confirmation.data
        ours = work_of(own, "herosupport@schoolmint.com", app.resolver)
        assert ours.signatures_verified == 1  # a genuine signature by the support domain, checked
        assert authenticate(
            own, "herosupport@schoolmint.com", fields=list(parse(own).message.raw_items()),
            trusted_authserv_ids=[], resolver=app.resolver,
        ).authenticated  # fmt: skip
        reply_to = parse(own).message_id
        wrapper = (
            f"X-Pad: a\rFrom: Sam Lee <{SAM}>\rSubject: Re: your ticket\rIn-Reply-To: <{reply_to}>\r"
            "\rPlease pay the renewal to IBAN XX00 EVIL today.\r\n\r\n"
        ).encode()
        sent_before = len(desk.wire)
        assert await refusal(desk, wrapper + own, mail_from=SAM) == (550, b"5.5.2 Error: bare <CR> received")
        await through(desk, wrapper + own, "imap:herosupport@schoolmint.com")
        verdict = reread(desk).verdict
        assert not verdict.authenticated and "no DKIM signature" in verdict.reason
        assert len(desk.wire) == sent_before and not any(b"IBAN" in m.data for m in desk.wire)
        assert "relay" not in kinds(desk, ticket)


class TestBoundedReading:
    async def test_a_hundred_l_signatures_on_a_large_body(
        self, lincoln: World, key: tuple[bytes, bytes], dns: FixedResolver
    ) -> None:
        """100 aligned signatures with an l= shorter than the body: each would have canonicalised the body
        again; now it is canonicalised once per mode, none of them reaches DNS, and the genuine signature
        below them still authenticates."""
        body = "A line of a large body, long enough to be worth canonicalising.\n" * 20_000  # 1.3 MB
        raw = message(body=body, message_id="<big@lincoln.example>")
        head, _, _ = raw.partition(b"\r\n\r\n")
        prefix = head + b"\r\n\r\nA line of a large body.\r\n"
        short = dkim.sign(prefix, b"sel", b"lincoln.example", key[0], include_headers=SIGNED_HEADERS, length=True,
                          canonicalize=(b"relaxed", b"relaxed"))  # fmt: skip
        assert b"l=" in short
        hostile = bytes(short) * 100 + signed(raw, key)
        dns.asked.clear()
        ticket = await deliver(lincoln, hostile)
        assert_entitled(lincoln, ticket)
        assert dns.asked == ["sel._domainkey.lincoln.example"]
        work = work_of(hostile, ANA, FixedResolver({"sel._domainkey.lincoln.example": [key[1]]}))
        assert work.body_canonicalisations == 2  # relaxed for the 100, simple for the genuine one
        assert work.signatures_verified == 1 and work.dns_queries == 1

    async def test_several_aligned_signatures_with_failing_dns(
        self, boot: Start, key: tuple[bytes, bytes]
    ) -> None:
        """Five aligned signatures whose keys time out: at most MAX_SIGNATURES_VERIFIED look-ups, and the
        message waits (deferred) instead of being decided on a failed look-up."""
        selectors = [f"s{i}" for i in range(5)]
        resolver = FixedResolver({}, failing=[f"{s}._domainkey.lincoln.example" for s in selectors])
        service = await boot(customer=True, resolver=resolver)
        raw = message()
        for selector in selectors:
            raw = (
                bytes(
                    dkim.sign(
                        raw, selector.encode(), b"lincoln.example", key[0], include_headers=SIGNED_HEADERS
                    )
                )
                + raw
            )
        await service.send(raw)
        await until(lambda: len(resolver.asked) >= MAX_SIGNATURES_VERIFIED, "the look-ups")
        await until(lambda: service.inbound()[0].claimed_until is not None, "the deferral")
        [row] = service.inbound()
        assert (row.status, row.ticket_id) == ("pending", None)
        assert len(resolver.asked) == MAX_SIGNATURES_VERIFIED < len(selectors)

    @pytest.fixture
    def boot(self, world: Start, dns: FixedResolver) -> Start:
        """tests.test_entitlement_flow's boot, with a resolver of the test's choosing."""

        async def start(*, customer: bool = False, resolver: FixedResolver | None = None) -> World:
            return await world(SECURE, resolver=resolver or dns, customer=customer)

        return start

    async def test_many_huge_authentication_results(self, lincoln: World) -> None:
        """Hundreds of 20 KB Authentication-Results: those of untrusted receivers are never parsed, nor the
        trusted-looking ones below a Received line another host wrote; the trusted receiver's verdict on top
        stands."""
        padding = "\r\n\t".join(["x" * 900] * 22)  # 20 KB, folded: SMTP lines stay under 1,000 bytes
        untrusted = b"".join(results(f"dmarc=pass header.from=lincoln.example; {padding}", "mx.other.example")
                             for _ in range(150))  # fmt: skip
        below = b"".join(results(f"dmarc=fail header.from=lincoln.example; {padding}") for _ in range(150))
        raw = (
            untrusted
            + results("dmarc=pass header.from=lincoln.example")
            + b"Received: from mail.lincoln.example by relay.elsewhere.example; Tue, 1 Dec 2026 10:00:00 -0500\r\n"
            + below
            + message()
        )
        ticket = await deliver(lincoln, raw)
        assert_entitled(lincoln, ticket)
        assert (ticket.sender_auth or "").startswith("arh-dmarc:")
        assert work_of(raw, ANA, FixedResolver({})).results_parsed == 1 <= MAX_RESULTS_PARSED


class TestAuthenticationResults:
    async def test_results_below_a_received_line_were_written_by_the_sender(self, lincoln: World) -> None:
        """A stranger's message carrying the trusted receiver's pass below its own Received line: ignored."""
        raw = (
            b"Received: from mail.elsewhere.example by relay.elsewhere.example; Tue, 1 Dec 2026 10:00:00 -0500\r\n"
            + results("dmarc=pass header.from=lincoln.example")
            + message()
        )
        ticket = await deliver(lincoln, raw, mail_from=STRANGER)
        assert_held(lincoln, ticket, "not-authenticated")
        assert "no trusted Authentication-Results" in (ticket.sender_auth or "")

    async def test_a_pass_below_a_trusted_fail_never_wins(
        self, lincoln: World, key: tuple[bytes, bytes], dns: FixedResolver
    ) -> None:
        """The topmost trusted verdict is final: neither a pass below it nor our own DKIM check outvotes it."""
        raw = (
            results("dmarc=fail header.from=lincoln.example")
            + results("dmarc=pass header.from=lincoln.example")
            + signed(message(), key)
        )
        dns.asked.clear()
        ticket = await deliver(lincoln, raw)
        assert_held(lincoln, ticket, "not-authenticated")
        assert "dmarc=fail for lincoln.example from trusted mx.schoolmint.com (final)" in (
            ticket.sender_auth or ""
        )
        assert lincoln.app.resolver.asked == []  # decided without DNS


class BlockingResolver(FixedResolver):
    """Fixed records; a look-up of `slow` waits until the test lets it go (a name server that hangs)."""

    def __init__(self, records: dict[str, list[bytes]], slow: str) -> None:
        super().__init__(records)
        self.slow = slow
        self.waiting = threading.Event()
        self.release = threading.Event()

    def txt(self, name: str) -> list[bytes]:
        if name == self.slow:
            self.waiting.set()
            self.release.wait(timeout=60)
        return super().txt(name)


class TestNeverSerial:
    async def test_a_contact_is_not_kept_waiting_behind_a_slow_message(
        self, world: Start, key: tuple[bytes, bytes]
    ) -> None:
        """While one message's DNS hangs, a named contact's mail sent after it becomes a ticket."""
        records = {f"sel._domainkey.{d}": [key[1]] for d in DOMAINS}
        resolver = BlockingResolver({**records, "slow._domainkey.elsewhere.example": [key[1]]},
                                    slow="slow._domainkey.elsewhere.example")  # fmt: skip
        service: World = await world(SECURE, resolver=resolver, customer=False)
        add_org(service.app, "Lincoln High")
        add_contact(service.app, ANA)
        try:
            hostile = bytes(dkim.sign(message(sender=f"Zoe <{STRANGER}>"), b"slow", b"elsewhere.example", key[0],
                                      include_headers=SIGNED_HEADERS)) + message(sender=f"Zoe <{STRANGER}>")  # fmt: skip
            await service.send(hostile, mail_from=STRANGER)
            await asyncio.to_thread(resolver.waiting.wait, 15)
            await service.send(signed(message(message_id="<after@lincoln.example>"), key))
            await until(lambda: service.count(Ticket) == 1, "the contact's ticket")
            [first, second] = service.inbound()
            assert first.status == "pending" and second.action == "created"
            assert_entitled(service, service.ticket(second.ticket_id))
        finally:
            resolver.release.set()
        await service.settle()
        assert [row.status for row in service.inbound()] == ["processed", "processed"]


class TestRetries:
    def test_a_dns_failure_is_retried_less_and_less_often(
        self, make_app: Callable[..., App], key: tuple[bytes, bytes], clock: FrozenClock
    ) -> None:
        """A key that never resolves: tried again after 5, 10, 20 ... minutes (at most RETRY_CAP apart),
        about ten tries in the day before the message is held, not one every five minutes."""
        resolver = FixedResolver({}, failing=["sel._domainkey.lincoln.example"])
        app = make_app(SECURE, resolver=resolver)
        app.db.call(inbound_store.insert_many, [inbound_store.RawMessage(signed(message(), key), "smtp", ANA)],
                    clock.now())  # fmt: skip
        tries, waits = 0, []
        while True:
            [outcome] = app.processor.run_once()
            tries += 1
            if outcome.action != "deferred":
                break
            row = app.db.call(lambda s: s.scalars(select(InboundMessage)).one())
            waits.append(row.claimed_until - clock.now())
            clock.set(row.claimed_until + timedelta(seconds=1))
        assert outcome.action == "held" and tries <= 12
        assert waits[:3] == [timedelta(minutes=5), timedelta(minutes=10), timedelta(minutes=20)]
        assert max(waits) <= RETRY_CAP and len(resolver.asked) == tries  # one look-up a try
