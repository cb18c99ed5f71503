"""mailbot.automatic: which messages mailbot must never auto-answer, and where an automatic reply may go."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbot import compose
from mailbot.automatic import (
    LOOP_HEADER,
    MAX_ADDRESS_FIELD,
    automatic_reason,
    header_addresses,
    is_own_mail,
    loop_mark,
    may_auto_reply_to,
)

DATA = Path(__file__).parent / "data"
AUTO_FILES = sorted(path.name for path in DATA.glob("auto_*.eml"))
BOUNCE_FILES = sorted(path.name for path in DATA.glob("bounce_*.eml"))
HUMAN_FILES = sorted(path.name for path in DATA.glob("human_*.eml"))
# A plain customer question whose subject happens to start with "Out of office".
PERSON = "human_out_of_office_subject.eml"
PERSON_ADDRESS = "mark.ellison@cedar-valley.example.org"


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def load(name: str) -> EmailMessage:
    return parse((DATA / name).read_bytes())


def rewritten(base: str, drop: str | None, name: str, value: str) -> EmailMessage:
    """The sample `base` as bytes, without the `drop` header (and its folded lines), plus `name: value`.

    Edited as bytes, not through EmailMessage, which refuses to build the malformed headers tested here.
    """
    head, _, body = (DATA / base).read_bytes().partition(b"\n\n")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\n"):
        if not line.startswith((b" ", b"\t")):
            dropping = drop is not None and line.split(b":", 1)[0].lower() == drop.lower().encode()
        if not dropping:
            kept.append(line)
    kept.append(f"{name}: {value}".encode())
    return parse(b"\n".join(kept) + b"\n\n" + body)


def with_header(name: str, value: str) -> EmailMessage:
    return rewritten(PERSON, None, name, value)


def with_replaced(name: str, value: str) -> EmailMessage:
    return rewritten(PERSON, name, name, value)


def test_the_sample_sets_are_present() -> None:
    """The glob-driven tests below would pass vacuously without their files."""
    assert len(AUTO_FILES) >= 7 and len(BOUNCE_FILES) >= 7 and len(HUMAN_FILES) >= 3


class TestSampleMessages:
    """Real-world shapes: each automatic sample is recognised for the right reason, each human one is not."""

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            ("auto_autoreply_header.eml", "autoresponder (X-Autoreply header)"),
            ("auto_list_message.eml", "Precedence: list"),
            ("auto_mailbot_own.eml", "X-Mailbot-Loop header (sent by a mailbot)"),
            (
                "auto_noreply_notification.eml",
                "sent by a mail system or list manager (no-reply@sis.lincoln-high.example.org)",
            ),
            ("auto_out_of_office_exchange.eml", "null return path (a bounce or an auto-reply)"),
            ("auto_precedence_bulk.eml", "Precedence: bulk"),
            ("auto_vacation_gmail.eml", "Auto-Submitted: auto-replied"),
        ],
    )
    def test_automatic_samples_give_their_first_sign(self, name: str, reason: str) -> None:
        """The reason names the first sign in the documented order."""
        assert automatic_reason(load(name), None) == reason

    def test_every_automatic_sample_has_a_test_of_its_reason(self) -> None:
        """A new auto_ sample must be added to the table above."""
        tested = {"auto_autoreply_header.eml", "auto_list_message.eml", "auto_mailbot_own.eml"}
        tested |= {"auto_noreply_notification.eml", "auto_out_of_office_exchange.eml"}
        tested |= {"auto_precedence_bulk.eml", "auto_vacation_gmail.eml"}
        assert set(AUTO_FILES) == tested

    @pytest.mark.parametrize("name", BOUNCE_FILES)
    def test_bounces_are_automatic(self, name: str) -> None:
        """Every bounce has a null return path, as RFC 5321 section 4.5.5 requires."""
        assert automatic_reason(load(name), None) == "null return path (a bounce or an auto-reply)"

    @pytest.mark.parametrize("name", BOUNCE_FILES)
    def test_bounces_are_automatic_without_their_return_path(self, name: str) -> None:
        """Delivered over SMTP with the envelope lost, a bounce is still known by its sender or its report body."""
        message = load(name)
        del message["Return-Path"]
        reason = automatic_reason(message, None)
        assert reason is not None and reason.startswith(
            ("Auto-Submitted", "multipart/report", "sent by a mail")
        )

    @pytest.mark.parametrize("name", HUMAN_FILES)
    def test_people_are_not_automatic(self, name: str) -> None:
        """Quoted bounces, forwarded bounces and an "Out of office" subject are a person's words."""
        message = load(name)
        assert automatic_reason(message, None) is None
        assert automatic_reason(message, message["From"].addresses[0].addr_spec) is None


