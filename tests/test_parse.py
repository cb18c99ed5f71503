"""mailbot.parse: the nasty-message corpus, address safety, charsets, limits on hostile mail, fuzzing."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbot.parse import (
    Address,
    ParsedMessage,
    ParseLimits,
    UnparseableMessage,
    content_key,
    decode_text,
    parse,
)
from tests.realworld import CASES

DATA = Path(__file__).parent / "data"


def load(name: str) -> ParsedMessage:
    return parse((DATA / name).read_bytes())


def headers(*lines: str, body: str = "Hello.\n") -> bytes:
    return ("\n".join(lines) + "\n\n" + body).encode()


class TestBodies:
    """Text, HTML and the way parts are chosen and joined."""

    def test_html_only_mail_is_rendered_to_text(self) -> None:
        """HTML-only mail gets its text from inscriptis: paragraphs, list items, no CSS, cp1252 decoded."""
        parsed = load("html_only.eml")
        assert parsed.subject == "Gradebook export \u2013 won\u2019t open"
        assert parsed.html is not None and "<ul>" in parsed.html
        assert (
            "The gradebook export won\u2019t open in Excel \u2013 it says the file is corrupt." in parsed.text
        )
        assert "* Browser: Edge" in parsed.text
        assert "margin" not in parsed.text and "\r" not in parsed.text
        assert parsed.text.startswith("Hello,")

    def test_empty_plain_alternative_falls_back_to_html(self) -> None:
        """A blank text/plain alternative does not hide the HTML one's content."""
        parsed = load("empty_plain_alternative.eml")
        assert "Cannot print report cards" in parsed.text

    def test_several_inline_text_parts_are_joined(self) -> None:
        """Apple Mail's text / image / text / image / text keeps every piece of text, in order."""
        parsed = load("multiple_inline_text.eml")
        first = parsed.text.index("Here is the first screen:")
        assert first < parsed.text.index("and the second one:") < parsed.text.index("Thanks, Morgan")
        assert [a.filename for a in parsed.attachments] == ["first.png", "second.png"]
        assert all(a.inline for a in parsed.attachments)

    def test_plain_alternative_is_the_text_and_html_is_kept(self) -> None:
        """multipart/alternative: text from text/plain, html from text/html; CRLF becomes \\n."""
        parsed = load("outlook_reply.eml")
        assert parsed.text.startswith("Hi Sam,\n\nIt still fails after clearing the cache.")
        assert parsed.html is not None and "<p>Hi Sam,</p>" in parsed.html
        assert "\r" not in parsed.text

    def test_broken_boundary_keeps_the_text(self) -> None:
        """The declared boundary never occurs: the parts are recovered with the one actually used."""
        parsed = load("broken_boundary.eml")
        assert parsed.text == "The roster import fails at row 12 with \u201cinvalid grade level\u201d."
        assert parsed.html == '<div dir="ltr">The roster import fails at row 12.</div>\n'
        assert any("no usable boundary" in d for d in parsed.defects)

    def test_multipart_without_boundary_keeps_text_and_attachment(self) -> None:
        """No boundary parameter at all: the delimiter lines are found and the parts recovered."""
        parsed = load("no_boundary_multipart.eml")
        assert "please reset the password for the front office account" in parsed.text
        assert "This is a multi-part message" not in parsed.text
        assert [(a.filename, a.data) for a in parsed.attachments] == [("form.json", b'{"form": "5521"}')]

    def test_unrecoverable_multipart_is_kept_as_text(self) -> None:
        """A multipart with no delimiter lines at all: its body is the text."""
        raw = headers("From: a@b.example", "Content-Type: multipart/mixed; boundary=zz", body="Just text.\n")
        assert parse(raw).text == "Just text."

    def test_null_bytes_are_dropped(self) -> None:
        """NULs vanish from headers and text."""
        parsed = load("null_bytes.eml")
        assert parsed.subject == "Report attached"
        assert parsed.text == "Line one continues\nLine two"

    def test_very_long_lines_are_kept_whole(self) -> None:
        """A 300,000 character line and a 2,000 line folded header parse without loss."""
        parsed = load("long_lines.eml")
        assert parsed.text == "abcdefghij" * 30000 + "\nend"
        assert parsed.subject == ("very long subject " * 200).strip()

    def test_inline_forward_adds_its_text_and_is_an_attachment(self) -> None:
        """message/rfc822 is an attachment; one not marked as attachment also contributes its text."""
        parsed = load("nested_forward.eml")
        assert parsed.text.startswith(
            "Forwarding a parent's complaint, see below.\n---------- Forwarded message"
        )
        assert "Subject: Grades missing" in parsed.text
        assert "My son's grades are missing from the portal." in parsed.text
        assert "This one is only attached." not in parsed.text
        assert [(a.filename, a.content_type) for a in parsed.attachments] == [
            ("message.eml", "message/rfc822"),
            ("Earlier complaint.eml", "message/rfc822"),
        ]
        forwarded = parse(parsed.attachments[0].data)
        assert forwarded.message_id == "<inner.1@home.example>"
        assert forwarded.from_ == Address("Parent Person", "parent@home.example")

    def test_html_rendering_is_bounded(self) -> None:
        """HTML beyond max_html_chars is rendered from its start, and that is noted."""
        html = "<p>start</p>" + "<p>filler</p>" * 1000 + "<p>tail</p>"
        raw = headers("From: a@b.example", "Content-Type: text/html", body=html)
        parsed = parse(raw, ParseLimits(max_html_chars=2000))
        assert parsed.text.startswith("start") and "tail" not in parsed.text
        assert any("HTML over 2000 characters" in d for d in parsed.defects)


