"""Conversations end to end: replies as real mail clients write them, over SMTP into a running mailbot, and
the mail it writes read back from the maildir exactly as a customer's client would read it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.errors import ConfigError
from mailbot.parse import parse
from mailbot.store import registry, settings
from mailbot.store import tickets as ticket_store
from mailbot.store.schema import InboundMessage, Setting, Ticket
from tests.conftest import run_cli
from tests.mailers import message, smtp_send
from tests.world import Running

pytestmark = pytest.mark.calendar  # run again under pinned wall clocks (Makefile: test-calendar)

SUPPORT = "herosupport@schoolmint.com"
ANA = "ana@lincoln.example"
ANA_FROM = f"Ana Diaz <{ANA}>"
BO = "bo@lincoln.example"  # a named contact of Lincoln High, whom Ana brings in
SAM = "sam@schoolmint.com"
MALLORY = "Mallory <mallory@evil.example>"
TRUSTED_MX = "mx.schoolmint.com"


def body_text(mail: EmailMessage) -> str:
    part = mail.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def quoted(mail: EmailMessage) -> str:
    return "\n".join(f"> {line}" for line in body_text(mail).splitlines())


def readable(mail: EmailMessage) -> str:
    """All a recipient can read of a message: its headers and its decoded text parts (plain and HTML)."""
    headers = "\n".join(f"{name}: {value}" for name, value in mail.items())
    parts = [str(part.get_content()) for part in mail.walk() if part.get_content_maintype() == "text"]
    return "\n".join([headers, *parts])


def author(mail: EmailMessage) -> tuple[str, str]:
    [address] = mail["From"].addresses
    return address.display_name, address.addr_spec


def reply_address(mail: EmailMessage) -> str:
    """Where a mail client sends a reply: the Reply-To (RFC 5322 section 3.6.2), else the From."""
    header = mail["Reply-To"] or mail["From"]
    return str(header.addresses[0].addr_spec)


def subject_of_reply(mail: EmailMessage, prefix: str = "Re: ") -> str:
    subject = str(mail["Subject"])
    return subject if subject.lower().startswith(prefix.lower()) else prefix + subject


def gmail_reply(
    mail: EmailMessage, text: str, *, sender: str = ANA_FROM, message_id: str | None = None
) -> bytes:
    """Gmail: In-Reply-To and References, the history quoted under an "On ... wrote:" line."""
    references = [*str(mail.get("References", "")).split(), str(mail["Message-ID"])]
    return message(
        sender=sender,
        to=reply_address(mail),
        subject=subject_of_reply(mail),
        body=f"{text}\n\nOn Tue, Dec 1, 2026 at 10:05 AM {mail['From']} wrote:\n{quoted(mail)}\n",
        message_id=message_id,
        headers={"In-Reply-To": str(mail["Message-ID"]), "References": " ".join(references)},
    )


def outlook_reply(mail: EmailMessage, text: str, *, message_id: str | None = None) -> bytes:
    """Outlook: References only (no In-Reply-To), "RE:", the history under a From/Sent/To/Subject block."""
    references = [*str(mail.get("References", "")).split(), str(mail["Message-ID"])]
    history = (
        "________________________________\n"
        f"From: {mail['From']}\nSent: Tuesday, December 1, 2026 10:05 AM\nTo: {ANA_FROM}\n"
        f"Subject: {mail['Subject']}\n\n{body_text(mail)}"
    )
    return message(
        sender=ANA_FROM,
        to=reply_address(mail),
        subject=subject_of_reply(mail, "RE: "),
        body=f"{text}\n\n{history}\n",
        message_id=message_id,
        headers={"References": " ".join(references), "Thread-Index": "AQHbN0x2Zm9vYmFy"},
    )


class Desk:
    """A running mailbot with its customer Ana (and her colleagues) and specialist Sam Lee."""

    def __init__(self, service: Running, sent: Path, clock: FrozenClock) -> None:
        self.service = service
        self.app = service.app
        self.sent = sent / "new"
        self.clock = clock

    async def send(self, raw: bytes, *, mail_from: str = ANA, to: str = SUPPORT) -> None:
        """Deliver over SMTP and wait until mailbot has processed it and sent what it owes."""
        await asyncio.to_thread(smtp_send, self.service.port, raw, mail_from=mail_from, rcpt=(to,))
        await self.settle()

    async def settle(self) -> None:
        await self.service.settle()

    def mails(self, to: str | None = None) -> list[EmailMessage]:
        """What went out, oldest first (maildir names start with the delivery time in ns)."""
        files = sorted(self.sent.glob("*"), key=lambda p: p.name)
        found = [message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]
        return [m for m in found if to is None or any(a.addr_spec == to for a in m["To"].addresses)]

    def raw_mails(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.sent.glob("*"), key=lambda p: p.name)]

    def ticket(self, ticket_id: int) -> Ticket:
        found = self.app.db.call(ticket_store.get, ticket_id)
        assert found is not None
        return found

    def tickets(self) -> list[Ticket]:
        return self.app.db.call(lambda s: list(s.scalars(select(Ticket).order_by(Ticket.id))))

    def how(self, raw: bytes) -> str | None:
        """How the matcher reads a delivered message now (the real rules on the stored bytes)."""

        def find(session: Any) -> str | None:
            key = parse(raw).message_id
            row = session.scalars(select(InboundMessage).where(InboundMessage.message_id == key)).one()
            found = self.app.followups.find(session, row, parse(row.raw))
            return None if found is None else f"{found.how} {found.ticket_id}"

        return self.app.db.call(find)

    async def open_ticket(self, *, cc: str | None = None) -> EmailMessage:
        """Ana writes in (Cc'ing a colleague if asked); returns her confirmation as her client got it."""
        headers = {"Cc": cc} if cc else None
        await self.send(message(message_id="<first@lincoln.example>", headers=headers))
        [confirmation] = self.mails(ANA)
        return confirmation

    async def assign_sam(self, ticket_id: int = 1) -> EmailMessage:
        self.app.sla.claim(ticket_id, SAM)
        await self.settle()
        return next(m for m in reversed(self.mails(ANA)) if "I am Sam Lee" in body_text(m))

    async def resolve(self, ticket_id: int = 1, note: str = "We reset your password.") -> EmailMessage:
        self.app.db.call(
            lambda s: self.app.workflow.resolve(s, ticket_store.get(s, ticket_id), self.clock.now(), note)
        )
        await self.settle()
        return self.mails(ANA)[-1]


def register_team(app: App, clock: FrozenClock) -> None:
    def setup(session: Any) -> None:
        org = registry.find_org(session, "Lincoln High")
        registry.add_contact(session, BO, org=org, name="Bo Chen", now=clock.now())
        registry.add_specialist(session, SAM, "Sam Lee", clock.now())

    app.db.call(setup)


@pytest.fixture
def desk(running: Callable[..., Any], tmp_path: Path, clock: FrozenClock) -> Callable[..., Any]:
    async def start(overrides: dict[str, Any] | None = None, *, db: str | None = None) -> Desk:
        service = await running(overrides, db=db)
        register_team(service.app, clock)
        return Desk(service, tmp_path / "sent", clock)

    return start


class TestOutgoingIdentity:
    async def test_every_message_carries_token_reference_and_thread(self, desk: Callable[..., Any]) -> None:
        """Confirmation, introduction, notification, relay and resolution: a Reply-To token that verifies for
        the ticket, "[Ticket #1]" in the subject, an unguessable Message-ID, and the thread continued."""
        d = await desk()
        confirmation = await d.open_ticket()
        introduction = await d.assign_sam()
        await d.send(gmail_reply(introduction, "It also fails on the iPad."))
        [_assignment, notification] = d.mails(SAM)
        await d.send(
            gmail_reply(notification, "Try again now please.", sender=f"Sam Lee <{SAM}>"), mail_from=SAM
        )
        await d.resolve()
        mails = d.mails()
        assert [m["To"].addresses[0].addr_spec for m in mails] == [ANA, ANA, SAM, SAM, ANA, ANA]
        ids = set()
        for mail in mails:
            claim = d.app.reply_tokens.read(reply_address(mail))
            assert claim is not None and claim.valid and claim.ticket_id == 1
            assert str(mail["Subject"]).endswith("[Ticket #1]")
            local, _, domain = str(mail["Message-ID"]).strip("<>").partition("@")
            assert domain == "schoolmint.com" and len(local) >= 24  # 144 random bits, url-safe base64
            ids.add(str(mail["Message-ID"]))
        assert len(ids) == len(mails)
        customer = [m for m in mails if m["To"].addresses[0].addr_spec == ANA]
        for mail in customer:  # the customer's client sees one conversation, rooted at her first message
            assert str(mail["References"]).split()[0] == "<first@lincoln.example>"
        assert str(confirmation["In-Reply-To"]) == "<first@lincoln.example>"

    async def test_secret_is_generated_once_and_shared(self, make_app: Callable[..., App]) -> None:
        """No secret configured: the first instance makes one and keeps it; a second instance reads it."""
        first, second = make_app(), make_app()
        assert first.secret == second.secret and len(first.secret) == 64
        assert first.reply_tokens.address(9) == second.reply_tokens.address(9)
        assert first.db.call(lambda s: s.scalar(select(func.count()).select_from(Setting))) == 1

    async def test_configured_secret_wins(self, make_app: Callable[..., App], tmp_path: Path) -> None:
        path = tmp_path / "secret"
        path.write_text("a configured secret of enough length\n")
        app = make_app({"security": {"secret_file": str(path)}})
        assert app.secret == b"a configured secret of enough length"
        assert app.db.call(lambda s: s.get(Setting, "secret")) is None

    async def test_short_secret_refused(self, make_app: Callable[..., App], tmp_path: Path) -> None:
        path = tmp_path / "secret"
        path.write_text("short")
        with pytest.raises(ConfigError, match="at least 16"):
            _ = make_app({"security": {"secret_file": str(path)}}).secret

    def test_racing_instances_agree(
        self, make_app: Callable[..., App], db_url: str, clock: FrozenClock
    ) -> None:
        """Another instance stores its secret between our look-up and our insert: we read and use theirs."""
        app = make_app(db=db_url)

        def race(session: Any) -> str:
            def make() -> str:
                session.execute(insert(Setting).values(key="secret", value="theirs", created_at=clock.now()))
                return "ours"

            return settings.get_or_create(session, "secret", make, clock.now())

        assert app.db.call(race) == "theirs"
        assert app.secret == b"theirs"


class TestRepliesThread:
    async def test_gmail_reply_to_the_confirmation(self, desk: Callable[..., Any], db_url: str) -> None:
        """Both headers, to the Reply-To: the same ticket, new text shown, history kept apart, no confirmation."""
        d = await desk(db=db_url)
        confirmation = await d.open_ticket()
        raw = gmail_reply(confirmation, "It also fails on the iPad.", message_id="<gmail-1@lincoln.example>")
        await d.send(raw)
        assert d.how(raw) == "message-id 1"
        assert len(d.tickets()) == 1
        last = d.ticket(1).messages[-1]
        assert (last.direction, last.kind, last.message_id) == ("in", "customer", "<gmail-1@lincoln.example>")
        assert last.text == "It also fails on the iPad."
        assert "wrote:" in last.quoted and "> Thank you for contacting Hero Support" in last.quoted
        stored = d.app.db.call(lambda s: s.get_one(InboundMessage, last.inbound_id))
        assert stored.raw.endswith(raw) and stored.action == "threaded"  # the raw message is kept
        assert len(d.mails(ANA)) == 1  # no second confirmation

    async def test_outlook_reply_to_the_introduction(self, desk: Callable[..., Any]) -> None:
        """References only, no In-Reply-To: the reply still lands on the ticket, and Sam is told."""
        d = await desk()
        await d.open_ticket()
        introduction = await d.assign_sam()
        raw = outlook_reply(introduction, "Thanks Sam, here is a screenshot description.")
        await d.send(raw)
        assert d.how(raw) == "message-id 1"
        assert len(d.tickets()) == 1
        assert d.ticket(1).messages[-2].text == "Thanks Sam, here is a screenshot description."
        [_assignment, notification] = d.mails(SAM)
        assert "Thanks Sam, here is a screenshot description." in body_text(notification)
        assert "From: Hero Support" not in body_text(notification)  # the quoted history stays out
        assert str(notification["Subject"]) == "Re: Login broken [Ticket #1]"

    async def test_client_that_drops_thread_headers_keeps_subject(self, desk: Callable[..., Any]) -> None:
        """No In-Reply-To, no References, written to the plain support address: the subject reference is
        enough for a participant."""
        d = await desk()
        await d.open_ticket()
        raw = message(subject="Re: Login broken [Ticket #1]", body="One more detail: it says error 42.\n")
        await d.send(raw)
        assert d.how(raw) == "subject 1"
        assert len(d.tickets()) == 1 and d.ticket(1).messages[-1].text == "One more detail: it says error 42."

    async def test_reply_address_alone_is_enough(self, desk: Callable[..., Any]) -> None:
        """A client that drops the headers and rewrites the subject but writes to the Reply-To: the token."""
        d = await desk()
        confirmation = await d.open_ticket()
        raw = message(to=reply_address(confirmation), subject="another detail", body="It is error 42.\n")
        await d.send(raw)
        assert d.how(raw) == "token 1"
        assert len(d.tickets()) == 1

    async def test_forwarded_inline(self, desk: Callable[..., Any]) -> None:
        """Ana forwards the confirmation with a note ("Fwd:", the original inline, no thread headers)."""
        d = await desk()
        confirmation = await d.open_ticket()
        forwarded = (
            "Adding my colleague's finding: the error is 42.\n\n"
            "---------- Forwarded message ---------\n"
            f"From: {confirmation['From']}\nDate: Tue, Dec 1, 2026 at 10:00 AM\n"
            f"Subject: {confirmation['Subject']}\nTo: {ANA_FROM}\n\n{body_text(confirmation)}"
        )
        raw = message(subject=f"Fwd: {confirmation['Subject']}", body=forwarded)
        await d.send(raw)
        assert d.how(raw) == "subject 1"
        assert len(d.tickets()) == 1
        assert "the error is 42" in d.ticket(1).messages[-1].text

    async def test_forwarded_as_attachment(self, desk: Callable[..., Any]) -> None:
        """Forwarded as an attached message: the attachment's own Message-ID is not ours to trust; the
        forward's subject reference and its sender decide."""
        d = await desk()
        confirmation = await d.open_ticket()
        forward = EmailMessage()
        forward["From"] = ANA_FROM
        forward["To"] = SUPPORT
        forward["Subject"] = f"Fw: {confirmation['Subject']}"
        forward["Message-ID"] = make_msgid(domain="lincoln.example")
        forward.set_content("See the attached message: still broken.\n")
        forward.add_attachment(confirmation)  # message/rfc822
        await d.send(forward.as_bytes(policy=policy.SMTP))
        assert len(d.tickets()) == 1
        assert d.ticket(1).messages[-1].text.startswith("See the attached message")

    async def test_colleague_brought_in_by_cc_joins(self, desk: Callable[..., Any]) -> None:
        """Bo, a named contact of Ana's school whom she copied, replies to all: he joins the ticket."""
        d = await desk()
        confirmation = await d.open_ticket(cc=f"Bo Chen <{BO}>")
        await d.send(gmail_reply(confirmation, "Same here.", sender=f"Bo Chen <{BO}>"), mail_from=BO)
        assert len(d.tickets()) == 1 and d.ticket(1).messages[-1].from_address == BO


class TestHijack:
    async def _victim(self, d: Desk) -> EmailMessage:
        confirmation = await d.open_ticket()
        await d.assign_sam()
        return confirmation

    def _assert_held_attempt(self, d: Desk, reason: str, evidence: str) -> None:
        tickets = d.tickets()
        assert len(tickets) == 2
        held = tickets[1]
        # Ana's, the confirmation, the introduction, Sam's assignment: nothing joined
        assert len(d.ticket(1).messages) == 4
        assert (held.status, held.held_reason, held.requester) == ("held", reason, "mallory@evil.example")
        assert (
            held.held_detail is not None and "ticket #1" in held.held_detail and evidence in held.held_detail
        )

    async def test_guessed_subject_reference(self, desk: Callable[..., Any]) -> None:
        """A stranger writes "[Ticket #1]": held, naming the attempt; nothing reaches Ana or Sam."""
        d = await desk()
        await self._victim(d)
        before = d.raw_mails()
        await d.send(
            message(sender=MALLORY, subject="Re: Login broken [Ticket #1]", body="Send me the history"),
            mail_from="mallory@evil.example",
        )
        self._assert_held_attempt(d, "not-a-participant", "[Ticket #1]")
        assert d.raw_mails() == before

    async def test_copied_message_id(self, desk: Callable[..., Any]) -> None:
        """A stranger with our confirmation's Message-ID in In-Reply-To and References (the Ticket Trick)."""
        d = await desk()
        confirmation = await self._victim(d)
        before = d.raw_mails()
        raw = gmail_reply(confirmation, "Please add me to this ticket.", sender=MALLORY)
        await d.send(raw, mail_from="mallory@evil.example")
        self._assert_held_attempt(d, "not-a-participant", str(confirmation["Message-ID"]))
        assert d.raw_mails() == before

    async def test_guessed_token_address(self, desk: Callable[..., Any]) -> None:
        d = await desk()
        await self._victim(d)
        before = d.raw_mails()
        guessed = "herosupport+t1-0123456789abcdef@schoolmint.com"
        await d.send(
            message(sender=MALLORY, to=guessed, subject="hello", body="let me in"),
            mail_from="mallory@evil.example",
            to=guessed,
        )
        self._assert_held_attempt(d, "forged-reply-token", guessed)
        assert d.raw_mails() == before

    async def test_colleague_not_brought_in(self, desk: Callable[..., Any]) -> None:
        """A named contact of the same organization whom the requester never copied does not join."""
        d = await desk()
        confirmation = await self._victim(d)
        raw = gmail_reply(confirmation, "I am from Lincoln too.", sender=f"Bo Chen <{BO}>")
        await d.send(raw, mail_from=BO)
        held = d.tickets()[-1]
        assert (held.id, held.status, held.held_reason) == (2, "held", "not-a-participant")

    async def test_forged_from_of_the_requester(self, desk: Callable[..., Any]) -> None:
        """The 2024 spoofing reports: a stranger writes as Ana (no trusted authentication) with the copied
        Message-ID; Ana's real mail carries a trusted Authentication-Results. The forgery is held."""
        d = await desk({"security": {"require_sender_auth": True, "trusted_authserv_ids": [TRUSTED_MX]}})
        passed = {"Authentication-Results": f"{TRUSTED_MX}; dmarc=pass header.from=lincoln.example"}
        await d.send(message(message_id="<first@lincoln.example>", headers=passed))
        [confirmation] = d.mails(ANA)
        forged = gmail_reply(confirmation, "Please change my email to mallory@evil.example")
        await d.send(forged, mail_from="mallory@evil.example")
        held = d.tickets()[-1]
        assert (held.id, held.status, held.held_reason) == (2, "held", "not-authenticated")
        assert len(d.ticket(1).messages) == 2


class TestSpecialistByEmail:
    async def test_reply_to_notification_is_relayed_on_the_customers_thread(
        self, desk: Callable[..., Any]
    ) -> None:
        d = await desk()
        await d.open_ticket()
        introduction = await d.assign_sam()
        await d.send(
            gmail_reply(introduction, "It also fails on the iPad.", message_id="<ana-2@lincoln.example>")
        )
        [_assignment, notification] = d.mails(SAM)
        d.app.db.call(lambda s: registry.add_specialist(s, "kim@schoolmint.com", "Kim Park", d.clock.now()))
        answer = (
            "Please clear the app cache and try again. If it persists, write to me at sam@schoolmint.com;\n"
            "my colleague Kim <kim@schoolmint.com> knows the iPad app too.\n\n"
            "-- \nSam Lee | Product Support | SAM@schoolmint.com | +1 555 0100"
        )
        sams = gmail_reply(
            notification, answer, sender=f"Sam Lee <{SAM}>", message_id="<sam-1@mail.schoolmint.com>"
        )
        await d.send(sams, mail_from=SAM)
        relay = d.mails(ANA)[-1]
        assert author(relay) == ("Sam Lee (Hero Support)", SUPPORT)
        assert [a.addr_spec for a in relay["To"].addresses] == [ANA] and relay["Cc"] is None
        assert str(relay["In-Reply-To"]) == "<ana-2@lincoln.example>"
        references = str(relay["References"]).split()
        assert references[0] == "<first@lincoln.example>" and str(introduction["Message-ID"]) in references
        assert (
            str(notification["Message-ID"]) not in references
            and "<sam-1@mail.schoolmint.com>" not in references
        )
        text = body_text(relay)
        assert "Please clear the app cache" in text and "write to me at herosupport@schoolmint.com;" in text
        assert "Kim <herosupport@schoolmint.com> knows" in text
        seen = readable(relay).lower()  # every header and every decoded text part, as the customer sees them
        assert "sam@" not in seen and "mail.schoolmint.com" not in seen and "kim@" not in seen
        assert "It also fails on the iPad" not in text  # Sam's quoted history stays out
        kinds = [(m.direction, m.kind) for m in d.ticket(1).messages]
        assert kinds[-2:] == [("in", "specialist"), ("out", "relay")]
        # Ana answers the relay: it threads, and Sam is told again on his own thread.
        await d.send(gmail_reply(relay, "Cleared the cache, works now!"))
        assert len(d.tickets()) == 1
        second = d.mails(SAM)[-1]
        assert "Cleared the cache, works now!" in body_text(second)
        assert str(second["In-Reply-To"]) == "<sam-1@mail.schoolmint.com>"

    async def test_another_specialist_is_not_relayed(self, desk: Callable[..., Any]) -> None:
        """Only the assigned specialist speaks for the ticket."""
        d = await desk()
        await d.open_ticket()
        await d.assign_sam()
        d.app.db.call(lambda s: registry.add_specialist(s, "kim@schoolmint.com", "Kim Park", d.clock.now()))
        before = d.raw_mails()
        await d.send(
            message(
                sender="Kim Park <kim@schoolmint.com>",
                subject="Re: Login broken [Ticket #1]",
                body="I can take this",
            ),
            mail_from="kim@schoolmint.com",
        )
        assert d.tickets()[-1].held_reason == "not-a-participant" and d.raw_mails() == before


class TestResolveAndReopen:
    async def test_resolve_tells_the_customer_and_a_reply_reopens(self, desk: Callable[..., Any]) -> None:
        d = await desk()
        await d.open_ticket()
        await d.assign_sam()
        resolution = await d.resolve(note="We reset your password.")
        ticket = d.ticket(1)
        assert (ticket.status, ticket.resolved_at) == ("resolved", d.clock.now())
        assert author(resolution) == ("Sam Lee (Hero Support)", SUPPORT)
        assert "is resolved" in body_text(resolution) and "We reset your password." in body_text(resolution)
        assert "within 14 days" in body_text(resolution)
        d.clock.advance(timedelta(days=13))
        await d.send(gmail_reply(resolution, "Sorry, it broke again."))
        ticket = d.ticket(1)
        assert (ticket.status, ticket.resolved_at) == ("open", None)
        assert (
            len(d.tickets()) == 1
            and len([m for m in d.mails(ANA) if "Thank you for contacting" in body_text(m)]) == 1
        )
        assert "opened it again" in body_text(d.mails(SAM)[-1])

    async def test_after_the_window_a_new_linked_ticket(self, desk: Callable[..., Any]) -> None:
        """Past `sla.reopen_within` the reply is a new ticket (with its own confirmation) linked to the old."""
        d = await desk({"sla": {"reopen_within": "2d"}})
        await d.open_ticket()
        await d.assign_sam()
        resolution = await d.resolve()
        assert "within 2 days" in body_text(resolution)
        d.clock.advance(timedelta(days=2, minutes=1))
        await d.send(gmail_reply(resolution, "It broke again after the update."))
        old, new = d.tickets()
        assert (old.status, new.status, new.parent_id) == ("resolved", "new", 1)
        confirmation = d.mails(ANA)[-1]
        assert "[Ticket #2]" in str(confirmation["Subject"]) and "Thank you for contacting" in body_text(
            confirmation
        )

    def test_cli_resolve(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`ticket resolve ID --note` through the command line; refusals are one line, exit 1."""
        config = tmp_path / "config.toml"
        config.write_text(
            f'[database]\nurl = "sqlite:///{tmp_path / "m.db"}"\n[outbound]\ntransport = "maildir"\n'
            f'maildir = "{tmp_path / "sent"}"\n[security]\nrequire_sender_auth = false\n'
        )
        mail = tmp_path / "in.eml"
        mail.write_bytes(message())

        def run(*argv: str) -> tuple[int, str, str]:
            return run_cli(capsys, "--config", str(config), *argv)

        for argv in (
            ("db", "upgrade"),
            ("org", "add", "Lincoln High", "--product", "full", "--plan", "silver"),
            ("contact", "add", ANA, "--org", "Lincoln High"),
            ("ingest", str(mail)),
        ):
            assert run(*argv)[0] == 0, argv
        code, out, _ = run("ticket", "resolve", "1", "--note", "Fixed on our side.")
        assert code == 0 and "resolved ticket 1" in out and "the customer was told" in out, _
        code, out, _ = run("ticket", "show", "1", "--json")
        shown = json.loads(out)
        assert shown["status"] == "resolved" and shown["messages"][-1]["kind"] == "resolution"
        assert "Fixed on our side." in shown["messages"][-1]["text"]
        code, _, err = run("ticket", "resolve", "1")
        assert code == 1 and "is resolved" in err and err.count("\n") == 1
        code, _, err = run("ticket", "resolve", "99")
        assert code == 1 and "no ticket 99" in err
