"""What mailbot sends, read off the wire: customer text never adds a header or a recipient, and the mail is
DKIM-signed so that it verifies. Real SMTP in, a real SMTP sink as the relay, dkimpy with fixed DNS."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy, quoprimime
from email.message import EmailMessage
from email.utils import unquote
from pathlib import Path

import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import TemplateNotFound

from mailbot.automatic import LOOP_HEADER, loop_mark
from mailbot.compose import (
    Composer,
    File,
    Identity,
    Thread,
    UnsafeHeader,
    _quoted_printable,
    one_line,
    thread_index,
)
from mailbot.dns import FixedResolver, dkim_dnsfunc
from mailbot.store import registry
from mailbot.store.schema import Ticket
from mailbot.workflow import address_of
from tests.test_signing import openssl_key, signature_tags
from tests.world import CUSTOMER, World

EVIL = "x@evil.example"
# Header fields a confirmation may carry; anything else on the wire was injected.
CONFIRMATION_FIELDS = {
    "date", "from", "to", "reply-to", "subject", "message-id", "in-reply-to", "references", "auto-submitted",
    LOOP_HEADER.lower(), "mime-version", "content-type", "content-transfer-encoding", "dkim-signature",
    "thread-topic", "thread-index",
}


def raw_message(head: list[bytes], body: bytes = b"I cannot log in.\r\n") -> bytes:
    """A message written byte for byte: hostile headers that no mail library would build."""
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def fields(data: bytes) -> list[str]:
    """The names of the header fields in `data`, lowercased, as a receiver splits them."""
    head = data.partition(b"\r\n\r\n")[0]
    return [line.partition(b":")[0].decode("ascii", "replace").lower() for line in head.split(b"\r\n") if line[:1] not in b" \t"]


def assert_only_the_customer(sent: bytes, recipients: list[str]) -> EmailMessage:
    """The message goes to the customer alone, envelope and headers, and has only the fields it should."""
    assert recipients == [CUSTOMER]
    names = fields(sent)
    assert set(names) <= CONFIRMATION_FIELDS, names
    assert names.count("to") == 1 and "cc" not in names and "bcc" not in names
    parsed = message_from_bytes(sent, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert [a.addr_spec for a in parsed["To"].addresses] == [CUSTOMER]
    assert all(EVIL != a.addr_spec for a in getattr(parsed.get("Reply-To"), "addresses", ()))
    return parsed


# (header lines, whether the sender gets a confirmation): a From that cannot be read for certain gets none.
HOSTILE = {
    "encoded CRLF in the subject": (
        [b"From: Ana Diaz <ana@lincoln.example>", b"Subject: =?utf-8?q?=0D=0ABcc:_x@evil.example?="], True
    ),
    # Decodes to the text "=?utf-8?q?=0D=0ABcc:=20x@evil.example?=", which Python 3.11.7 would decode again.
    "double-encoded subject": (
        [
            b"From: Ana Diaz <ana@lincoln.example>",
            b"Subject: =?utf-8?q?=3D=3Futf-8=3Fq=3F=3D0D=3D0ABcc=3A=3D20x=40evil.example=3F=3D?=",
        ],
        True,
    ),
    "encoded CRLF in the name": (
        [b"From: =?utf-8?q?Ana=0D=0ABcc:_x@evil.example?= <ana@lincoln.example>", b"Subject: hi"], False
    ),
    "double-encoded name": (
        [
            b'From: "=?utf-8?q?=3D=3Futf-8=3Fq=3F=3D0D=3D0ABcc=3A=3D20x=40evil.example=3F=3D?=" <ana@lincoln.example>',
            b"Subject: hi",
        ],
        True,  # a quoted name is text, never decoded (RFC 2047 section 5): Ana, entitled, and confirmed
    ),
    "comma-laden name": (
        [b'From: "Diaz, Ana <x@evil.example>, y@evil.example" <ana@lincoln.example>', b"Subject: hi"], True
    ),
    "addresses in the name": ([b"From: x@evil.example, Bcc: x@evil.example <ana@lincoln.example>", b"Subject: hi"], False),
    "folded subject": ([b"From: Ana Diaz <ana@lincoln.example>", b"Subject: hello", b"\tBcc: x@evil.example"], True),
    "encoded CRLF in the Message-ID": (
        [
            b"From: Ana Diaz <ana@lincoln.example>",
            b"Subject: hi",
            b"References: <=?utf-8?q?=0D=0ABcc:x@evil.example?=>",
            b"Message-ID: <=?utf-8?q?=0D=0ABcc:x@evil.example?=>",
        ],
        True,
    ),
}


class TestQuotedPrintable:
    """The text parts' quoted-printable body: byte for byte what the standard library's encoder writes."""

    @settings(max_examples=500, deadline=None)
    @given(
        text=st.text(st.sampled_from("ab =\t\r\n.\x00\x0b\x7f\x85é€\u2028<>\"") | st.characters(codec="utf-8"), max_size=400)
        | st.builds(lambda width, tail: "x" * width + tail, st.integers(60, 160), st.sampled_from(["", " ", "\t", "=", "é ", "=="]))
    )
    def test_the_same_as_quoprimime(self, text: str) -> None:
        lines = text.encode("utf-8", "surrogatepass").splitlines()
        expected = quoprimime.body_encode(b"\n".join(lines).decode("latin-1") + "\n", 76, eol="\r\n")
        assert _quoted_printable(lines) == expected


class TestHeaderInjection:
    @pytest.mark.parametrize("name", list(HOSTILE))
    async def test_nothing_reaches_anyone_else(self, world, name: str) -> None:
        """Whatever the customer's headers hold, what goes out goes to the customer alone, with no added field."""
        service: World = await world()
        head, confirmed = HOSTILE[name]
        if not any(line.startswith(b"Message-ID:") for line in head):
            head = [*head, b"Message-ID: <hostile@lincoln.example>"]
        await service.send(raw_message([*head, b"To: herosupport@schoolmint.com"]))
        await service.settle()
        assert [row.status for row in service.inbound()] == ["processed"]
        assert len(service.wire) == int(confirmed)
        for sent in service.wire:
            parsed = assert_only_the_customer(sent.data, sent.rcpt_tos)
            assert "[Ticket #1]" in str(parsed["Subject"])


