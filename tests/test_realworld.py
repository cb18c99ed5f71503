"""Real-world mail (tests/realworld.py) as `mailbot parse` reads it: the sender a person sees, the subject,
the text, and whom mailbot trusts; then the same classes through the whole daemon."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import select

from mailbot.parse import Address, parse
from mailbot.quotes import split_reply
from mailbot.store.schema import Attachment, Blob, TicketMessage
from tests.realworld import CASES, JP_SUBJECT, Case, build, tnef, with_winmail
from tests.world import CUSTOMER, World

BY_NAME = {case.name: case for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_reads_as_a_person_does(case: Case) -> None:
    """Sender, subject and text as a person reads them; the trusted author only where the From is sound."""
    parsed = parse(case.raw)
    assert (parsed.from_.name, parsed.from_.address) == case.sender if parsed.from_ else case.sender is None
    assert parsed.subject == case.subject
    assert parsed.text.startswith(case.text), parsed.text
    assert (parsed.author.address if parsed.author else None) == case.trusted
    if parsed.author is not None:
        assert parsed.author == parsed.from_  # the two readings agree whenever the strict one exists


def test_every_class_is_covered() -> None:
    """The corpus holds each class the issue names, several times over."""
    names = " ".join(BY_NAME)
    for word in ("iso-2022-jp", "shift_jis", "gbk", "utf-8", "stray", "From", "winmail.dat", "MAILER-DAEMON"):
        assert word in names
    assert len(CASES) >= 25


def test_parse_command_prints_the_reading(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`mailbot parse FILE` prints the lenient sender, the decoded subject and the text."""
    case = BY_NAME["iso-2022-jp without any label"]
    path = tmp_path / "jp.eml"
    path.write_bytes(case.raw)
    done = subprocess.run(
        [sys.executable, "-m", "mailbot", "parse", str(path)], capture_output=True, check=True, cwd=tmp_path
    )
    document = json.loads(done.stdout)
    assert document["subject"] == case.subject and document["text"].startswith(case.text)
    assert document["from"] == {"name": "", "address": "takahashi@school.example.jp"}


class TestWinmail:
    """Outlook's winmail.dat: its body and files, and what happens when it cannot be read."""

    def test_files_replace_the_container(self) -> None:
        parsed = parse(BY_NAME["winmail.dat with a body and attachments"].raw)
        assert [(a.filename, a.content_type, a.data) for a in parsed.attachments] == [
            ("forms.pdf", "application/pdf", b"%PDF-1.4 forms"),
            ("list.csv", "text/csv", b"a,b\r\n"),
        ]
        assert "winmail.dat (TNEF) unpacked" in parsed.defects

    def test_a_text_part_beside_it_stays_the_text(self) -> None:
        """Outlook's own text/plain part is the text; the container's copy of it is not added twice."""
        raw = with_winmail(tnef("Rich body.", {"a.txt": b"x"}), text="Plain body.")
        parsed = parse(raw)
        assert parsed.text == "Plain body."
        assert [a.filename for a in parsed.attachments] == ["a.txt"]

    def test_html_body_is_kept_as_html(self) -> None:
        parsed = parse(BY_NAME["winmail.dat with only an HTML body"].raw)
        assert parsed.html is not None and "<b>attached</b>" in parsed.html

    def test_unreadable_container_stays_an_attachment(self) -> None:
        """A damaged winmail.dat is kept as it came."""
        raw = with_winmail(b"\x78\x9f\x3e\x22" + b"\xff" * 40, text="See attached.")
        parsed = parse(raw)
        assert [(a.filename, a.content_type) for a in parsed.attachments] == [("winmail.dat", "application/ms-tnef")]
        assert parsed.text == "See attached."

    def test_path_in_a_packed_file_name_is_stripped(self) -> None:
        parsed = parse(with_winmail(tnef("x", {"..\\..\\evil.exe": b"MZ"})))
        assert [a.filename for a in parsed.attachments] == ["evil.exe"]


class TestTrust:
    """Whom it trusts never comes from Reply-To, Sender, a lenient reading or a repaired header block."""

    def test_reply_to_is_shown_never_trusted(self) -> None:
        parsed = parse(BY_NAME["no From: Reply-To is shown, never trusted"].raw)
        assert parsed.from_ == Address("Morgan Reyes", "morgan@rise.example.org") and parsed.author is None

    def test_sender_field_is_shown_never_trusted(self) -> None:
        parsed = parse(b"From: junk\r\nSender: office@lincoln.example\r\n\r\nx")
        assert parsed.from_ == Address("", "office@lincoln.example") and parsed.author is None

    def test_several_authors_are_not_one(self) -> None:
        parsed = parse(b"From: a@x.example, b@x.example\r\n\r\nx")
        assert parsed.from_ == Address("", "a@x.example") and parsed.author is None