class TestCharsets:
    """Charset labels that lie, name a subset, or name nothing known."""

    def test_gb2312_label_decodes_gbk_characters(self) -> None:
        """gb2312 is read as gb18030: U+9555 is outside GB 2312 but senders use it."""
        parsed = load("gb2312_subject.eml")
        assert parsed.subject == "\u5173\u4e8e\u6731\u9555\u57fa\u4e2d\u5b66\u7684\u8d26\u53f7\u95ee\u9898"
        assert parsed.from_ == Address("\u738b\u9555", "wang@zhu.example.cn")
        assert "\u6731\u9555\u57fa\u4e2d\u5b66\u7684\u8001\u5e08\u65e0\u6cd5\u767b\u5f55" in parsed.text

    def test_shift_jis_label_decodes_cp932_characters(self) -> None:
        """Shift_JIS is read as cp932: circled digits and IBM kanji come through."""
        parsed = load("shift_jis_body.eml")
        assert parsed.subject == "\u2460\u30ed\u30b0\u30a4\u30f3\u3067\u304d\u307e\u305b\u3093"
        assert parsed.from_ is not None and parsed.from_.name == "\u9ad9\u6a4b"
        assert parsed.text.startswith("\u9ad9\u6a4b\u3067\u3059\u3002\u2460\u3068\u2461")

    def test_ks_c_5601_label_decodes_cp949_syllables(self) -> None:
        """ks_c_5601-1987 is read as cp949, which has the syllables KS X 1001 lacks."""
        parsed = load("ks_c_5601_subject.eml")
        assert parsed.subject == "\ub620\ubc29\uac01\ud558 \uacc4\uc815 \ubb38\uc758"
        assert parsed.text.startswith("\ub620\ubc29\uac01\ud558")
        assert not parsed.defects

    def test_raw_latin1_header_bytes(self) -> None:
        """Unencoded 8-bit header bytes that are not UTF-8 are read as windows-1252."""
        parsed = load("latin1_raw_header.eml")
        assert parsed.subject == "Problema con la inscripci\u00f3n de alumnos"
        assert parsed.from_ == Address("Jos\u00e9 Mu\u00f1oz", "jose@colegio.example.es")
        assert "desde el caf\u00e9 del colegio" in parsed.text

    def test_iso_8859_1_label_on_utf8_text(self) -> None:
        """Text labelled iso-8859-1 that is valid UTF-8 is read as UTF-8, and that is noted."""
        parsed = load("mislabelled_utf8.eml")
        assert parsed.text == "Die Zeugnis\u00fcbersicht f\u00fcr Klasse 5b l\u00e4dt nicht."
        assert any("decoded as utf-8" in d for d in parsed.defects)

    def test_utf8_label_on_windows_1252_text(self) -> None:
        """Text labelled UTF-8 with no UTF-8 sequence in it is read as windows-1252."""
        parsed = load("cp1252_labelled_utf8.eml")
        assert parsed.text == "The \u201cExport\u201d button doesn\u2019t work \u2013 caf\u00e9 wifi."

    def test_us_ascii_label_on_8bit_text(self) -> None:
        """us-ascii over smart quotes: windows-1252."""
        assert load("us_ascii_8bit.eml").text == "Click \u201cSave\u201d \u2013 nothing happens."

    def test_unknown_charsets_never_raise(self) -> None:
        """An unknown charset label decodes with a guess and a note, in the body and in encoded words."""
        parsed = load("unknown_charset.eml")
        assert parsed.text == "Caf\u00e9 login fails \u2014 please help."
        assert parsed.subject == "Qapla\u2019 status"
        assert any("unknown charset 'x-klingon'" in d for d in parsed.defects)
        assert any(d.startswith("subject: unknown charset") for d in parsed.defects)

    def test_invalid_bytes_in_a_known_charset_are_replaced(self) -> None:
        """Bytes invalid in UTF-8 beside valid UTF-8 become U+FFFD rather than an error."""
        text, defect = decode_text("ok \u00e9 \xff".encode() + b"\xff", "utf-8")
        assert text == "ok \u00e9 \u00ff\ufffd"
        assert defect == "invalid UTF-8 bytes replaced"

    @pytest.mark.parametrize("label", ["base64", "rot13", "undefined", "idna", "utf-8\x00", "unicode_escape"])
    def test_codecs_that_are_not_charsets_are_unknown(self, label: str) -> None:
        """Python codec names that are not text charsets are treated as unknown labels."""
        text, defect = decode_text("caf\u00e9".encode(), label)
        assert text == "caf\u00e9"
        assert defect is not None and "unknown charset" in defect

    def test_adjacent_encoded_words_join_without_space(self) -> None:
        """RFC 2047 §6.2: white space between encoded words goes; a character split over two words joins."""
        parsed = load("encoded_words_adjacent.eml")
        assert parsed.subject == "R\u00e9sum\u00e9 of the incident \u2014 caf\u00e9"
        assert parsed.from_ == Address("Jos\u00e9 Mu\u00f1oz", "jose.munoz@ready.example.org")