class TestComposeProperty:
    """Composition itself, over generated text: no subject or name can change the header block."""

    def ticket(self, subject: str, name: str) -> Ticket:
        due = datetime(2026, 12, 1, 19, tzinfo=UTC)
        return Ticket(id=7, subject=subject, requester=CUSTOMER, requester_name=name, introduction_due_at=due)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        subject=st.text(st.characters(codec="utf-8"), max_size=120) | st.sampled_from(["=?utf-8?q?=0D=0ABcc:_x@e?="]),
        name=st.text(st.characters(codec="utf-8"), max_size=60) | st.just("=?utf-8?b?DQpCY2M6IHhAZXZpbA==?="),
        reference=st.sampled_from(["<a@b>", "<=?utf-8?q?=0D=0ABcc:x@e?=>", "<x =?utf-8?q?=0A?= y>"]),
    )
    def test_generated_text_adds_nothing(self, app, subject: str, name: str, reference: str) -> None:
        ticket = self.ticket(subject, name)
        outgoing = app.workflow.composer.compose(
            "confirmation",
            to=[address_of(ticket.requester, ticket.requester_name)],
            subject=f"Re: {subject}",
            thread=Thread(in_reply_to=reference, references=(reference,), topic=subject, index="AQHdgaSi"),
            context=app.workflow.context(ticket),
        )
        assert outgoing.recipients == [CUSTOMER]
        assert_only_the_customer(outgoing.body, outgoing.recipients)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        subject=st.text(st.characters(codec="utf-8", blacklist_categories=("Cs",)), max_size=300),
        name=st.text(st.characters(codec="utf-8", blacklist_categories=("Cs",)), max_size=200),
    )
    def test_a_mail_client_reads_back_what_was_written(self, app, subject: str, name: str) -> None:
        """Subject and display name come back as composed (one safe line each), every line within 998 octets
        and every encoded word within 75 characters (RFC 5322 2.1.1, RFC 2047 2). White space in a name is
        folding white space to a reader, and the stdlib's reader adds a space between the encoded words of a
        long name (FIELD-NOTES), so the name is compared without it."""
        ticket = self.ticket(subject, name)
        outgoing = app.workflow.composer.compose(
            "confirmation",
            to=[address_of(ticket.requester, name)],
            subject=subject,
            thread=Thread(),
            context=app.workflow.context(ticket),
        )
        head = outgoing.body.partition(b"\r\n\r\n")[0]
        assert all(len(line) <= 998 for line in head.split(b"\r\n"))
        assert all(len(word) <= 75 for word in re.findall(rb"=\?[^?]+\?[bq]\?[^?]*\?=", head))
        parsed = message_from_bytes(outgoing.body, policy=policy.default)
        assert str(parsed["Subject"]) == one_line(subject, 300)
        [to] = parsed["To"].addresses
        assert ("".join(to.display_name.split()), to.addr_spec) == ("".join(one_line(name).split()), CUSTOMER)

    def test_encoded_words_are_written_not_decoded(self, app) -> None:
        """An address holding an encoded CR LF (CVE-2024-6923) goes out as written, in one To field."""
        evil = address_of("=?utf-8?q?=0D=0ABcc:x=40evil.example?=@lincoln.example")
        outgoing = app.workflow.composer.compose(
            "confirmation", to=[evil], subject="hi", thread=Thread(), context=app.workflow.context(self.ticket("", ""))
        )
        assert fields(outgoing.body).count("to") == 1 and "bcc" not in fields(outgoing.body)
        assert b"To: =?utf-8?q?=0D=0ABcc:x=40evil.example?=@lincoln.example\r\n" in outgoing.body

    @pytest.mark.parametrize("separator", ["\x0b", "\x85", "\u2028"])
    def test_check_refuses_a_line_break_in_a_value(self, app, separator: str) -> None:
        """The last line of defence: a value that a receiver could split into two lines is refused."""
        evil = address_of(f"ana{separator}Bcc: x@evil.example")
        with pytest.raises(UnsafeHeader):
            app.workflow.composer.compose(
                "confirmation", to=[evil], subject="hi", thread=Thread(), context=app.workflow.context(self.ticket("", ""))
            )