REPLY_HEAD = ("From: Ana Diaz <ana@lincoln.example>", "To: herosupport@schoolmint.com", "Subject: Re: Login")
ATTRIBUTION = "On Tue, Dec 1, 2026 at 10:00 AM Hero Support <herosupport@schoolmint.com> wrote:"
REPLIES = {
    "plain": build(
        *REPLY_HEAD,
        "Content-Type: text/plain; charset=utf-8",
        body=f"Thanks, it works now.\r\n\r\n-- \r\nAna Diaz\r\n\r\n{ATTRIBUTION}\r\n"
        "> Your ticket 15 is under review.\r\n",
    ),
    "flowed": build(
        *REPLY_HEAD,
        "Content-Type: text/plain; charset=utf-8; format=flowed; delsp=yes",
        body=f"Thanks, it works  \r\nnow.\r\n\r\n-- \r\nAna Diaz\r\n\r\n{ATTRIBUTION}\r\n"
        "> Your ticket 15 is  \r\n> under review.\r\n",  # delsp=yes: the space before each break goes
    ),
    "html": build(
        *REPLY_HEAD,
        "Content-Type: text/html; charset=utf-8",
        body='<div dir="ltr">Thanks, it works now.<br><br>-- <br>Ana Diaz</div><br><div class="gmail_quote">'
        f"<div>{ATTRIBUTION.replace('<', '&lt;').replace('>', '&gt;')}<br></div>"
        "<blockquote>Your ticket 15 is under review.</blockquote></div>",
    ),
}


@pytest.mark.parametrize("form", list(REPLIES))
def test_a_reply_splits_alike_in_every_form(form: str) -> None:
    """Plain, flowed and HTML-only forms of one reply: the same new text, signature and quoted history."""
    new, history = split_reply(parse(REPLIES[form]).text)
    assert new == "Thanks, it works now."
    assert history.startswith("-- \nAna Diaz")
    assert f"{ATTRIBUTION}\n> Your ticket 15 is under review." in history


class TestThroughTheDaemon:
    """The same classes over real SMTP into tickets: what the team sees, and who gets an answer."""

    async def test_winmail_dat_becomes_text_and_files(self, world) -> None:  # type: ignore[no-untyped-def]
        service: World = await world()
        await service.send(with_winmail(tnef("See the forms.", {"forms.pdf": b"%PDF-1.4 x"}), sender=f"Ana <{CUSTOMER}>"))
        await service.settle()
        [row] = service.inbound()
        assert row.action == "created", service.describe()
        text, files = service.app.db.call(
            lambda s: (
                s.scalars(select(TicketMessage.text).where(TicketMessage.inbound_id == row.id)).one(),
                [(a.filename, s.get_one(Blob, a.sha256).data) for a in s.scalars(select(Attachment))],
            )
        )
        assert text == "See the forms." and files == [("forms.pdf", b"%PDF-1.4 x")]
        assert [o.kind for o in service.outbox()][:1] == ["confirmation"]

    async def test_japanese_mail_keeps_its_subject_and_name(self, world) -> None:  # type: ignore[no-untyped-def]
        service: World = await world()
        case = BY_NAME["iso-2022-jp labelled"]
        await service.send(case.raw.replace(b"takahashi@school.example.jp", CUSTOMER.encode()))
        await service.settle()
        [row] = service.inbound()
        ticket = service.ticket(row.ticket_id)
        assert (ticket.subject, ticket.requester, ticket.requester_name) == (JP_SUBJECT, CUSTOMER, "高橋")

    async def test_a_malformed_from_is_shown_and_held(self, world) -> None:  # type: ignore[no-untyped-def]
        """A trailing-dot From of a named contact: the ticket names her, but nothing trusts or answers it."""
        service: World = await world()
        await service.send(build(f"From: Ana Diaz <{CUSTOMER}.>", "To: herosupport@schoolmint.com", "Subject: Hi"))
        await service.settle()
        [row] = service.inbound()
        ticket = service.ticket(row.ticket_id)
        assert (ticket.status, ticket.requester, ticket.requester_name) == ("held", CUSTOMER, "Ana Diaz")
        assert ticket.held_reason == "unknown-sender" and service.wire == []

    async def test_reply_to_never_entitles(self, world) -> None:  # type: ignore[no-untyped-def]
        """No From, a named contact's Reply-To: shown as the requester, held, never confirmed."""
        service: World = await world()
        await service.send(build(f"Reply-To: {CUSTOMER}", "To: herosupport@schoolmint.com", "Subject: Hi"))
        await service.settle()
        [row] = service.inbound()
        ticket = service.ticket(row.ticket_id)
        assert (ticket.status, ticket.requester) == ("held", CUSTOMER) and service.wire == []