class TestAddresses:
    """Senders and recipients, including forged-looking and broken ones."""

    def test_display_name_in_a_comment(self) -> None:
        """`ana@x (Ana Diaz)`: the comment is the name."""
        parsed = load("name_in_comment.eml")
        assert parsed.from_ == Address("Ana Diaz", "ana.diaz@lincoln.k12.example")
        assert parsed.to == [Address("Hero Support", "herosupport@schoolmint.com")]

    def test_missing_from_falls_back_to_reply_to(self) -> None:
        """No From: the first Reply-To is shown as the sender, and that is noted; nobody is trusted."""
        parsed = load("missing_from_reply_to.eml")
        assert parsed.from_ == Address("Morgan Reyes", "morgan.reyes@rise.example.org")
        assert parsed.author is None  # shown, never trusted
        assert "from missing or unreadable; reply-to used" in parsed.defects

    def test_junk_from_falls_back_to_sender(self) -> None:
        """A From without an address and no Reply-To: Sender."""
        parsed = load("junk_from_sender.eml")
        assert parsed.from_ == Address("", "office@lincoln.k12.example")
        assert parsed.sender == Address("", "office@lincoln.k12.example")

    def test_no_author_at_all(self) -> None:
        """No From, Reply-To or Sender: from_ is None."""
        assert parse(headers("To: a@b.example", "Subject: x")).from_ is None

    def test_cve_2023_27043_quoted_local_part(self) -> None:
        """`"alice@example.org"@evil.example` is a mailbox at evil.example, never alice@example.org."""
        parsed = load("crafted_address.eml")
        assert parsed.from_ == Address("", '"alice@example.org"@evil.example')

    def test_cve_2023_27043_phrase_before_angle_address(self) -> None:
        """In `alice@example.org <bob@evil.example>` the mailbox is the angle address."""
        parsed = load("crafted_address.eml")
        assert parsed.reply_to == [Address("alice@example.org", "bob@evil.example")]
        assert Address("alice@example.org)", "mallory@evil.example") in parsed.to
        assert all(a.address != "alice@example.org" for a in [*parsed.to, *parsed.reply_to])

    @pytest.mark.parametrize(
        "value",
        [
            '"alice@example.org"@evil.example',
            "alice@example.org <bob@evil.example>",
            "alice@example.org)<bob@evil.example>",
            "<alice@example.org>@evil.example",
            '"alice@example.org\\" <bob@evil.example>',
            "bob@evil.example (alice@example.org)",
            "alice@example.org@evil.example",
            "=?utf-8?q?alice=40example=2Eorg?= <bob@evil.example>",
        ],
    )
    def test_crafted_from_never_yields_the_victim(self, value: str) -> None:
        """Whatever else it yields, a crafted From never reads as alice@example.org."""
        parsed = parse(headers(f"From: {value}", "To: herosupport@schoolmint.com"))
        assert parsed.from_ is None or parsed.from_.address != "alice@example.org"

    def test_unreadable_from_is_shown_but_never_trusted(self) -> None:
        """A From with an unreadable entry is not half-trusted: no author; the reader still shows its mailbox."""
        parsed = parse(headers("From: Ana <ana@x.example> junk", "Reply-To: pat@x.example"))
        assert parsed.author is None
        assert parsed.from_ == Address("Ana", "ana@x.example")
        assert any(d.startswith("from ignored") for d in parsed.defects)

    def test_recipient_lists_skip_only_the_bad_entry(self) -> None:
        """To and Cc keep the entries that read well; quoted commas and groups stay whole."""
        parsed = parse(
            headers(
                "From: a@x.example",
                'To: "Diaz, Ana" <ana@X.Example>, junk, team: b@x.example, c@x.example;',
                "Cc: <d@x.example> (Dee)",
            )
        )
        assert parsed.to == [
            Address("Diaz, Ana", "ana@x.example"),
            Address("", "b@x.example"),
            Address("", "c@x.example"),
        ]
        assert parsed.cc == [Address("Dee", "d@x.example")]
        assert "to: skipped unreadable entry 'junk'" in parsed.defects

    def test_several_authors_keep_the_first(self) -> None:
        """RFC 5322 allows several authors; the first is the one a ticket can name."""
        parsed = parse(headers("From: a@x.example, b@x.example"))
        assert parsed.from_ == Address("", "a@x.example")


class TestFreeText:
    """Subjects and other free text: encoded words decoded, anything else exactly as the registry gives it."""

    @settings(max_examples=300, deadline=None)
    @given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=120).filter(lambda t: "=?" not in t))
    def test_text_without_encoded_words_reads_as_the_registry_reads_it(self, text: str) -> None:
        """parse's shortcut for text without `=?` gives what policy.default's registry would."""
        from email import policy

        from mailbot.parse import _clean_header, _unstructured

        assert _unstructured(text) == (_clean_header(str(policy.default.header_factory("subject", text))), [])

    def test_encoded_words_are_still_decoded(self) -> None:
        parsed = parse(headers("From: a@x.example", "Subject: =?utf-8?q?Caf=C3=A9?= ouvert"))
        assert parsed.subject == "Café ouvert"