class TestComposerRemembers:
    """What a Composer keeps across messages (templates, display names) still follows each message's input."""

    def compose_to(self, app, name: str) -> bytes:
        ticket = Ticket(id=7, subject="x", requester=CUSTOMER, requester_name=name)
        return app.workflow.composer.compose(
            "confirmation", to=[address_of(CUSTOMER, name)], subject="x", thread=Thread(),
            context=app.workflow.context(ticket), reply_to=app.workflow.reply_to(ticket),
        ).body

    def test_each_name_is_written_as_its_own(self, app) -> None:
        bodies = [self.compose_to(app, name) for name in ("Ana Diaz", "Bo Li, Jr.", "Zoë", "Ana Diaz", "")]
        to = [line for body in bodies for line in body.split(b"\r\n") if line.startswith(b"To: ")]
        assert to == [
            b"To: Ana Diaz <ana@lincoln.example>",
            b'To: "Bo Li, Jr." <ana@lincoln.example>',
            b"To: =?utf-8?q?Zo=C3=AB?= <ana@lincoln.example>",
            b"To: Ana Diaz <ana@lincoln.example>",
            b"To: ana@lincoln.example",
        ]
        assert all(b"\r\nReply-To: Hero Support <herosupport+t7-" in body for body in bodies)

    def test_templates_by_kind(self, tmp_path: Path) -> None:
        """A kind with an HTML template gets both parts, one without gets text alone, each time; a kind
        without a text template is refused each time it is asked for."""
        (tmp_path / "both.txt").write_text("text {{ n }}\n")
        (tmp_path / "both.html").write_text("<p>html {{ n }}</p>\n")
        (tmp_path / "plain.txt").write_text("plain {{ n }}\n")
        composer = Composer(tmp_path, Identity.parse("Hero Support <herosupport@schoolmint.com>"), loop_secret=b"k")

        def parts(kind: str, n: int) -> list[tuple[str, str]]:
            parsed = message_from_bytes(
                composer.compose(kind, to=[], subject="s", thread=Thread(), context={"n": n}).body, policy=policy.default
            )
            return [(part.get_content_type(), part.get_content().strip()) for part in parsed.walk() if not part.is_multipart()]

        assert parts("both", 1) == [("text/plain", "text 1"), ("text/html", "<p>html 1</p>")]
        assert parts("plain", 2) == [("text/plain", "plain 2")]
        assert parts("both", 3) == [("text/plain", "text 3"), ("text/html", "<p>html 3</p>")]
        assert parts("plain", 4) == [("text/plain", "plain 4")]
        for _ in range(2):
            with pytest.raises(TemplateNotFound):
                composer.compose("none", to=[], subject="s", thread=Thread(), context={})

    def test_a_refusal_names_the_field(self, app) -> None:
        """All values are checked at once; the one that fails is named."""
        with pytest.raises(UnsafeHeader, match="^the To field"):
            app.workflow.composer.compose(
                "confirmation", to=[address_of("ana\x0bBcc: x@evil.example")], subject="hi", thread=Thread(),
                context=app.workflow.context(Ticket(id=7, subject="x", requester=CUSTOMER, requester_name="")),
            )


