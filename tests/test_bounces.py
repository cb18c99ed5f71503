"""mailbot.bounces: what a delivery failure or delay report says, and what is not one."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbot.bounces import Bounce, read_bounce

DATA = Path(__file__).parent / "data"
AUTO_FILES = sorted(path.name for path in DATA.glob("auto_*.eml"))
HUMAN_FILES = sorted(path.name for path in DATA.glob("human_*.eml"))

EXPECTED = {
    "bounce_postfix_dsn.eml": Bounce(
        recipients=["ana.lopez@lincoln-high.example.org"],
        permanent=True,
        status="5.1.1",
        diagnostic="550 5.1.1 <ana.lopez@lincoln-high.example.org>: Recipient address rejected: "
        "User unknown in virtual mailbox table",
        original_message_id="<q9Xv3LmT2pR8sK1wZ4yB6nD0@schoolmint.com>",
    ),
    "bounce_delayed.eml": Bounce(
        recipients=["t.brooks@cedar-valley.example.org"],
        permanent=False,
        status="4.4.1",
        diagnostic="connect to mx.cedar-valley.example.org[198.51.100.90]:25: Connection timed out",
        original_message_id="<Yd3kR8pN1vB6wQ2tL5hX9cM4@schoolmint.com>",
        delayed=True,
    ),
    "bounce_exchange_ndr.eml": Bounce(
        recipients=["d.nguyen@maplewood.example.edu"],
        permanent=True,
        status="5.1.10",
        diagnostic="550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        original_message_id="<Lr7bM2xC5nJ8kS4tF1wH9dP6@schoolmint.com>",
    ),
    "bounce_gmail.eml": Bounce(
        recipients=["m.chen.teacher@gmail.com"],
        permanent=True,
        status="5.1.1",
        diagnostic="550 5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. For more "
        "information, go to https://support.google.com/mail/?p=NoSuchUser "
        "d75a77b69052e-4b0e5a3c5f1si1187712cf.412 - gsmtp",
        original_message_id="<Wc5nF8tY2kL6pQ0vH3sD9rB1@schoolmint.com>",
    ),
    "bounce_gmail_legacy.eml": Bounce(
        recipients=["rkhan@riverside-usd.example.org"],
        permanent=True,
        status="5.1.1",
        diagnostic="550 5.1.1 <rkhan@riverside-usd.example.org>... User unknown",
        original_message_id="<Pm2tG6yK9wE4rV1cN8zA5hQ3@schoolmint.com>",
    ),
    "bounce_exim.eml": Bounce(
        recipients=["p.okafor@westfield-district.example.net"],
        permanent=True,
        status="5.2.1",
        diagnostic="550 5.2.1 <p.okafor@westfield-district.example.net>: mailbox disabled, not accepting messages",
        original_message_id="<Zt8pQ2rW5vN1xK7mB3cL9hF4@schoolmint.com>",
    ),
    "bounce_qmail.eml": Bounce(
        recipients=["jwilliams@oakridge-academy.example.com"],
        permanent=True,
        status="5.1.1",
        diagnostic="Sorry, no mailbox here by that name. (#5.1.1)",
        original_message_id="<Hn4sV7kD1qP9wT3zR6mX2bJ8@schoolmint.com>",
    ),
}


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def load(name: str) -> EmailMessage:
    return parse((DATA / name).read_bytes())


def dsn(*recipient_blocks: str, report_type: str = "delivery-status") -> EmailMessage:
    """A minimal RFC 3464 report from a relay, with the given per-recipient blocks."""
    blocks = "\n".join(block.strip() + "\n" for block in recipient_blocks)
    return parse(
        (
            "Return-Path: <>\n"
            "From: Mail Delivery System <MAILER-DAEMON@relay.example.net>\n"
            "To: herosupport@schoolmint.com\n"
            "Subject: Delivery report\n"
            "MIME-Version: 1.0\n"
            f'Content-Type: multipart/report; report-type={report_type}; boundary="R"\n'
            "\n"
            "--R\n"
            "Content-Type: text/plain\n"
            "\n"
            "Delivery report.\n"
            "--R\n"
            "Content-Type: message/delivery-status\n"
            "\n"
            "Reporting-MTA: dns; relay.example.net\n"
            "\n"
            f"{blocks}"
            "--R\n"
            "Content-Type: text/rfc822-headers\n"
            "\n"
            "From: Hero Support <herosupport@schoolmint.com>\n"
            "Message-ID: <sent-1@schoolmint.com>\n"
            "--R--\n"
        ).encode()
    )


def text_bounce(sender: str, subject: str, body: str) -> EmailMessage:
    """A plain-text notice as older MTAs send them."""
    return parse(
        f"Return-Path: <>\nFrom: {sender}\nTo: herosupport@schoolmint.com\nSubject: {subject}\n\n{body}".encode()
    )


def test_every_bounce_sample_has_an_expectation() -> None:
    """A new bounce_ sample must say what it should read as."""
    assert sorted(path.name for path in DATA.glob("bounce_*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_world_bounces(name: str) -> None:
    """Postfix, Exim, qmail, Exchange Online and Gmail (old and new) bounces, and a Postfix delay warning."""
    assert read_bounce(load(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", AUTO_FILES)
def test_automatic_mail_is_not_a_bounce(name: str) -> None:
    """Out-of-office, vacation (Auto-Submitted: auto-replied), list and bulk mail are not bounces."""
    assert read_bounce(load(name)) is None


@pytest.mark.parametrize("name", HUMAN_FILES)
def test_people_writing_about_bounces_are_not_bounces(name: str) -> None:
    """ "Re: Undeliverable" quoting a bounce, or a bounce forwarded as an attachment, is a person's message."""
    assert read_bounce(load(name)) is None