class TestThreadKeys:
    """Message-ID, In-Reply-To, References and Date."""

    def test_missing_message_id_and_odd_references(self) -> None:
        """No Message-ID is None; a bare In-Reply-To gets brackets; References are unfolded, deduplicated."""
        parsed = load("missing_message_id.eml")
        assert parsed.message_id is None
        assert parsed.in_reply_to == "<ticket-15-introduction@schoolmint.com>"
        assert parsed.references == [
            "<CAF=roster.import.123@mail.gmail.com>",
            "<ticket-15-confirmation@schoolmint.com>",
            "<ticket-15-introduction@schoolmint.com>",
        ]

    def test_zone_less_date_is_utc(self) -> None:
        """-0000 (no zone information, RFC 5322 §3.3) is read as UTC."""
        assert load("missing_message_id.eml").date == datetime(2026, 11, 25, 9, 0, tzinfo=UTC)

    def test_date_keeps_its_offset(self) -> None:
        """The sender's offset is kept."""
        assert load("gmail_reply.eml").date == datetime(
            2026, 11, 25, 9, 0, tzinfo=timezone(timedelta(hours=-6))
        )

    def test_unreadable_date_is_none(self) -> None:
        """A date that cannot be read is None, and that is noted."""
        parsed = load("bad_date.eml")
        assert parsed.date is None
        assert "date: cannot read 'sometime last Tuesday'" in parsed.defects

    def test_message_id_without_brackets_is_bracketed(self) -> None:
        """Some mailers drop the angle brackets."""
        assert (
            parse(headers("From: a@b.example", "Message-ID: abc.123@b.example")).message_id
            == "<abc.123@b.example>"
        )

    def test_reply_thread_keys(self) -> None:
        """A Gmail reply names what it answers."""
        parsed = load("gmail_reply.eml")
        assert parsed.in_reply_to == "<ticket-15-introduction@schoolmint.com>"
        assert parsed.references[-1] == "<ticket-15-introduction@schoolmint.com>"


class TestHeaderRepairs:
    """Header blocks the standard parser would cut short."""

    def test_line_without_fold_is_rejoined(self) -> None:
        """A continuation that lost its leading space does not push Subject and the rest into the body."""
        parsed = load("header_cut_short.eml")
        assert parsed.subject == "Header block cut short"
        assert parsed.to == [
            Address("", "herosupport@schoolmint.com"),
            Address("", "principal@lincoln.k12.example"),
        ]
        assert parsed.message_id == "<cut.short@lincoln.k12.example>"
        assert parsed.text == "The body starts here."

    def test_body_without_separator_is_left_alone(self) -> None:
        """A body that starts without a blank line stays body when no known field follows."""
        parsed = parse(b"From: a@b.example\nSubject: x\nHello there,\nNote: the server is down.\n")
        assert parsed.text == "Hello there,\nNote: the server is down."

    def test_leading_blank_lines(self) -> None:
        """Blank lines before the headers do not turn the whole message into body."""
        parsed = load("leading_blank_line.eml")
        assert parsed.subject == "Leading blank lines" and parsed.text == "Body."

    def test_mbox_from_line(self) -> None:
        """An mbox "From " envelope line is not a header."""
        parsed = load("mbox_from_line.eml")
        assert parsed.from_ == Address("Ana Diaz", "ana.diaz@lincoln.k12.example")
        assert parsed.text == "Body after an mbox line."