class TestEachSignAlone:
    """Each rule, added alone to a person's message, makes it automatic."""

    @pytest.mark.parametrize(
        ("name", "value", "reason"),
        [
            ("Auto-Submitted", "auto-generated", "Auto-Submitted: auto-generated"),
            ("Auto-Submitted", "Auto-Replied (vacation)", "Auto-Submitted: auto-replied"),
            (
                "Auto-Submitted",
                '(by sieve) auto-notified; owner-email="a@b.example"',
                "Auto-Submitted: auto-notified",
            ),
            ("Auto-Submitted", "auto-remailed", "Auto-Submitted: auto-remailed"),
            ("Precedence", "junk", "Precedence: junk"),
            ("Precedence", "BULK", "Precedence: bulk"),
            ("Precedence", "list (mailman)", "Precedence: list"),
            ("List-Id", "K-12 admins <k12.lists.example>", "mailing list (List-Id header)"),
            ("List-Unsubscribe", "<mailto:leave@lists.example>", "mailing list (List-Unsubscribe header)"),
            ("List-Post", "NO", "mailing list (List-Post header)"),
            ("X-Auto-Response-Suppress", "All", "X-Auto-Response-Suppress: All"),
            (
                "X-Auto-Response-Suppress",
                "DR, OOF, AutoReply",
                "X-Auto-Response-Suppress: DR, OOF, AutoReply",
            ),
            ("X-Autorespond", "Thanks for writing", "autoresponder (X-Autorespond header)"),
            ("X-Autoreply", "yes", "autoresponder (X-Autoreply header)"),
            (LOOP_HEADER, "someone-elses-token", "X-Mailbot-Loop header (sent by a mailbot)"),
            ("Sender", "owner-k12-admins@lists.example", "sent by a mail system or list manager"),
        ],
    )
    def test_header(self, name: str, value: str, reason: str) -> None:
        """The reason says which header and value made the call."""
        found = automatic_reason(with_header(name, value), None)
        assert found is not None and found.startswith(reason)

    @pytest.mark.parametrize(
        "sender",
        [
            "MAILER-DAEMON@mx.example.org",
            "Mail Delivery System <Mailer-Daemon@mx.example.org>",
            "postmaster@school.example",
            "LISTSERV@lists.example",
            "majordomo@lists.example",
            "owner-k12-admins@lists.example",
            "k12-admins-request@lists.example",
            "noreply@sis.example",
            "No Reply <no-reply+jobs@sis.example>",
            "DoNotReply@district.example",
            "do_not_reply@district.example",
        ],
    )
    def test_system_from_address(self, sender: str) -> None:
        """RFC 3834's list-manager names, postmaster and the no-reply family, in any case, tag ignored."""
        found = automatic_reason(with_replaced("From", sender), None)
        assert found is not None and found.startswith("sent by a mail system or list manager")

    @pytest.mark.parametrize(
        "envelope",
        ["MAILER-DAEMON", "<owner-k12@lists.example>", "k12-request@lists.example", "noreply@sis.example"],
    )
    def test_system_envelope_sender(self, envelope: str) -> None:
        """The return path is checked like From; sendmail's bare `MAILER-DAEMON` counts too."""
        found = automatic_reason(load(PERSON), envelope)
        assert found is not None and found.startswith("sent by a mail system or list manager")

    @pytest.mark.parametrize("envelope", ["", "<>", " <> "])
    def test_null_envelope_sender(self, envelope: str) -> None:
        """A null reverse-path is a bounce or an auto-reply (RFC 5321 section 4.5.5, RFC 3834 section 3)."""
        assert automatic_reason(load(PERSON), envelope) == "null return path (a bounce or an auto-reply)"

    def test_the_envelope_wins_over_the_return_path_header(self) -> None:
        """The Return-Path header stands in only when no envelope is known."""
        message = with_replaced("Return-Path", "<>")
        assert automatic_reason(message, None) == "null return path (a bounce or an auto-reply)"
        assert automatic_reason(message, PERSON_ADDRESS) is None

    def test_a_report_body(self) -> None:
        """A multipart/report (RFC 6522), here a read receipt from a person's address, is machine-made."""
        message = load(PERSON)
        message.replace_header(
            "Content-Type", 'multipart/report; report-type=disposition-notification; boundary="b"'
        )
        assert automatic_reason(message, PERSON_ADDRESS) == "multipart/report (a machine-made report)"


