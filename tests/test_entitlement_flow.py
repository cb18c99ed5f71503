"""Who is entitled, end to end: real SMTP in, the registry, DKIM with real signatures served by a fixed
resolver, Authentication-Results, every held reason, the explanation and its limits, DNS failures, the trial
switch. Mail goes out to a real SMTP sink standing in for the relay (tests.world)."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailbot import config as config_module
from mailbot.admission import submitted_locally, trust_warnings
from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.config import SecurityConfig
from mailbot.dns import FixedResolver
from mailbot.plans import Plan, Product
from mailbot.processor import DEFERRED_RETRY
from mailbot.store import inbound as inbound_store
from mailbot.store import registry
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import InboundMessage, Organization, Ticket
from tests.conftest import deep_merge
from tests.mailers import lmtp_send, message
from tests.world import World, relay, world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.calendar  # run again under pinned wall clocks (Makefile: test-calendar)

ROOT = Path(__file__).resolve().parent.parent
TRUSTED_RECEIVER = "mx.schoolmint.com"
DOMAINS = ("lincoln.example", "elsewhere.example", "springfield.example")
SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]
STRANGER = "zoe@elsewhere.example"
# Authentication required, as in production; DNS from the test's fixed records.
SECURE = {"security": {"require_sender_auth": True, "trusted_authserv_ids": [TRUSTED_RECEIVER]}}
Start = Callable[..., Any]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A fresh RSA key: (private key PEM, the DKIM TXT record publishing its public half)."""
    path = tmp_path_factory.mktemp("dkim") / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return path.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@pytest.fixture
def dns(key: tuple[bytes, bytes]) -> FixedResolver:
    """The test key published at sel._domainkey of every test domain."""
    return FixedResolver({f"sel._domainkey.{domain}": [key[1]] for domain in DOMAINS})


def signed(raw: bytes, key: tuple[bytes, bytes], domain: str = "lincoln.example") -> bytes:
    """`raw` with a DKIM-Signature by `domain` (dkimpy), as the sender's mail system adds it."""
    return bytes(dkim.sign(raw, b"sel", domain.encode(), key[0], include_headers=SIGNED_HEADERS)) + raw


def from_stranger(**kw: Any) -> bytes:
    return message(sender=f"Zoe Quinn <{STRANGER}>", **kw)


@pytest.fixture
def boot(world: Start, dns: FixedResolver) -> Start:  # noqa: F811  (tests.world's fixture)
    """`await boot(overrides, customer=False, db=...)`: a daemon requiring sender authentication, DNS from
    the fixed records, on an empty registry unless `customer=True` (conftest's test customer)."""

    async def start(overrides: dict[str, Any] | None = None, *, customer: bool = False, **kw: Any) -> World:
        return await world(deep_merge(SECURE, overrides or {}), resolver=dns, customer=customer, **kw)

    return start


def add_org(
    app: App, name: str, product: Product = Product.FULL, plan: Plan = Plan.SILVER, **kw: Any
) -> None:
    app.db.call(lambda s: registry.add_org(s, name, product=product, plan=plan, now=app.clock.now(), **kw))


def add_contact(app: App, address: str, org: str = "Lincoln High", school: str | None = None) -> None:
    def add(session: Session) -> None:
        found = registry.find_org(session, org, lock=True)
        registry.add_contact(session, address, org=found, school=school, now=app.clock.now())

    app.db.call(add)


def force_plan(app: App, org: str, plan: Plan) -> None:
    """A downgrade made behind the CLI's back (a database edit), so contacts exceed the plan."""
    app.db.call(
        lambda s: s.execute(update(Organization).where(Organization.name == org).values(plan=plan.value))
    )


async def deliver(service: World, raw: bytes, mail_from: str = "ana@lincoln.example") -> Ticket:
    """Send one message over SMTP, let the daemon do all it will, and return the newest ticket."""
    await service.send(raw, mail_from=mail_from)
    await service.settle()
    return service.app.db.call(lambda s: s.scalars(select(Ticket).order_by(Ticket.id.desc())).first())


def kinds(service: World, ticket: Ticket) -> list[str]:
    return service.app.db.call(lambda s: [m.kind for m in ticket_store.get(s, ticket.id).messages])


def assert_held(service: World, ticket: Ticket, reason: str) -> None:
    """Held for `reason`: listed as held, no clock, no confirmation."""
    assert (ticket.status, ticket.held_reason, ticket.entitlement) == ("held", reason, reason)
    assert ticket.clock_started_at is None and ticket.confirmation_due_at is None
    assert "confirmation" not in kinds(service, ticket)
    held = service.app.db.call(lambda s: [t.id for t in ticket_store.listing(s, "held")])
    assert ticket.id in held


