"""The specialist's side, end to end over real SMTP both ways: a specialist who only has email is assigned,
reads the customer's message and attachments, answers with formatting and an attachment, hands the ticket
over and resolves it; the customer sees each step as mail from a person (INTERFACE.md, "The specialist's
side"). Mail goes in through the running listener and out through a real SMTP sink (tests.world)."""

from __future__ import annotations

import argparse
import base64
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from mailbot.cli import tickets as ticket_commands
from mailbot.store import registry
from mailbot.store.schema import Ticket
from tests.world import CUSTOMER, SUPPORT, World

SAM = "sam@schoolmint.com"
KIM = "kim@schoolmint.com"
# A real 1x1 PNG: what Ana's mail client attaches as a screenshot.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n% the steps, as Sam wrote them\n%%EOF\n"


def mail(data: bytes) -> EmailMessage:
    parsed = message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def plain(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def html(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def files(message: EmailMessage) -> dict[str, bytes]:
    return {str(part.get_filename()): part.get_content() for part in message.iter_attachments()}


def to(message: EmailMessage) -> str:
    return str(message["To"].addresses[0].addr_spec)


def written(
    *,
    sender: str,
    recipient: str,
    subject: str,
    text: str,
    html_body: str | None = None,
    attachments: dict[str, tuple[str, bytes]] | None = None,
    reply_to: EmailMessage | None = None,
) -> bytes:
    """A message as a mail client writes it: text (and HTML), attachments, and the thread headers of a reply."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = "Tue, 01 Dec 2026 10:00:00 -0500"
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].rstrip(">"))
    if reply_to is not None:
        message["In-Reply-To"] = str(reply_to["Message-ID"])
        message["References"] = f"{reply_to.get('References', '')} {reply_to['Message-ID']}".strip()
    message.set_content(text)
    if html_body is not None:
        message.add_alternative(html_body, subtype="html")
    for name, (content_type, data) in (attachments or {}).items():
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes(policy=policy.SMTP)


def answer(to_mail: EmailMessage, sender: str, text: str, **options: Any) -> bytes:
    """A reply to `to_mail` as a client sends it: to its Reply-To, "Re:" subject, thread headers."""
    subject = str(to_mail["Subject"])
    return written(
        sender=sender,
        recipient=str(to_mail["Reply-To"].addresses[0].addr_spec),
        subject=subject if subject.startswith("Re:") else f"Re: {subject}",
        text=text,
        reply_to=to_mail,
        **options,
    )


class Desk:
    """A running mailbot (world) with Ana as customer and Sam and Kim, who only have email, as the team."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.app = world.app
        self.seen = 0

    async def deliver(self, raw: bytes, mail_from: str) -> list[EmailMessage]:
        """Send over SMTP; everything mailbot sent because of it, as the recipients' clients read it."""
        await self.world.send(raw, mail_from=mail_from)
        return await self.sent()

    async def sent(self) -> list[EmailMessage]:
        await self.world.settle()
        new = [mail(r.data) for r in self.world.wire[self.seen :]]
        self.seen = len(self.world.wire)
        return new

    def ticket(self) -> Ticket:
        return self.world.ticket(1)


def by_recipient(mails: list[EmailMessage]) -> dict[str, EmailMessage]:
    found = {to(m): m for m in mails}
    assert len(found) == len(mails), [to(m) for m in mails]
    return found


def thread_key(message: EmailMessage) -> bytes:
    """The conversation Outlook files a message under: the Thread-Index's 22-byte header block."""
    return base64.b64decode(str(message["Thread-Index"]))[:22]


@pytest.fixture
async def desk(world: Any) -> Desk:
    service: World = await world()
    now = service.app.clock.now()
    # Kim first: of two specialists never assigned, the rotation picks the lower id, so only her being away
    # makes the automatic assignment pass her by.
    service.app.db.call(registry.add_specialist, KIM, "Kim Park", now)
    service.app.db.call(registry.add_specialist, SAM, "Sam Lee", now)
    return Desk(service)


class TestByEmailAlone:
    async def test_assigned_answer_hand_over_resolve(self, desk: Desk, capsys: pytest.CaptureFixture[str]) -> None:
        # Ana writes (no display name: she is greeted by the name registered with `contact add --name`).
        opening = written(
            sender=CUSTOMER,
            recipient=SUPPORT,
            subject="Login broken",
            text="I cannot log in since this morning. Screenshot attached.",
            attachments={"error.png": ("image/png", PNG)},
        )
        [confirmation] = await desk.deliver(opening, CUSTOMER)
        assert plain(confirmation).startswith("Hello Ana Diaz,")
        # Kim is away: the automatic assignment passes her by.
        desk.app.db.call(registry.set_specialist_active, KIM, False)
        desk.app.clock.advance(timedelta(hours=3))
        sweep = await desk.app.sla.sweep()
        assert sweep.assigned == [(1, SAM)]
        introduction, assignment = sorted(await desk.sent(), key=to)
        assert to(introduction) == CUSTOMER and to(assignment) == SAM

        # Sam reads the customer's message and her attachment in his mail, threaded with the ticket.
        assert "is yours now: by turn" in plain(assignment) and "We are introducing you to Ana Diaz by email now" in plain(assignment)
        assert "I cannot log in since this morning." in plain(assignment) and "error.png" in plain(assignment)
        assert files(assignment) == {"error.png": PNG}
        assert "I cannot log in since this morning." in html(assignment) and "<table" not in html(assignment)
        # His answer goes to the ticket's specialist token (only his mail carries it), Ana's to her own token.
        assert "+s1-" in assignment["Reply-To"].addresses[0].addr_spec
        assert "+t1-" in introduction["Reply-To"].addresses[0].addr_spec
        assert str(assignment["Subject"]) == "Re: Login broken [Ticket #1]"
        assert str(assignment["Thread-Topic"]) == "Login broken [Ticket #1]"

        # Sam answers from his mail client: HTML with emphasis and a link, his quoted history, a PDF.
        sams_html = (
            '<div dir="ltr">Hello Ana, please <b>clear the app cache</b> and follow '
            '<a href="https://help.example/cache">the guide</a>; the steps are attached.'
            '<script>alert(1)</script><div class="gmail_quote"><div>On Tue, Hero Support wrote:</div>'
            "<blockquote>I cannot log in since this morning.</blockquote></div></div>"
        )
        sams_text = (
            "Hello Ana, please *clear the app cache* and follow the guide; the steps are attached.\n\n"
            "On Tue, Hero Support wrote:\n> I cannot log in since this morning.\n"
        )
        [relay] = await desk.deliver(
            answer(assignment, f"Sam Lee <{SAM}>", sams_text, html_body=sams_html,
                   attachments={"steps.pdf": ("application/pdf", PDF)}),
            SAM,
        )
        # Ana gets it as mail from a person, with its formatting and attachment, on her thread.
        assert to(relay) == CUSTOMER
        assert (relay["From"].addresses[0].display_name, relay["From"].addresses[0].addr_spec) == (
            "Sam Lee (Hero Support)", SUPPORT
        )
        assert "<b>clear the app cache</b>" in html(relay)
        assert 'href="https://help.example/cache"' in html(relay)
        assert "<script" not in html(relay) and "alert(1)" not in html(relay)
        assert "I cannot log in" not in html(relay) and "I cannot log in" not in plain(relay)  # history cut
        assert "clear the app cache" in plain(relay) and files(relay) == {"steps.pdf": PDF}
        assert str(relay["References"]).split()[0] == str(mail(opening)["Message-ID"])
        assert thread_key(relay) == thread_key(confirmation) != thread_key(assignment)

        # Ana answers with another screenshot: Sam's notification carries it.
        [notification] = await desk.deliver(
            answer(relay, CUSTOMER, "Still broken, see the new screenshot.",
                   attachments={"after.png": ("image/png", PNG[:-1] + b"\x00")}),
            CUSTOMER,
        )
        assert to(notification) == SAM and "Still broken" in plain(notification)
        assert list(files(notification)) == ["after.png"]

        # Sam hands over to Kim by email (she is back): Kim gets the whole conversation and his note, Sam is
        # told, Ana hears who takes over, from Kim.
        desk.app.db.call(registry.set_specialist_active, KIM, True)
        handed = by_recipient(
            await desk.deliver(
                answer(notification, f"Sam Lee <{SAM}>", "#assign kim@schoolmint.com\nKim knows the iPad app."),
                SAM,
            )
        )
        assert set(handed) == {CUSTOMER, SAM, KIM}
        kims = handed[KIM]
        assert "handed over by Sam Lee" in plain(kims) and "Kim knows the iPad app." in plain(kims)
        assert "I cannot log in" in plain(kims) and "Still broken" in plain(kims)
        assert sorted(files(kims)) == ["after.png", "error.png", "steps.pdf"]  # Sam's answers too
        assert "is now with Kim Park" in plain(handed[SAM])
        assert "I am Kim Park" in plain(handed[CUSTOMER]) and "taking it over from Sam Lee" in plain(handed[CUSTOMER])
        assert handed[CUSTOMER]["From"].addresses[0].display_name == "Kim Park (Hero Support)"
        assert "Kim knows" not in plain(handed[CUSTOMER])  # the note is for Kim alone

        # Kim resolves by email: the rest of her mail is the note to Ana.
        [resolution] = await desk.deliver(
            answer(kims, f"Kim Park <{KIM}>", "#resolve We fixed the iPad app:\nplease update it."), KIM
        )
        assert to(resolution) == CUSTOMER and "is resolved" in plain(resolution)
        assert "We fixed the iPad app:\r\nplease update it." in plain(resolution)
        assert resolution["From"].addresses[0].display_name == "Kim Park (Hero Support)"
        assert desk.ticket().status == "resolved"

        # The record: every step in the ticket's messages, the attachments listed by `ticket show`.
        context = argparse.Namespace(app=desk.app)
        capsys.readouterr()
        assert ticket_commands.cmd_show(argparse.Namespace(id=1, json=False), context) == 0
        shown = capsys.readouterr().out
        assert "Attachment: error.png (image/png, 70 bytes)" in shown
        assert "Attachment: steps.pdf (application/pdf" in shown
        assert "\ncreated at             2026-12-01 10:00 -05:00\n" in shown  # people read local time, to the minute

    async def test_a_colleague_takes_a_ticket_by_email(self, desk: Desk) -> None:
        """Kim writes "#take" about Ana's unassigned ticket, naming it by its subject: hers now, Ana is
        introduced to her. Only mail to the ticket's reply address speaks to Ana: Kim answers her assignment."""
        [confirmation] = await desk.deliver(
            written(sender=CUSTOMER, recipient=SUPPORT, subject="Grades", text="The grades page is empty."),
            CUSTOMER,
        )
        took = await desk.deliver(
            written(
                sender=f"Kim Park <{KIM}>",
                recipient=SUPPORT,
                subject=str(confirmation["Subject"]),
                text="#take\nI am looking into the grades page now.",
            ),
            KIM,
        )
        assert desk.ticket().specialist_id is not None
        [kims] = [m for m in took if to(m) == KIM]
        assert "taken by email" in plain(kims) and "The grades page is empty." in plain(kims)
        [introduction] = [m for m in took if to(m) == CUSTOMER]
        assert "I am Kim Park" in plain(introduction) and "looking into" not in plain(introduction)
        [relay] = await desk.deliver(answer(kims, f"Kim Park <{KIM}>", "Which class is it?"), KIM)
        assert to(relay) == CUSTOMER and "Which class is it?" in plain(relay)
        assert relay["From"].addresses[0].display_name == "Kim Park (Hero Support)"

    async def test_an_away_specialist_cannot_take_and_a_stranger_gets_nothing(self, desk: Desk) -> None:
        [confirmation] = await desk.deliver(
            written(sender=CUSTOMER, recipient=SUPPORT, subject="Grades", text="The grades page is empty."),
            CUSTOMER,
        )
        desk.app.db.call(registry.set_specialist_active, KIM, False)
        take = written(sender=f"Kim Park <{KIM}>", recipient=SUPPORT, subject=str(confirmation["Subject"]),
                       text="#take")
        assert await desk.deliver(take, KIM) == []
        assert desk.ticket().specialist_id is None
        assert desk.world.ticket(2).held_reason == "not-a-participant"  # kept, like any stranger's attempt

    async def test_a_refused_command_is_explained_to_the_specialist(self, desk: Desk) -> None:
        await desk.deliver(
            written(sender=CUSTOMER, recipient=SUPPORT, subject="Grades", text="The grades page is empty."),
            CUSTOMER,
        )
        desk.app.sla.claim(1, SAM)
        assignment = next(m for m in await desk.sent() if to(m) == SAM)
        [notice] = await desk.deliver(answer(assignment, f"Sam Lee <{SAM}>", "#assign nobody@schoolmint.com"), SAM)
        assert to(notice) == SAM and "was not carried out" in plain(notice)
        assert "nobody@schoolmint.com is not a specialist" in plain(notice)
        assert desk.ticket().specialist_id is not None and desk.ticket().status == "open"


class TestPlainText:
    async def test_a_flowed_reply_reaches_the_customer_as_paragraphs(self, desk: Desk) -> None:
        """Thunderbird's plain text (format=flowed, lines soft-broken at 72): Ana reads whole sentences, in the
        plain part and the HTML part alike."""
        await desk.deliver(
            written(sender=CUSTOMER, recipient=SUPPORT, subject="Grades", text="The grades page is empty."),
            CUSTOMER,
        )
        desk.app.sla.claim(1, SAM)
        assignment = next(m for m in await desk.sent() if to(m) == SAM)
        raw = answer(assignment, f"Sam Lee <{SAM}>", "x").replace(b"\r\n\r\nx\r\n", b"\r\n\r\n")
        raw = raw.replace(b'charset="utf-8"', b'charset="utf-8"; format=flowed')
        assert b"format=flowed" in raw
        body = (
            b"Please open the grades page again and press the Refresh button at the \r\n"
            b"top right; the page should fill within a minute.\r\n\r\n-- \r\nSam\r\n"
        )
        [relay] = await desk.deliver(raw + body, SAM)
        sentence = "Please open the grades page again and press the Refresh button at the top right; the page"
        assert sentence in plain(relay) and sentence in html(relay)
        assert "Sam\r\n\r\nSam Lee" not in plain(relay)  # the signature stays out


class TestSignature:
    @pytest.mark.parametrize(
        "signed",
        [
            '<div class="moz-signature">-- <br>Sam Lee | Hero Support | 555-0100</div>',  # Thunderbird
            "-- <br>Sam Lee | Hero Support | 555-0100",  # typed by hand
            ('<br clear="all"><br><span class="gmail_signature_prefix">-- </span><br><div dir="ltr" '
             'class="gmail_signature" data-smartmail="gmail_signature">Sam Lee | Hero Support | 555-0100</div>'),
        ],
        ids=["thunderbird", "by hand", "gmail"],
    )
    async def test_the_specialists_signature_stays_out_of_the_html(self, desk: Desk, signed: str) -> None:
        """Ana reads Sam's words signed once, by the relay's own signature, without his phone number."""
        await desk.deliver(
            written(sender=CUSTOMER, recipient=SUPPORT, subject="Grades", text="The grades page is empty."),
            CUSTOMER,
        )
        desk.app.sla.claim(1, SAM)
        assignment = next(m for m in await desk.sent() if to(m) == SAM)
        [relay] = await desk.deliver(
            answer(assignment, f"Sam Lee <{SAM}>", "Please press Refresh.\n\n-- \nSam Lee | Hero Support | 555-0100\n",
                   html_body=f'<div dir="ltr">Please <i>press Refresh</i>.<br>{signed}</div>'),
            SAM,
        )
        relayed = html(relay)
        assert "Please <i>press Refresh</i>." in relayed
        assert "555-0100" not in relayed and "--" not in relayed and "555-0100" not in plain(relay)
        assert relayed.count("Sam Lee") == 1 and relayed.count("Hero Support") == 1


class TestLimits:
    async def test_attachments_over_the_limit_are_named_not_attached(self, world: Any, tmp_path: Path) -> None:
        """`support.max_attachments_size`: what fits goes along; the rest is named with how to save it."""
        service: World = await world({"support": {"max_attachments_size": 1000}})
        service.app.db.call(registry.add_specialist, SAM, "Sam Lee", service.app.clock.now())
        desk = Desk(service)
        big = bytes(range(256)) * 8
        await desk.deliver(
            written(sender=CUSTOMER, recipient=SUPPORT, subject="Logs", text="Logs attached.",
                    attachments={"big.log": ("text/plain", big), "small.png": ("image/png", PNG)}),
            CUSTOMER,
        )
        service.app.sla.claim(1, SAM)
        assignment = next(m for m in await desk.sent() if to(m) == SAM)
        assert files(assignment) == {"small.png": PNG}
        assert "Not attached, over the 1 KB limit per mail: big.log (2 KB)" in plain(assignment)
        assert "mailbot ticket attachment 1 NAME" in plain(assignment)
        # The operator saves it from the ticket.
        context = argparse.Namespace(app=service.app)
        target = tmp_path / "saved.log"
        args = argparse.Namespace(id=1, name="big.log", output=str(target))
        assert ticket_commands.cmd_attachment(args, context) == 0 and target.read_bytes() == big
        from mailbot.errors import RefusedError

        with pytest.raises(RefusedError, match="exists"):
            ticket_commands.cmd_attachment(args, context)
        with pytest.raises(RefusedError, match="no attachment 'nope.txt' \\(big.log, small.png\\)"):
            ticket_commands.cmd_attachment(argparse.Namespace(id=1, name="nope.txt", output=None), context)


class TestOutlookThreads:
    async def test_our_replies_join_the_outlook_customers_conversation(self, world: Any, db_url: str) -> None:
        """Ana writes from Outlook (Thread-Index on her first message): every mail of ours to her carries her
        conversation's header block, with a response level of its own; the team's thread is another one."""
        service: World = await world(db=db_url)
        service.app.db.call(registry.add_specialist, SAM, "Sam Lee", service.app.clock.now())
        desk = Desk(service)
        hers = base64.b64decode("AQHbN0x2Zm9vYmFyYmF6cXV4MTIzNA==")  # 22 bytes: 0x01, time, GUID
        opening = written(sender=CUSTOMER, recipient=SUPPORT, subject="Grades", text="The grades page is empty.")
        opening = opening.replace(b"Subject: Grades", b"Thread-Index: " + base64.b64encode(hers) + b"\r\nSubject: Grades")
        [confirmation] = await desk.deliver(opening, CUSTOMER)
        desk.app.sla.claim(1, SAM)
        introduction, assignment = sorted(await desk.sent(), key=to)
        for ours in (confirmation, introduction):
            index = base64.b64decode(str(ours["Thread-Index"]))
            assert index[:22] == hers and len(index) == 27
        assert thread_key(assignment) != hers

    async def test_a_ticket_opened_before_the_block_was_kept_reads_it_from_the_stored_message(
        self, world: Any, db_url: str
    ) -> None:
        """Tickets opened before migration 0005 have no Thread-Index block kept (NULL): our replies still
        continue the customer's conversation, read from the stored opening message."""
        service: World = await world(db=db_url)
        service.app.db.call(registry.add_specialist, SAM, "Sam Lee", service.app.clock.now())
        desk = Desk(service)
        hers = base64.b64decode("AQHbN0x2Zm9vYmFyYmF6cXV4MTIzNA==")
        opening = written(sender=CUSTOMER, recipient=SUPPORT, subject="Grades", text="The grades page is empty.")
        opening = opening.replace(b"Subject: Grades", b"Thread-Index: " + base64.b64encode(hers) + b"\r\nSubject: Grades")
        await desk.deliver(opening, CUSTOMER)

        def forget(session: Any) -> None:
            ticket = session.get(Ticket, 1)
            assert ticket.customer_thread_index == hers  # kept when the ticket was opened
            ticket.customer_thread_index = None

        service.app.db.call(forget)
        desk.app.sla.claim(1, SAM)
        introduction, _ = sorted(await desk.sent(), key=to)
        assert base64.b64decode(str(introduction["Thread-Index"]))[:22] == hers