class TestNotSigns:
    """Look-alikes that a person's message may carry stay human."""

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("Auto-Submitted", "no"),
            ("Auto-Submitted", "No (a person wrote this)"),
            ("Auto-Submitted", ""),
            ("Precedence", "first-class"),
            ("X-Auto-Response-Suppress", "DR, NDR, RN, NRN"),
            ("Reply-To", "noreply@district.example"),
            ("Subject", "Automatic reply: are you open on Friday?"),
        ],
    )
    def test_header(self, name: str, value: str) -> None:
        """`no`, receipts-only suppression, Reply-To and subjects are not evidence."""
        assert automatic_reason(with_replaced(name, value), PERSON_ADDRESS) is None

    @pytest.mark.parametrize(
        "sender",
        [
            "ownership@school.example",
            "request-demo@school.example",
            "replyto@school.example",
            "bounce@school.example",
        ],
    )
    def test_look_alike_from_address(self, sender: str) -> None:
        """Only the exact names and the `owner-` / `-request` forms count."""
        assert automatic_reason(with_replaced("From", sender), sender) is None


class TestOwnMail:
    """Mail mailbot sent is recognised by its loop token."""

    def test_the_header_name_matches_what_compose_writes(self) -> None:
        """compose marks outgoing mail with the header this module looks for."""
        assert LOOP_HEADER == "X-Mailbot-Loop" == compose.LOOP_HEADER

    def test_own_mail_coming_back(self) -> None:
        """Our confirmation, forwarded back to the support address, carries our token."""
        assert is_own_mail(load("auto_mailbot_own.eml"), "7f1c2e9a")

    def test_another_token_is_not_ours(self) -> None:
        """Another mailbot's mark is automatic but not our own mail."""
        message = load("auto_mailbot_own.eml")
        assert not is_own_mail(message, "7f1c2e9b")
        assert automatic_reason(message, None) is not None

    def test_whitespace_and_several_marks(self) -> None:
        """Folding whitespace is ignored and any one of several marks may be ours."""
        message = with_header(LOOP_HEADER, "other")
        message[LOOP_HEADER] = "  7f1c2e9a "
        assert is_own_mail(message, "7f1c2e9a")

    @pytest.mark.parametrize("name", HUMAN_FILES)
    def test_people_are_not_us(self, name: str) -> None:
        """Without the header nothing is our own mail."""
        assert not is_own_mail(load(name), "7f1c2e9a")

    def test_an_empty_token_is_refused(self) -> None:
        """An empty token would match an empty header anyone can write."""
        with pytest.raises(ValueError, match="loop_token"):
            is_own_mail(with_header(LOOP_HEADER, ""), "")