class TestDeliveryStatusNotifications:
    """RFC 3464 reports: the per-recipient blocks decide."""

    def test_success_notice_is_not_a_bounce(self) -> None:
        """Action: delivered / relayed / expanded report success (RFC 3464 section 2.3.3)."""
        report = dsn(
            "Final-Recipient: rfc822; a@school.example\nAction: delivered\nStatus: 2.0.0",
            "Final-Recipient: rfc822; b@school.example\nAction: relayed\nStatus: 2.0.0",
        )
        assert read_bounce(report) is None

    def test_failed_recipients_win_over_delayed_ones(self) -> None:
        """A report with both is about the failures; the delayed address is left for its own report."""
        report = dsn(
            "Final-Recipient: rfc822; late@school.example\nAction: delayed\nStatus: 4.4.1",
            "Final-Recipient: rfc822; gone@school.example\nAction: failed\nStatus: 5.1.1",
            "Final-Recipient: rfc822; also-gone@school.example\nAction: failed\nStatus: 5.1.1",
        )
        bounce = read_bounce(report)
        assert bounce is not None
        assert bounce.recipients == ["also-gone@school.example", "gone@school.example"]
        assert bounce.permanent and bounce.status == "5.1.1" and not bounce.delayed
        assert bounce.original_message_id == "<sent-1@schoolmint.com>"

    def test_giving_up_after_temporary_errors_is_not_permanent(self) -> None:
        """A 4.x.x status means the address may work tomorrow, even when the MTA gave up (Action: failed)."""
        report = dsn("Final-Recipient: rfc822; a@school.example\nAction: failed\nStatus: 4.4.7")
        assert read_bounce(report) == Bounce(
            ["a@school.example"], False, "4.4.7", None, "<sent-1@schoolmint.com>"
        )

    def test_failure_without_status_is_permanent(self) -> None:
        """Action: failed alone is a failure; there is no status to soften it."""
        report = dsn("Final-Recipient: rfc822; a@school.example\nAction: failed (bad address)")
        assert read_bounce(report) == Bounce(
            ["a@school.example"], True, None, None, "<sent-1@schoolmint.com>"
        )

    def test_original_recipient_is_preferred(self) -> None:
        """The address we sent to, not the mailbox an alias expanded it into (RFC 3464 section 2.3.1)."""
        report = dsn(
            "Original-Recipient: rfc822; help@school.example\n"
            "Final-Recipient: rfc822; it-team-7@internal.school.example\n"
            "Action: failed\n"
            "Status: 5.2.2 (mailbox full)"
        )
        bounce = read_bounce(report)
        assert (
            bounce is not None and bounce.recipients == ["help@school.example"] and bounce.status == "5.2.2"
        )

    def test_final_recipient_without_address_type(self) -> None:
        """Some MTAs write an angle address with no `rfc822;` type."""
        bounce = read_bounce(dsn("Final-Recipient: <a@school.example>\nAction: failed\nStatus: 5.1.1"))
        assert bounce is not None and bounce.recipients == ["a@school.example"]

    def test_opensmtpd_error_action(self) -> None:
        """OpenSMTPD writes the non-standard `Action: error` for a failure."""
        bounce = read_bounce(dsn("Final-Recipient: rfc822; a@school.example\nAction: error\nStatus: 5.0.0"))
        assert bounce is not None and bounce.permanent and bounce.recipients == ["a@school.example"]

    def test_multiline_smtp_reply_is_joined(self) -> None:
        """A folded multi-line reply reads as one sentence, its code and status said once."""
        report = dsn(
            "Final-Recipient: rfc822; a@school.example\nAction: failed\nStatus: 5.7.1\n"
            "Diagnostic-Code: smtp; 550-5.7.1 Message rejected\n 550-5.7.1 by policy:\n 550 5.7.1 spam suspected"
        )
        bounce = read_bounce(report)
        assert (
            bounce is not None and bounce.diagnostic == "550 5.7.1 Message rejected by policy: spam suspected"
        )

    def test_read_receipt_is_not_a_bounce(self) -> None:
        """A disposition notification (RFC 8098) is a report, but about reading, not delivery."""
        receipt = parse(
            b"From: ana@school.example\nSubject: Read: Your request\nMIME-Version: 1.0\n"
            b'Content-Type: multipart/report; report-type=disposition-notification; boundary="R"\n\n'
            b"--R\nContent-Type: text/plain\n\nYour message was read.\n"
            b"--R\nContent-Type: message/disposition-notification\n\n"
            b"Final-Recipient: rfc822; ana@school.example\nDisposition: manual-action/MDN-sent-manually; displayed\n"
            b"--R--\n"
        )
        assert read_bounce(receipt) is None