def assert_entitled(service: World, ticket: Ticket, organization: str = "Lincoln High") -> None:
    """Entitled: the organization recorded, the clock started, the confirmation queued."""
    org_name = service.app.db.call(lambda s: s.get_one(Organization, ticket.organization_id).name)
    assert (ticket.status, ticket.entitlement, org_name) == ("new", "entitled", organization)
    assert ticket.clock_started_at is not None and "confirmation" in kinds(service, ticket)


@pytest.fixture
async def lincoln(boot: Start) -> World:
    """Lincoln High (Full Hero, Silver, valid all year) with its contact ana@lincoln.example."""
    service = await boot()
    add_org(service.app, "Lincoln High", valid_from=date(2026, 8, 1), valid_until=date(2027, 7, 31))
    add_contact(service.app, "ana@lincoln.example")
    return service


class TestDkim:
    async def test_signed_mail_from_a_contact_is_entitled(
        self, boot: Start, key: tuple[bytes, bytes], db_url: str
    ) -> None:
        """A DKIM signature by the From domain, key served through the resolver: a ticket and its confirmation."""
        service = await boot(db=db_url)
        add_org(service.app, "Lincoln High")
        add_contact(service.app, "ana@lincoln.example")
        ticket = await deliver(service, signed(message(message_id="<dkim@lincoln.example>"), key))
        assert_entitled(service, ticket)
        assert ticket.sender_auth and ticket.sender_auth.startswith("dkim: dkim signature by lincoln.example")
        [confirmation] = service.wire
        assert confirmation.rcpt_tos == ["ana@lincoln.example"]
        assert b"In-Reply-To: <dkim@lincoln.example>" in confirmation.data

    async def test_tampered_body_is_held_not_authenticated(
        self, lincoln: World, key: tuple[bytes, bytes]
    ) -> None:
        """The same signed message with one word of its body changed no longer verifies: held, nothing sent."""
        raw = signed(message(body="Please reset my password.\n"), key)
        assert b"reset my password" in raw
        ticket = await deliver(lincoln, raw.replace(b"reset my password", b"reset all passwords"))
        assert_held(lincoln, ticket, "not-authenticated")
        assert ticket.sender_auth and "body hash mismatch" in ticket.sender_auth
        assert ticket.organization_id is None  # a forged From says nothing about who wrote
        assert lincoln.wire == [] and kinds(lincoln, ticket) == ["customer"]

    async def test_signature_of_another_domain_does_not_count(
        self, lincoln: World, key: tuple[bytes, bytes]
    ) -> None:
        """A valid signature by elsewhere.example on mail From ana@lincoln.example: not aligned, held."""
        ticket = await deliver(lincoln, signed(message(), key, domain="elsewhere.example"))
        assert_held(lincoln, ticket, "not-authenticated")
        assert "not aligned" in (ticket.sender_auth or "")

    async def test_unsigned_mail_from_a_contact_is_held(self, lincoln: World) -> None:
        """Not authenticated: held, and no explanation either (the From may be forged: no backscatter)."""
        ticket = await deliver(lincoln, message())
        assert_held(lincoln, ticket, "not-authenticated")
        assert lincoln.wire == [] and ticket.auto_reply_refused is None


class TestAuthenticationResults:
    @staticmethod
    def with_results(authserv_id: str, result: str) -> bytes:
        return f"Authentication-Results: {authserv_id}; {result}\r\n".encode() + message()

    async def test_trusted_dmarc_pass(self, lincoln: World) -> None:
        """The trusted receiver's dmarc=pass for the From domain authenticates an unsigned message."""
        raw = self.with_results(TRUSTED_RECEIVER, "dmarc=pass header.from=lincoln.example")
        ticket = await deliver(lincoln, raw)
        assert_entitled(lincoln, ticket)
        assert ticket.sender_auth and ticket.sender_auth.startswith("arh-dmarc:")

    async def test_untrusted_receiver_ignored(self, lincoln: World) -> None:
        """The same header written by anyone else (here the sender's own server) counts for nothing."""
        ticket = await deliver(
            lincoln, self.with_results("mx.lincoln.example", "dmarc=pass header.from=lincoln.example")
        )
        assert_held(lincoln, ticket, "not-authenticated")

    async def test_forged_result_for_another_domain(self, lincoln: World) -> None:
        """A trusted id vouching for another domain (dkim=pass header.d=elsewhere.example) is not a pass for us."""
        raw = self.with_results(
            TRUSTED_RECEIVER, "dkim=pass header.d=elsewhere.example; dmarc=fail header.from=lincoln.example"
        )
        ticket = await deliver(lincoln, raw)
        assert_held(lincoln, ticket, "not-authenticated")