class TestMayAutoReplyTo:
    """An automatic reply goes to the From address only when the envelope agrees, and never to a machine."""

    def test_a_person_with_a_matching_return_path_header(self) -> None:
        """With no envelope known, the delivered Return-Path header is used."""
        assert may_auto_reply_to(load(PERSON), None) == PERSON_ADDRESS

    @pytest.mark.parametrize(
        "envelope",
        [
            PERSON_ADDRESS,
            "<MARK.ELLISON@CEDAR-VALLEY.EXAMPLE.ORG>",
            "bounces+7731@mail.cedar-valley.example.org",
        ],
    )
    def test_aligned_envelope(self, envelope: str) -> None:
        """The same organizational domain is enough: a subdomain or another mailbox of it qualifies."""
        assert may_auto_reply_to(load(PERSON), envelope) == PERSON_ADDRESS

    @pytest.mark.parametrize(
        "envelope", ["mark.ellison@cedar-valley.example.net", "spoof@attacker.example", ""]
    )
    def test_unaligned_or_null_envelope(self, envelope: str) -> None:
        """A From that the envelope does not back may be a stranger's address: no reply at all."""
        assert may_auto_reply_to(load(PERSON), envelope) is None

    def test_public_suffix_siblings_are_not_aligned(self) -> None:
        """k12.ca.us is a public suffix: two districts under it are two organizations."""
        message = with_replaced("From", "Ana <ana@lincoln.k12.ca.us>")
        assert may_auto_reply_to(message, "ana@lincoln.k12.ca.us") == "ana@lincoln.k12.ca.us"
        assert may_auto_reply_to(message, "ana@oakland.k12.ca.us") is None

    def test_unknown_return_path(self) -> None:
        """Without an envelope or a Return-Path header nothing vouches for From."""
        message = load(PERSON)
        del message["Return-Path"]
        assert may_auto_reply_to(message, None) is None

    def test_reply_to_is_ignored(self) -> None:
        """Reply-To may point at a list or a third party; the reply still goes to the writer."""
        message = with_header("Reply-To", "victim@elsewhere.example")
        assert may_auto_reply_to(message, PERSON_ADDRESS) == PERSON_ADDRESS

    @pytest.mark.parametrize(
        "from_value", ["a@cedar-valley.example.org, b@cedar-valley.example.org", "<", "Team:;", "undisclosed"]
    )
    def test_not_exactly_one_mailbox(self, from_value: str) -> None:
        """Several, none or an unparseable From: nobody to answer."""
        assert may_auto_reply_to(with_replaced("From", from_value), PERSON_ADDRESS) is None

    def test_two_from_headers(self) -> None:
        """RFC 5322 section 3.6 allows one From header; two are a forgery's tell."""
        message = with_header("From", "other@cedar-valley.example.org")
        assert may_auto_reply_to(message, PERSON_ADDRESS) is None

    @pytest.mark.parametrize("name", AUTO_FILES + BOUNCE_FILES)
    def test_never_to_a_machine(self, name: str) -> None:
        """Lists, auto-replies, bounces and our own mail get no automatic reply, whatever the envelope."""
        message = load(name)
        authors = message["From"].addresses
        assert may_auto_reply_to(message, None) is None
        assert may_auto_reply_to(message, authors[0].addr_spec) is None


HEADER_NAMES = ["From", "Sender", "Return-Path", "Auto-Submitted", "Precedence", "X-Auto-Response-Suppress"]
HOSTILE_BYTES = st.binary(max_size=40).map(lambda raw: raw.replace(b"\r", b" ").replace(b"\n", b" "))


@given(
    st.lists(st.tuples(st.sampled_from(HEADER_NAMES), HOSTILE_BYTES), max_size=6),
    st.none() | st.text(max_size=30),
)
def test_hostile_headers_never_raise(headers: list[tuple[str, bytes]], envelope: str | None) -> None:
    """Whatever bytes a header holds, the answer is a value, never an exception that would stall intake."""
    raw = b"".join(name.encode() + b": " + value + b"\n" for name, value in headers) + b"\nbody\n"
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    reason = automatic_reason(message, envelope)
    address = may_auto_reply_to(message, envelope)
    assert reason is None or address is None
    assert is_own_mail(message, "token") is False


class TestLoopMark:
    """loop_mark: our mark is an HMAC of the message's own Message-ID; header_addresses stays fast."""

    def test_mark_depends_on_secret_and_message_id(self) -> None:
        mark = loop_mark(b"s" * 32, "<a@schoolmint.com>")
        assert mark == loop_mark(b"s" * 32, "<a@schoolmint.com>") and len(mark) == 32
        assert mark != loop_mark(b"t" * 32, "<a@schoolmint.com>")
        assert mark != loop_mark(b"s" * 32, "<b@schoolmint.com>")
        with pytest.raises(ValueError, match="secret"):
            loop_mark(b"", "<a@schoolmint.com>")

    def test_overlong_address_field_names_nobody(self) -> None:
        """A From far longer than one mailbox needs is not parsed (the stdlib parser is quadratic in it)."""
        huge = "x(y)" * (MAX_ADDRESS_FIELD // 4) + " <ana@lincoln.example>"
        message = with_replaced("From", huge)
        assert header_addresses(message, "From") == []
        assert may_auto_reply_to(message, PERSON_ADDRESS) is None