class TestPlainTextBounces:
    """Bounces without a delivery-status part: only from a mail system, read through flufl.bounce."""

    QMAIL_BODY = (
        "Hi. This is the qmail-send program at mail.example.net.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        "<x@school.example>:\n"
        "host 10.5.1.1 said: 550 No such user here\n\n"
        "--- Below this line is a copy of the message.\n\n"
        "Message-ID: <sent-2@schoolmint.com>\n"
    )

    def test_localised_subject_with_a_recognised_body(self) -> None:
        """A German "Unzustellbar" subject means nothing to us, but the qmail body is recognised."""
        bounce = read_bounce(text_bounce("MAILER-DAEMON@mail.example.net", "Unzustellbar", self.QMAIL_BODY))
        assert bounce is not None and bounce.recipients == ["x@school.example"]

    def test_an_ip_address_is_not_a_status(self) -> None:
        """10.5.1.1 holds "5.1.1"; the bare reply code 550 is what the server said."""
        bounce = read_bounce(text_bounce("MAILER-DAEMON@mail.example.net", "failure notice", self.QMAIL_BODY))
        assert bounce == Bounce(
            recipients=["x@school.example"],
            permanent=True,
            status=None,
            diagnostic="host 10.5.1.1 said: 550 No such user here",
            original_message_id="<sent-2@schoolmint.com>",
        )

    def test_bounce_subject_with_nothing_readable(self) -> None:
        """A mail system's failure notice is a bounce even when no address can be read from it."""
        bounce = read_bounce(
            text_bounce(
                "postmaster@mail.example.net", "Mail delivery failed", "Your message could not be sent.\n"
            )
        )
        assert bounce == Bounce([], True, None, None, None)

    def test_delay_warning_without_status(self) -> None:
        """sendmail's warning subject marks a delay, not a failure."""
        bounce = read_bounce(
            text_bounce(
                "Mail Delivery Subsystem <MAILER-DAEMON@mail.example.net>",
                "Warning: could not send message for past 4 hours",
                "    **********************************************\n"
                "    **      THIS IS A WARNING MESSAGE ONLY      **\n"
                "    **  YOU DO NOT NEED TO RESEND YOUR MESSAGE  **\n"
                "    **********************************************\n",
            )
        )
        assert bounce is not None and not bounce.permanent and bounce.delayed

    def test_mail_system_notice_that_is_not_a_bounce(self) -> None:
        """A postmaster's report with no bounce subject and no failed address is not a bounce."""
        notice = text_bounce(
            "postmaster@mail.example.net",
            "Postfix SMTP server: errors from unknown[192.0.2.9]",
            "Transcript.\n",
        )
        assert read_bounce(notice) is None

    def test_a_person_cannot_send_a_bounce(self) -> None:
        """A bounce subject and a null return path from a person's address (an auto-reply) is no bounce."""
        reply = text_bounce("Dana <dana@school.example>", "Undeliverable: your request", self.QMAIL_BODY)
        assert read_bounce(reply) is None