class TestHeldReasons:
    """Every held reason, from real mail through the listener."""

    async def test_unknown_sender(self, lincoln: World, key: tuple[bytes, bytes]) -> None:
        ticket = await deliver(lincoln, signed(from_stranger(), key, "elsewhere.example"), STRANGER)
        assert_held(lincoln, ticket, "unknown-sender")
        assert ticket.organization_id is None

    async def test_plan_expired(self, boot: Start, key: tuple[bytes, bytes], db_url: str) -> None:
        service = await boot(db=db_url)
        add_org(service.app, "Lincoln High", valid_until=date(2026, 11, 30))  # the clock says 2026-12-01
        add_contact(service.app, "ana@lincoln.example")
        ticket = await deliver(service, signed(message(), key))
        assert_held(service, ticket, "plan-expired")
        assert ticket.organization_id is not None  # an authenticated contact: the team sees whose plan lapsed

    async def test_plan_not_started(self, lincoln: World, key: tuple[bytes, bytes]) -> None:
        lincoln.app.db.call(lambda s: s.execute(update(Organization).values(valid_from=date(2026, 12, 2))))
        ticket = await deliver(lincoln, signed(message(), key))
        assert_held(lincoln, ticket, "plan-not-started")

    async def test_validity_judged_in_the_business_time_zone(
        self, lincoln: World, key: tuple[bytes, bytes], clock: FrozenClock
    ) -> None:
        """A plan valid until 2026-12-01 still holds at 22:00 Eastern that day (already 12-02 in UTC)."""
        lincoln.app.db.call(lambda s: s.execute(update(Organization).values(valid_until=date(2026, 12, 1))))
        clock.set(datetime(2026, 12, 2, 3, 0, tzinfo=UTC))  # Tue 22:00 EST
        assert_entitled(lincoln, await deliver(lincoln, signed(message(), key)))
        clock.set(datetime(2026, 12, 2, 5, 0, tzinfo=UTC))  # Wed 00:00 EST
        assert_held(lincoln, await deliver(lincoln, signed(message(), key)), "plan-expired")

    async def test_over_the_limit_after_a_forced_downgrade(
        self, lincoln: World, key: tuple[bytes, bytes]
    ) -> None:
        """Gold's 4 contacts, then Silver (2) forced in the database: the third contact is held, the first not."""
        force_plan(lincoln.app, "Lincoln High", Plan.GOLD)
        for name in ("ben", "cy", "dee"):
            add_contact(lincoln.app, f"{name}@lincoln.example")
        force_plan(lincoln.app, "Lincoln High", Plan.SILVER)
        third = await deliver(
            lincoln, signed(message(sender="Cy <cy@lincoln.example>"), key), "cy@lincoln.example"
        )
        assert_held(lincoln, third, "over-plan-limit")
        assert "contact number 3" in (third.held_detail or "")
        assert_entitled(lincoln, await deliver(lincoln, signed(message(), key)))

    async def test_organization_suspended(self, lincoln: World, key: tuple[bytes, bytes]) -> None:
        lincoln.app.db.call(lambda s: s.execute(update(Organization).values(suspended=True)))
        ticket = await deliver(lincoln, signed(message(), key))
        assert_held(lincoln, ticket, "organization-suspended")

    async def test_school_contact_not_allowed(self, boot: Start, key: tuple[bytes, bytes]) -> None:
        """A school contact of a district moved from District Gold to District Silver in the database."""
        service = await boot()
        add_org(service.app, "Springfield USD", Product.DISTRICT, Plan.DISTRICT_GOLD)
        service.app.db.call(
            lambda s: registry.add_school(s, registry.find_org(s, "Springfield USD"), "Adams High")
        )
        add_contact(service.app, "pat@springfield.example", "Springfield USD", school="Adams High")
        raw = signed(message(sender="Pat <pat@springfield.example>"), key, "springfield.example")
        assert_entitled(service, await deliver(service, raw, "pat@springfield.example"), "Springfield USD")
        force_plan(service.app, "Springfield USD", Plan.DISTRICT_SILVER)
        raw = signed(message(sender="Pat <pat@springfield.example>"), key, "springfield.example")
        ticket = await deliver(service, raw, "pat@springfield.example")
        assert_held(service, ticket, "school-contact-not-allowed")

    async def test_release_puts_a_held_ticket_into_the_normal_flow(
        self, lincoln: World, key: tuple[bytes, bytes]
    ) -> None:
        ticket = await deliver(lincoln, signed(from_stranger(), key, "elsewhere.example"), STRANGER)
        workflow = lincoln.app.workflow
        lincoln.app.db.call(
            lambda s: workflow.release(s, ticket_store.get(s, ticket.id), lincoln.app.clock.now())
        )
        await lincoln.settle()
        released = lincoln.ticket(ticket.id)
        assert (released.status, released.held_reason, released.entitlement) == (
            "new",
            None,
            "unknown-sender",
        )
        assert (
            released.clock_started_at == lincoln.app.clock.now() and released.introduction_due_at is not None
        )
        assert [m.rcpt_tos for m in lincoln.wire] == [
            [STRANGER],
            [STRANGER],
        ]  # the explanation, then the confirmation
        assert b"under review" in lincoln.wire[1].data