class TestSubjectField:
    @settings(max_examples=300, deadline=None)
    @given(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=90))
    def test_short_ascii_is_what_header_gives(self, text: str) -> None:
        """compose's shortcut for a short ASCII subject writes what email.header.Header would."""
        from email.header import Header

        from mailbot.compose import _encoded

        assert _encoded("Subject", text) == Header(text, "us-ascii", maxlinelen=78, header_name="Subject").encode(
            linesep="\r\n"
        )


class TestDkim:
    async def test_confirmation_on_the_wire_verifies(self, world, tmp_path: Path) -> None:
        """With [outbound.dkim], the confirmation the relay receives verifies with dkimpy against the published key."""
        key_file, record = openssl_key(tmp_path, 2048)
        dkim_config = {"domain": "schoolmint.com", "selector": "mailbot", "private_key_file": str(key_file)}
        service: World = await world({"outbound": {"dkim": dkim_config}})
        await service.send(raw_message([b"From: Ana Diaz <ana@lincoln.example>", b"To: herosupport@schoolmint.com",
                                        b"Subject: Login broken", b"Message-ID: <dkim@lincoln.example>"]))
        await service.settle()
        [sent] = service.wire
        resolver = FixedResolver({"mailbot._domainkey.schoolmint.com": [record]})
        assert dkim.verify(sent.data, dnsfunc=dkim_dnsfunc(resolver))
        tags = signature_tags(sent.data)
        signed = [h.strip().lower() for h in tags[b"h"].split(b":")]
        assert tags[b"d"] == b"schoolmint.com" and b"l" not in tags  # the From domain; no body-length limit
        assert signed.count(b"from") == 2 and {b"subject", b"to", b"auto-submitted"} <= set(signed)
        (tmp_path / "other").mkdir()
        other = FixedResolver({"mailbot._domainkey.schoolmint.com": [openssl_key(tmp_path / "other", 2048)[1]]})
        assert not dkim.verify(sent.data, dnsfunc=dkim_dnsfunc(other))  # a different key: the check can fail