class TestAttachments:
    """Attachment names, sizes, hashes and the inline flag."""

    def test_rfc2231_continued_name(self) -> None:
        """RFC 2231 encoded, continued filenames are decoded; hash and size are of the decoded bytes."""
        pdf = load("attachment_rfc2231_name.eml").attachments[0]
        assert pdf.filename == "\u20ac Rechnung M\u00e4rz.pdf"
        assert pdf.content_type == "application/pdf"
        assert pdf.data.startswith(b"%PDF-1.4")
        assert pdf.size == len(pdf.data)
        assert pdf.sha256 == hashlib.sha256(pdf.data).hexdigest()
        assert not pdf.inline

    def test_path_and_control_characters_are_stripped(self) -> None:
        """`..\\..\\Windows\\<RLO>fdp.exe<BEL>` becomes `fdp.exe`: no path, no bidi override, no control."""
        assert load("attachment_rfc2231_name.eml").attachments[1].filename == "fdp.exe"

    @pytest.mark.parametrize(
        ("parameter", "expected"),
        [
            ('filename="../../etc/passwd"', "passwd"),
            ('filename=".htaccess"', "htaccess"),
            ('filename="=?utf-8?B?w6lzdGUucGRm?="', "\u00e9ste.pdf"),
            ('filename=""', "attachment"),
            ("filename*=x-unknown''%41.txt", "A.txt"),
            ('filename="' + "a" * 300 + '.pdf"', "a" * 196 + ".pdf"),
        ],
    )
    def test_filename_sanitizing(self, parameter: str, expected: str) -> None:
        """Odd filename parameters give a safe name."""
        raw = headers(
            "From: a@b.example",
            "Content-Type: application/octet-stream",
            f"Content-Disposition: attachment; {parameter}",
            body="data",
        )
        assert parse(raw).attachments[0].filename == expected

    def test_raw_8bit_filename(self) -> None:
        """A filename in raw Latin-1 bytes is decoded like a header."""
        raw = (
            b"From: a@b.example\nContent-Type: text/csv\n"
            b'Content-Disposition: attachment; filename="r\xe9sum\xe9.csv"\n\nx'
        )
        assert parse(raw).attachments[0].filename == "r\u00e9sum\u00e9.csv"

    def test_related_image_with_content_id_is_inline(self) -> None:
        """An image referenced by Content-ID is inline; an attached PDF is not."""
        parsed = load("inline_image_related.eml")
        assert [(a.filename, a.inline) for a in parsed.attachments] == [
            ("logo.png", True),
            ("notes.pdf", False),
        ]
        assert parsed.text == "The logo looks stretched: [image: logo.png]"
        assert parsed.html is not None and "cid:logo@lincoln" in parsed.html

    def test_text_attachment_is_not_body(self) -> None:
        """A text/plain part marked as attachment stays an attachment."""
        raw = (
            b"From: a@b.example\nContent-Type: multipart/mixed; boundary=b\n\n"
            b"--b\nContent-Type: text/plain\n\nBody.\n"
            b"--b\nContent-Type: text/plain\nContent-Disposition: attachment; filename=log.txt\n\n"
            b"log line\n--b--\n"
        )
        parsed = parse(raw)
        assert parsed.text == "Body."
        assert [(a.filename, a.data) for a in parsed.attachments] == [("log.txt", b"log line")]


class TestFlags:
    """auto_submitted and bounce, from mailbot.automatic and mailbot.bounces."""

    def test_vacation_reply_is_automatic(self) -> None:
        """Auto-Submitted: auto-replied (with a comment) is automatic and not a bounce."""
        parsed = load("vacation_autoreply.eml")
        assert parsed.auto_submitted and not parsed.bounce

    def test_delivery_status_notification_is_a_bounce(self) -> None:
        """A multipart/report delivery-status is a bounce (and automatic); its report is an attachment."""
        parsed = load("dsn_report.eml")
        assert parsed.bounce and parsed.auto_submitted
        assert [a.content_type for a in parsed.attachments] == [
            "message/delivery-status",
            "text/rfc822-headers",
        ]
        assert b"Final-Recipient: rfc822; gone@lincoln.k12.example" in parsed.attachments[0].data

    def test_person_is_neither(self) -> None:
        """A person's mail is neither automatic nor a bounce."""
        parsed = load("gmail_reply.eml")
        assert not parsed.auto_submitted and not parsed.bounce