class TestExplanation:
    async def test_sent_once_to_an_authenticated_non_contact(
        self, lincoln: World, key: tuple[bytes, bytes]
    ) -> None:
        """One polite reply saying how to get support; it names no contact and no organization."""
        raw = signed(from_stranger(message_id="<q@elsewhere.example>"), key, "elsewhere.example")
        ticket = await deliver(lincoln, raw, STRANGER)
        assert kinds(lincoln, ticket) == ["customer", "explanation"]
        [sent] = lincoln.wire
        assert sent.rcpt_tos == [STRANGER]
        mail = message_from_bytes(sent.data, policy=policy.default)
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert mail["In-Reply-To"] == "<q@elsewhere.example>" and mail["Auto-Submitted"] == "auto-replied"
        assert "named support contacts" in text and f"[Ticket #{ticket.id}]" in text
        assert "ana" not in sent.data.decode().lower() and "Lincoln" not in sent.data.decode()

    async def test_not_sent_to_an_unauthenticated_sender(self, lincoln: World) -> None:
        ticket = await deliver(lincoln, from_stranger(), STRANGER)
        assert_held(lincoln, ticket, "not-authenticated")
        assert lincoln.wire == []

    async def test_not_sent_to_automatic_mail(self, lincoln: World, key: tuple[bytes, bytes]) -> None:
        """An authenticated out-of-office reply from a stranger gets nothing back."""
        raw = signed(from_stranger(headers={"Auto-Submitted": "auto-replied"}), key, "elsewhere.example")
        ticket = await deliver(lincoln, raw, STRANGER)
        assert ticket.status == "held" and lincoln.wire == []
        assert kinds(lincoln, ticket) == ["customer"]

    async def test_not_sent_when_the_envelope_disagrees(
        self, lincoln: World, key: tuple[bytes, bytes]
    ) -> None:
        """From a stranger's domain, envelope from another: nobody to trust with a reply."""
        ticket = await deliver(
            lincoln, signed(from_stranger(), key, "elsewhere.example"), "bulk@mailer.example"
        )
        assert_held(lincoln, ticket, "unknown-sender")
        assert lincoln.wire == []

    async def test_at_most_n_a_day_to_one_address(
        self, boot: Start, key: tuple[bytes, bytes], clock: FrozenClock
    ) -> None:
        """With explanations_per_day = 2, the third message in 24 hours gets none; a day later one goes again."""
        service = await boot({"security": {"explanations_per_day": 2}})
        for _ in range(3):
            await deliver(service, signed(from_stranger(), key, "elsewhere.example"), STRANGER)
        assert len(service.wire) == 2
        third = service.app.db.call(lambda s: s.scalars(select(Ticket).order_by(Ticket.id.desc())).first())
        assert "2 explanations already went to zoe@elsewhere.example" in (third.auto_reply_refused or "")
        clock.advance(timedelta(hours=24, minutes=1))
        await deliver(service, signed(from_stranger(), key, "elsewhere.example"), STRANGER)
        assert len(service.wire) == 3 and all(m.rcpt_tos == [STRANGER] for m in service.wire)