class TestMarks:
    async def test_everything_sent_is_marked_automatic_and_ours(self, world) -> None:
        """Confirmation, introduction, notification, relay and resolution all carry Auto-Submitted (RFC 3834 5)
        and our loop mark, the HMAC of their own Message-ID (so we know each one if it comes back)."""
        service: World = await world()
        app = service.app
        app.db.call(registry.add_specialist, "sam@schoolmint.com", "Sam Lee", app.clock.now())
        await service.send(raw_message([b"From: Ana Diaz <ana@lincoln.example>", b"To: herosupport@schoolmint.com",
                                        b"Subject: Login broken", b"Message-ID: <m1@lincoln.example>"]))
        await service.settle()
        app.sla.claim(1, "sam@schoolmint.com")
        await service.settle()
        introduction = message_from_bytes(service.wire[-1].data, policy=policy.default)
        await service.send(raw_message([b"From: Ana Diaz <ana@lincoln.example>", b"To: herosupport@schoolmint.com",
                                        b"Subject: Re: Login broken", b"Message-ID: <m2@lincoln.example>",
                                        b"In-Reply-To: " + str(introduction["Message-ID"]).encode()]))
        await service.settle()
        notification = message_from_bytes(service.wire[-1].data, policy=policy.default)
        reply_to = notification["Reply-To"].addresses[0].addr_spec  # the specialist's reply address
        await service.send(raw_message([b"From: Sam Lee <sam@schoolmint.com>", b"To: " + reply_to.encode(),
                                        b"Subject: Re: Login broken", b"Message-ID: <s1@schoolmint.com>",
                                        b"In-Reply-To: " + str(notification["Message-ID"]).encode()],
                                       b"Please clear your cookies.\r\n"), mail_from="sam@schoolmint.com",
                           rcpt=(reply_to,))
        await service.settle()
        app.db.call(lambda s: app.workflow.resolve(s, s.get_one(Ticket, 1), app.clock.now(), "Fixed."))
        await service.settle()
        kinds = {item.message_id: item.kind for item in service.outbox()}
        marks = {}
        for sent in service.wire:
            parsed = message_from_bytes(sent.data, policy=policy.default)
            message_id = str(parsed["Message-ID"])
            assert parsed[LOOP_HEADER] == loop_mark(app.secret, message_id)
            marks[kinds[message_id]] = str(parsed["Auto-Submitted"])
        assert marks == {
            "confirmation": "auto-replied",
            "introduction": "auto-replied",
            "assignment": "auto-generated",
            "notification": "auto-generated",
            "relay": "auto-generated",
            "resolution": "auto-generated",
        }


class TestAttachmentsAndOutlookThreads:
    """Attachments read back as sent, whatever their names; Outlook's Thread-Index per [MS-OXOMSG] 2.2.1.3."""

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        name=st.text(st.characters(codec="utf-8", blacklist_categories=("Cs",)), min_size=1, max_size=255),
        data=st.binary(max_size=300),
        content_type=st.sampled_from(["image/png", "application/pdf", "text/plain; charset=x", "bad\r\nX: y"]),
    )
    def test_a_mail_client_reads_the_file_back(self, app, name: str, data: bytes, content_type: str) -> None:
        outgoing = app.workflow.composer.compose(
            "confirmation", to=[address_of(CUSTOMER)], subject="hi", thread=Thread(),
            context=app.workflow.context(TestComposeProperty().ticket("", "")),
            files=[File(name, content_type, data)],
        )
        assert_only_the_customer(outgoing.body, outgoing.recipients)
        head_lines = outgoing.body.split(b"\r\n")
        assert all(len(line) <= 998 for line in head_lines)
        parsed = message_from_bytes(outgoing.body, policy=policy.default)
        [part] = list(parsed.iter_attachments())
        expected = re.sub("[\x00-\x1f\x7f-\x9f\u2028\u2029]+", " ", name).strip()[:255] or "attachment"
        assert part.get_content_type() in ("image/png", "application/pdf", "application/octet-stream")
        assert part.get_payload(decode=True) == data
        # Python's reader (not other clients) strips one pair of surrounding quotes or angle brackets from
        # the name it decodes (email.utils.unquote): '""' reads back as ''.
        assert part.get_filename() == unquote(expected)

    def test_thread_index_shares_the_conversation_and_orders_by_time(self) -> None:
        started = datetime(2026, 12, 1, 15, tzinfo=UTC)
        first, later = (thread_index("site 1", started, started + timedelta(hours=h)) for h in (0, 3))
        other = thread_index("site 2", started, started)
        raw_first, raw_later = base64.b64decode(first), base64.b64decode(later)
        assert len(raw_first) == len(raw_later) == 27 and raw_first[0] == 1  # a header block, one response level
        assert raw_first[:22] == raw_later[:22] != base64.b64decode(other)[:22]
        assert raw_later[22:] > raw_first[22:]  # sorted by the time since the conversation began
        assert thread_index("site 1", started, started) == first  # nothing random: a retry is the same message