class TestLimits:
    """Hostile mail fails fast with UnparseableMessage before the standard parser sees it."""

    @staticmethod
    def nested_multiparts(depth: int) -> bytes:
        opening = b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth)
        )
        return b"From: a@b.example\n" + opening + b"Content-Type: text/plain\n\ndeep\n"

    def test_multipart_nesting_500_deep(self) -> None:
        """500 nested multiparts: refused (the standard library's re-serializer fails near 500)."""
        with pytest.raises(UnparseableMessage, match="nested more than 30 deep"):
            parse(self.nested_multiparts(500))

    def test_message_nesting_500_deep(self) -> None:
        """500 nested message/rfc822 parts: refused."""
        raw = b"From: a@b.example\n" + b"Content-Type: message/rfc822\n\n" * 500 + b"Subject: deep\n\nx\n"
        with pytest.raises(UnparseableMessage, match="nested more than 30 deep"):
            parse(raw)

    def test_nesting_at_the_limit_parses(self) -> None:
        """Depth 30 is allowed, 31 is not."""
        assert parse(self.nested_multiparts(30)).text == "deep"
        with pytest.raises(UnparseableMessage):
            parse(self.nested_multiparts(31))

    def test_100000_empty_parts(self) -> None:
        """100,000 empty parts: refused."""
        raw = (
            b"From: a@b.example\nContent-Type: multipart/mixed; boundary=x\n\n"
            + b"--x\n\n" * 100_000
            + b"--x--\n"
        )
        with pytest.raises(UnparseableMessage, match="more than 500 MIME parts"):
            parse(raw)

    def test_100000_report_blocks(self) -> None:
        """A delivery-status body of 100,000 field blocks (each one an entity to the parser): refused."""
        raw = (
            b"From: a@b.example\nContent-Type: multipart/report; report-type=delivery-status; boundary=r\n\n"
            b"--r\nContent-Type: message/delivery-status\n\n" + b"Action: failed\n\n" * 100_000 + b"--r--\n"
        )
        with pytest.raises(UnparseableMessage, match="more than 500 MIME parts"):
            parse(raw)

    def test_20000_headers(self) -> None:
        """20,000 header fields: refused."""
        raw = b"From: a@b.example\n" + b"".join(b"X-Filler-%d: v\n" % i for i in range(20_000)) + b"\nbody\n"
        with pytest.raises(UnparseableMessage, match="more than 1000 header fields"):
            parse(raw)

    def test_20000_headers_in_a_part(self) -> None:
        """The header limit holds for a part's header block too."""
        raw = (
            b"From: a@b.example\nContent-Type: multipart/mixed; boundary=x\n\n--x\n"
            + b"X-Filler: v\n" * 20_000
            + b"\nbody\n--x--\n"
        )
        with pytest.raises(UnparseableMessage, match="header fields"):
            parse(raw)

    def test_huge_header_field(self) -> None:
        """A header field over 64 KiB: refused (the header parser is quadratic in its length)."""
        raw = b"From: a@b.example\nTo: " + b'"",' * 30_000 + b"\n\nbody\n"
        with pytest.raises(UnparseableMessage, match="over the limit of 65536"):
            parse(raw)

    def test_huge_content_type(self) -> None:
        """A Content-Type over 8 KiB: refused before the standard parser reads it."""
        raw = b"From: a@b.example\nContent-Type: text/plain; x=" + b'"",' * 5000 + b"\n\nbody\n"
        with pytest.raises(UnparseableMessage, match="over the limit of 8192"):
            parse(raw)

    def test_many_complex_content_fields(self) -> None:
        """400 parts with 1 KiB of (comments) in Content-Type: refused (the standard parser takes 30 s)."""
        field = b"Content-Type: text/plain; x=" + b"(a)" * 330 + b"\n"
        raw = (
            b"From: a@b.example\nContent-Type: multipart/mixed; boundary=x\n\n"
            + (b"--x\n" + field + b"\nbody\n") * 400
            + b"--x--\n"
        )
        with pytest.raises(UnparseableMessage, match="Content-\\* fields more complex than the limit"):
            parse(raw)

    def test_many_plain_attachments_fit_the_complexity_budget(self) -> None:
        """498 ordinary attachment parts stay within every limit."""
        part = (
            b'--x\nContent-Type: application/pdf; name="file.pdf"\nContent-Disposition: attachment; '
            b'filename="file.pdf"\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n'
        )
        raw = b"From: a@b.example\nContent-Type: multipart/mixed; boundary=x\n\n" + part * 498 + b"--x--\n"
        assert len(parse(raw).attachments) == 498

    def test_identity_field_with_20000_junk_entries(self) -> None:
        """A From of 20,000 unreadable entries is void at the first one."""
        parsed = parse(b"From: " + b'"",' * 20_000 + b"\nReply-To: pat@x.example\n\nbody\n")
        assert parsed.from_ == Address("", "pat@x.example")

    def test_recipient_list_is_read_up_to_1000_entries(self) -> None:
        """A To of 3,000 mailboxes keeps the first 1,000, and says so."""
        to = b", ".join(b"u%d@x.example" % i for i in range(3000))
        parsed = parse(b"From: a@x.example\nTo: " + to + b"\n\nbody\n")
        assert len(parsed.to) == 1000 and parsed.to[-1] == Address("", "u999@x.example")
        assert "to: only the first 1000 of 3000 entries read" in parsed.defects

    def test_deeply_nested_comments(self) -> None:
        """10,000 nested comments would exhaust the header parser's recursion: refused."""
        raw = b"From: " + b"(" * 10_000 + b"a@b.example\n\nbody\n"
        with pytest.raises(UnparseableMessage, match="comments nested"):
            parse(raw)

    def test_size_limit(self) -> None:
        """Over max_bytes: refused, and the message says by how much."""
        with pytest.raises(UnparseableMessage, match="2000 bytes, over the limit of 1000"):
            parse(b"From: a@b.example\n\n" + b"x" * (2000 - 19), ParseLimits(max_bytes=1000))

    def test_empty_message(self) -> None:
        """Nothing to read: refused."""
        with pytest.raises(UnparseableMessage, match="empty"):
            parse(b"\r\n \n")

    def test_recovery_stays_within_the_part_budget(self) -> None:
        """A broken boundary hiding 10,000 parts: the recovery gives up, the message still parses."""
        raw = (
            b"From: a@b.example\nContent-Type: multipart/mixed; boundary=declared\n\n"
            + b"--used\nContent-Type: text/plain\n\npart\n" * 10_000
        )
        parsed = parse(raw)
        assert any("recovery abandoned" in d for d in parsed.defects)


class TestJson:
    """The `parse FILE` JSON of INTERFACE.md."""

    def test_keys_and_values(self) -> None:
        """Exactly the documented keys; "from" not "from_"; dates ISO 8601 with offset; no attachment data."""
        document = load("inline_image_related.eml").to_json()
        assert list(document) == [
            "message_id",
            "from",
            "to",
            "cc",
            "reply_to",
            "subject",
            "date",
            "in_reply_to",
            "references",
            "text",
            "html",
            "attachments",
            "auto_submitted",
            "bounce",
            "degraded",
        ]
        assert document["from"] == {"name": "Ana Diaz", "address": "ana.diaz@lincoln.k12.example"}
        assert document["date"] == "2026-11-24T10:00:00-05:00"
        assert set(document["attachments"][0]) == {"filename", "content_type", "size", "sha256", "inline"}
        json.dumps(document)

    def test_missing_values_are_null(self) -> None:
        """No From, no date, no HTML: null."""
        document = parse(headers("To: a@b.example")).to_json()
        assert document["from"] is None and document["date"] is None and document["html"] is None