class TestTemporaryDnsFailure:
    """A DNS failure decides nothing: the message waits and is tried again, and is held only after a day."""

    def store(self, app: App, raw: bytes) -> int:
        [inbound_id] = app.db.call(
            inbound_store.insert_many,
            [inbound_store.RawMessage(raw, "smtp", "ana@lincoln.example")],
            app.clock.now(),
        )
        return int(inbound_id)

    @pytest.fixture
    def app(self, make_app: Callable[..., App], key: tuple[bytes, bytes]) -> App:
        failing = FixedResolver({}, failing=["sel._domainkey.lincoln.example"])
        return make_app(SECURE, resolver=failing)  # with the test customer, ana@lincoln.example

    def test_deferred_then_retried(
        self, app: App, key: tuple[bytes, bytes], dns: FixedResolver, clock: FrozenClock
    ) -> None:
        inbound_id = self.store(app, signed(message(), key))
        [outcome] = app.processor.run_once()
        row = app.db.call(lambda s: s.get_one(InboundMessage, inbound_id))
        assert outcome.action == "deferred" and "DNS" in (outcome.detail or "")
        assert (row.status, row.ticket_id, row.claimed_until) == ("pending", None, clock.now() + DEFERRED_RETRY)
        assert app.db.call(lambda s: ticket_store.listing(s)) == []
        assert app.processor.run_once() == []  # leased: not tried again at once
        app.gate.resolver = dns  # DNS is back
        clock.advance(DEFERRED_RETRY + timedelta(seconds=1))
        [outcome] = app.processor.run_once()
        assert outcome.action == "created"
        assert app.db.call(lambda s: s.get_one(Ticket, outcome.ticket_id).entitlement) == "entitled"

    def test_held_after_a_day_of_failures(
        self, app: App, key: tuple[bytes, bytes], clock: FrozenClock
    ) -> None:
        self.store(app, signed(message(), key))
        assert [o.action for o in app.processor.run_once()] == ["deferred"]
        clock.advance(timedelta(days=1, minutes=1))
        [outcome] = app.processor.run_once()
        ticket = app.db.call(lambda s: s.get_one(Ticket, outcome.ticket_id))
        assert (outcome.action, ticket.held_reason) == ("held", "auth-temporarily-unavailable")


class TestTrialConfiguration:
    """The shipped config.toml trusts local submission for the quick start; production defaults trust nothing."""

    def test_shipped_config_and_production_defaults(self) -> None:
        shipped = config_module.load(ROOT / "config.toml").security
        assert (shipped.require_sender_auth, shipped.trust_local_submission) == (True, True)
        default = SecurityConfig()
        assert (default.require_sender_auth, default.trust_local_submission) == (True, False)

    def test_start_warnings(self) -> None:
        """Each way of believing senders unchecked is said loudly at start; the default says nothing."""
        assert trust_warnings(SecurityConfig()) == []
        [trial] = trust_warnings(SecurityConfig(trust_local_submission=True))
        assert "TRIAL MODE" in trial and "loopback" in trial
        [open_] = trust_warnings(SecurityConfig(require_sender_auth=False))
        assert "any From address is believed" in open_

    @pytest.mark.parametrize(
        ("source", "peer", "local"),
        [
            ("smtp", "127.0.0.1", True), ("smtp", "::1", True), ("smtp", "::ffff:127.0.0.1", True),
            ("smtp", "192.0.2.7", False), ("smtp", None, False), ("smtp", "junk", False),
            ("lmtp", "127.0.0.1", False), ("cli", None, False),
        ],
    )  # fmt: skip
    def test_what_counts_as_local_submission(self, source: str, peer: str | None, local: bool) -> None:
        """Only SMTP from a loopback address: LMTP is how a local MTA delivers mail from anywhere."""
        assert submitted_locally(InboundMessage(source=source, peer=peer)) is local

    async def test_quick_start_flow(self, boot: Start) -> None:
        """Register a contact, send unsigned mail from 127.0.0.1: a ticket and its confirmation."""
        service = await boot({"security": {"trust_local_submission": True}})
        add_org(service.app, "Lincoln High")
        add_contact(service.app, "ana@lincoln.example")
        ticket = await deliver(service, message())
        assert_entitled(service, ticket)
        assert (
            ticket.sender_auth
            == "local-submission: trust_local_submission: submitted over SMTP from 127.0.0.1"
        )
        assert [m.rcpt_tos for m in service.wire] == [["ana@lincoln.example"]]

    async def test_lmtp_from_loopback_is_not_trusted(self, boot: Start) -> None:
        trial = {"security": {"trust_local_submission": True}, "smtp": {"protocol": "lmtp"}}
        service = await boot(trial, customer=True)
        await asyncio.to_thread(
            lmtp_send,
            service.port,
            message(),
            mail_from="ana@lincoln.example",
            rcpt=("herosupport@schoolmint.com",),
        )
        await service.settle()
        ticket = service.app.db.call(lambda s: s.scalars(select(Ticket)).one())
        assert_held(service, ticket, "not-authenticated")