def returned_copy_bounce(notice: bytes, returned_header: bytes) -> EmailMessage:
    """A MAILER-DAEMON notice with a bogus charset and an attached copy whose From and Message-ID are given."""
    return parse(
        b"From: MAILER-DAEMON@mx.example\nSubject: failure notice\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="B"\n\n'
        b"--B\nContent-Type: text/plain; charset=x-bogus\n\n" + notice + b"\n"
        b"--B\nContent-Type: message/rfc822\n\n"
        b"From: " + returned_header + b"\nMessage-ID: " + returned_header + b"\n\nhi\n--B--\n"
    )


@pytest.mark.parametrize("value", [b"<", b"<<>>", b'"', b"(", b""])
def test_malformed_message_id_in_the_returned_copy(value: bytes) -> None:
    """Python's Message-ID parser raises IndexError on "<"; the bounce is still read, without an id."""
    bounce = read_bounce(returned_copy_bounce(b"<a@school.example>: 550 5.1.1 no such user", value))
    assert bounce is not None and bounce.status == "5.1.1" and bounce.original_message_id is None


def test_a_message_id_with_8_bit_bytes_names_no_message() -> None:
    """A returned copy whose Message-ID holds a raw 8-bit byte (found by the intake's fuzz test): the bounce
    is read, naming no message of ours, rather than a value no database accepts as text."""
    bounce = read_bounce(returned_copy_bounce(b"<a@school.example>: 550 5.1.1 no such user", b"<\xe89Xv3@schoolmint.com>"))
    assert bounce is not None and bounce.status == "5.1.1" and bounce.original_message_id is None


@given(st.binary(max_size=300), st.binary(max_size=60))
def test_hostile_bounces_never_raise(notice: bytes, returned_header: bytes) -> None:
    """Whatever a forged MAILER-DAEMON message holds, reading it gives a value, not an exception."""
    header = returned_header.replace(b"\r", b" ").replace(b"\n", b" ")
    bounce = read_bounce(returned_copy_bounce(notice, header))
    assert bounce is not None and isinstance(bounce.recipients, list)