class TestContentKey:
    """The key used when a message has no Message-ID."""

    def test_is_the_sha256_of_the_raw_bytes(self) -> None:
        """sha256 of exactly the raw bytes, prefixed."""
        assert (
            content_key(b"abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )


# The fuzz corpus: the nasty messages in tests/data and the real-world shapes tests/realworld.py builds.
CORPUS = [path.read_bytes() for path in sorted(DATA.glob("*.eml")) if path.stat().st_size < 20_000] + [
    case.raw for case in CASES
]
NASTY = [
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n\r\n",
    b"--",
    b"=?utf-8?q?",
    b"=?x-bad?b?",
    b"?=",
    b"<",
    b">",
    b"(",
    b")",
    b'"',
    b"\\",
    b":",
    b";",
    b",",
    b"\xff",
    b"\xc3",
    b"\x1b",
    b"boundary=",
    b"charset=gb2312",
    b"\nContent-Type: multipart/mixed; boundary=x\n",
    b"\n--x\n",
    b"\n--x--\n",
    b"\nContent-Type: message/rfc822\n\n",
    b"\nContent-Type: message/delivery-status\n\n",
    b"\nContent-Transfer-Encoding: base64\n",
    b"\nFrom: ",
    b"\nTo: ",
    b"\nDate: ",
    b"\nContent-Disposition: inline; filename*=",
]


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A corpus message with a few bytes inserted, deleted or replaced, or cut short."""
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        position = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if action == "insert":
            data[position:position] = draw(st.sampled_from(NASTY) | st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position : position + draw(st.integers(min_value=1, max_value=40))]
        elif action == "replace" and position < len(data):
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif action == "truncate":
            del data[position:]
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_messages(), st.binary(max_size=2000)))
def test_any_bytes_parse_or_raise_unparseable(raw: bytes) -> None:
    """Any bytes give a ParsedMessage whose JSON encodes as UTF-8, or UnparseableMessage; nothing else."""
    try:
        parsed = parse(raw)
    except UnparseableMessage as exc:
        assert str(exc)
        return
    assert isinstance(parsed, ParsedMessage)
    json.dumps(parsed.to_json(), ensure_ascii=False).encode("utf-8")


# Header fields of single-part mail, clean and not: what the fast path (`_single_part`) must read as the
# standard parser does, or leave to it.
FIELD_PIECES = [
    b"From: Ana Diaz <ana@lincoln.example>",
    b"From: ana@lincoln.example (Ana)",
    b"To: Hero Support <herosupport@schoolmint.com>, b@x.example",
    b"Subject: =?utf-8?q?caf=C3=A9?= question",
    b"Subject: caf\xc3\xa9 \xe9",
    b"Subject:",
    b"Subject:   \t",
    b"Date: Tue, 01 Dec 2026 10:00:00 -0500",
    b"Message-ID: <1.bench@lincoln.example>",
    b"MIME-Version: 1.0",
    b"Content-Type: text/plain; charset=utf-8",
    b"Content-Type: text/plain; format=flowed; delsp=yes",
    b"Content-Type: text/html",
    b"Content-Type: multipart/mixed; boundary=x",
    b"Content-Type: message/rfc822",
    b"Content-Type: message/delivery-status",
    b"Content-Type: Message/Partial; id=x",
    b"Content-Type: ;",
    b"Content-Type: text/plain; name*0=a; name*1=b.txt",
    b"Content-Transfer-Encoding: base64",
    b"Content-Disposition: attachment; filename=a.txt",
    b"X-Comment: " + b"(" * 35 + b")" * 35,
    b"X-Long: " + b"y" * 70_000,
    b" continued",
    b"\tcontinued",
    b" ",
    b"From someone@example.org Tue Dec  1 10:00:00 2026",
    b":no name",
    b"no colon at all",
    b"Subject : spaced",
    b"X-\x80: eight bit name",
    b"X-Bare: cr\rinside",
    b"X-Bare: lf\ninside",
]


@st.composite
def single_part_messages(draw: st.DrawFn) -> bytes:
    """Header lines drawn from FIELD_PIECES, fields of any value, any bytes; a blank line or not; a body."""
    names = st.sampled_from([b"Subject", b"From", b"To", b"Content-Type", b"Content-Disposition", b"X-Any"])
    any_value = st.builds(lambda name, value: name + b":" + value, names, st.binary(max_size=30))
    line = st.one_of(st.sampled_from(FIELD_PIECES), st.sampled_from(FIELD_PIECES), any_value, st.binary(max_size=30))
    lines = draw(st.lists(line, min_size=0, max_size=12))
    separator = draw(st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\n\n", b"\r\n", b"\r\n \r\n\r\n"]))
    body = draw(st.sampled_from([b"Hello.\r\n", b"", b"a\rb\nc\r\n\r\n--x\r\n", b"\xff\x00 body"]) | st.binary(max_size=40))
    return b"\r\n".join(lines) + separator + body


class TestSinglePart:
    """The fast path for single-part mail reads a message exactly as the standard parser does, or leaves it."""

    @staticmethod
    def readings(raw: bytes, limits: ParseLimits | None = None) -> tuple[object, object] | None:
        """(fast, full) standard-library messages of `raw`; None when the fast path leaves it."""
        from email import policy

        limits = limits or ParseLimits()
        from mailbot.parse import _HeaderCache, _parse_bytes, _prescan, _single_part

        message_policy = policy.default.clone(header_factory=_HeaderCache())
        fast = _single_part(raw, limits, message_policy)
        if fast is None:
            return None
        assert _prescan(raw, limits, message_policy).parts == 1  # never past a limit the pre-scan checks
        return fast, _parse_bytes(raw, message_policy)

    def test_common_mail_takes_the_fast_path(self) -> None:
        """A plain question, and most of the corpus's single-part mail, is read by the fast path."""
        question = headers("From: Ana <ana@x.example>", "Subject: Hi", "Content-Type: text/plain").replace(b"\n", b"\r\n")
        assert self.readings(question) is not None
        fast = [raw for raw in CORPUS if self.readings(raw) is not None]
        assert len(fast) > len(CORPUS) // 4

    def test_what_it_leaves_to_the_parser(self) -> None:
        """Multipart, message/*, a `From ` line, a stray line, bare line ends, and a field over a limit."""
        for raw in [
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nHi\r\n--x--\r\n",
            b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nHi\r\n",
            b"From a@b Tue Dec  1 10:00:00 2026\r\nSubject: x\r\n\r\nHi\r\n",
            b"Subject: x\r\nno colon\r\n\r\nHi\r\n",
            b"Subject: x\nTo: a@b\n\nHi\n",
            b"Subject: x\r\n",
            b"X-Long: " + b"y" * 70_000 + b"\r\n\r\nHi\r\n",
        ]:
            assert self.readings(raw) is None, raw[:40]
        assert self.readings(b"To: a@b\r\nSubject: x\r\n\r\nHi\r\n", ParseLimits(max_headers=1)) is None

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(single_part_messages(), mutated_messages()))
    def test_reads_as_the_standard_parser(self, raw: bytes) -> None:
        """Every attribute of the message object the same: fields as received, payload, defects, types."""
        found = self.readings(raw)
        if found is not None:
            fast, full = found
            assert vars(fast) == vars(full)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(single_part_messages(), mutated_messages()))
    def test_parse_reads_as_without_it(self, raw: bytes) -> None:
        """parse() with the fast path gives the same reading as the pre-scan and parser alone (or the same
        refusal)."""
        import mailbot.parse as parse_module

        def outcome() -> object:
            try:
                parsed = parse(raw)
            except UnparseableMessage as exc:
                return str(exc)
            return (repr(parsed), parsed.to_json(), [(k, v) for k, v in parsed.message.raw_items()])

        with_fast = outcome()
        original = parse_module._single_part
        parse_module._single_part = lambda *args: None  # type: ignore[assignment]
        try:
            assert outcome() == with_fast
        finally:
            parse_module._single_part = original


class TestDates:
    """The Date field's common form, read without the standard library's general reader, reads the same."""

    @staticmethod
    def outcome(read: object, value: str) -> object:
        try:
            date = read(value)  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - the kind of failure is what is compared
            return type(exc)
        return (date, date.utcoffset())

    @settings(max_examples=500, deadline=None)
    @given(
        st.sampled_from(["", "Tue, ", "Mon, ", "tue, ", "Xyz, ", "Tue,"]),
        st.integers(min_value=0, max_value=99),
        st.sampled_from(["Jan", "Feb", "Dec", "dec", "Sept"]),
        st.integers(min_value=0, max_value=9999),
        st.tuples(*[st.integers(min_value=0, max_value=99)] * 3),
        st.sampled_from(["+", "-"]),
        st.integers(min_value=0, max_value=9999),
        st.sampled_from(["", " ", " (EST)"]),
    )
    def test_reads_as_parsedate_to_datetime(
        self, weekday: str, day: int, month: str, year: int, time: tuple[int, int, int], sign: str, zone: int, tail: str
    ) -> None:
        """Days, hours and zones past their ranges, short years, -0000, day names: the same datetime, or the
        same exception."""
        from email.utils import parsedate_to_datetime

        from mailbot.parse import _read_date

        value = f"{weekday}{day:02d} {month} {year:04d} {time[0]:02d}:{time[1]:02d}:{time[2]:02d} {sign}{zone:04d}{tail}"
        assert self.outcome(_read_date, value) == self.outcome(parsedate_to_datetime, value)

    def test_common_dates(self) -> None:
        """A zone east and west, +0000 and -0000 (no zone: read as UTC)."""
        assert parse(headers("Date: Tue, 01 Dec 2026 10:00:00 -0500")).date == datetime(
            2026, 12, 1, 15, 0, tzinfo=UTC
        )
        assert parse(headers("Date: 1 Dec 2026 10:00:00 +0530")).date.utcoffset() == timedelta(hours=5, minutes=30)  # type: ignore[union-attr]
        assert parse(headers("Date: Tue, 01 Dec 2026 10:00:00 +0000")).date.utcoffset() == timedelta(0)  # type: ignore[union-attr]
        assert parse(headers("Date: Tue, 01 Dec 2026 10:00:00 -0000")).date == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
