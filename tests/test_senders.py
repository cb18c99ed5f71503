"""mailbot.senders: whom a message shows and whom it trusts, and the promise between the parser and the DKIM
verifier: a trusted author is always the one From field dkimpy reads."""

from __future__ import annotations

import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbot.automatic import header_addresses
from mailbot.parse import parse
from mailbot.senders import Address, lenient_mailbox, trusted_author
from tests.realworld import CASES


class TestLenient:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("Claudia.Shu@yahoo.com.", ("", "Claudia.Shu@yahoo.com")),
            ("MAILER-DAEMON", ("", "MAILER-DAEMON")),
            ("postmaster (Mail System)", ("Mail System", "postmaster")),
            ("Reyes, Morgan <morgan@Rise.Example.org>", ("Reyes, Morgan", "morgan@rise.example.org")),
            ('"Name " <>, "LTD" <sales@ltd.example>', ("LTD", "sales@ltd.example")),
            ("pat@x.example. (Pat Lee)", ("Pat Lee", "pat@x.example")),
            ("Ana <ana@x.example.>", ("Ana", "ana@x.example")),
        ],
    )
    def test_what_a_person_reads(self, value: str, expected: tuple[str, str]) -> None:
        assert lenient_mailbox(value) == expected

    @pytest.mark.parametrize(
        "value",
        [
            "junk",
            "<alice@example.org>@evil.example",
            "alice@example.org@evil.example",
            "<a@x.example> <b@y.example>",
            "",
        ],
    )
    def test_nothing_rather_than_a_guess(self, value: str) -> None:
        """Junk and shapes that read two ways (CVE-2023-27043) give no sender at all."""
        assert lenient_mailbox(value) is None


class TestTrusted:
    ANA = Address("Ana", "ana@x.example")

    def test_one_field_one_mailbox(self) -> None:
        assert trusted_author([[self.ANA]], ["ana@X.example"], block_repaired=False) == (self.ANA, "")

    @pytest.mark.parametrize(
        ("fields", "registry", "repaired", "why"),
        [
            ([[ANA]], ["ana@x.example"], True, "repairs"),
            ([], [], False, "0 From fields"),
            ([[ANA], [ANA]], ["ana@x.example"] * 2, False, "2 From fields"),
            ([None], [], False, "exactly one readable mailbox"),
            ([[ANA, Address("", "b@x.example")]], ["ana@x.example"], False, "exactly one readable mailbox"),
            ([[Address("", "ana@x.example.")]], ["ana@x.example."], False, "malformed"),
            ([[ANA]], ["Ana"], False, "reads two ways"),  # `Office [Main] @ x <...>`: the registry sees "Office"
            ([[ANA]], ["Smith", "ana@x.example"], False, "reads two ways"),
        ],
    )
    def test_anything_less_is_no_one(self, fields, registry, repaired: bool, why: str) -> None:  # type: ignore[no-untyped-def]
        author, reason = trusted_author(fields, registry, block_repaired=repaired)
        assert author is None and why in reason


# Header-block damage of the kinds real mail shows. A lone CR is left out: how it splits lines is issue 12's
# (the parser and dkimpy must first agree on it), tested with the doors.
_DAMAGE = [
    b"a stray line\r\n",
    b"  stray continuation\r\n",
    b"From: garbage\r\n",
    b"From: Eve <eve@evil.example>\r\n",
    b"Subject : spaced\r\n",
    b"From : Eve <eve@evil.example>\r\n",
    b"\r\n",
    b"X-Note: fine\r\n",
    b"From eve@evil.example Mon Dec  1 10:00:00 2026\r\n",
    b"Reply-To: eve@evil.example\r\n",
    b"Sender: eve@evil.example\r\n",
]
_HEADS = [case.raw for case in CASES] + [
    b"From: Ana Diaz <ana@lincoln.example>\r\nTo: herosupport@schoolmint.com\r\nSubject: x\r\n\r\nbody\r\n"
]


@st.composite
def damaged_heads(draw: st.DrawFn) -> bytes:
    raw = draw(st.sampled_from(_HEADS))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [line + b"\r\n" for line in head.split(b"\r\n")]
    for _ in range(draw(st.integers(1, 4))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(_DAMAGE)))
    return b"".join(lines) + b"\r\n" + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_heads())
def test_a_trusted_author_is_the_one_from_dkim_reads(raw: bytes) -> None:
    """Whatever the damage, a trusted author is the single From field of the header block that dkimpy parses
    (and the one mailbot.automatic reads); anything less trusts no one."""
    parsed = parse(raw)
    if parsed.author is None:
        return
    headers, _ = dkim.rfc822_parse(raw)  # raises on a block it cannot read: then no author may be trusted
    froms = [value for name, value in headers if name.lower() == b"from"]
    assert len(froms) == 1
    [mailbox] = header_addresses(parsed.message, "From")
    assert mailbox.addr_spec.lower() == parsed.author.address.lower()
    assert parsed.author.address.split("@")[0].encode() in froms[0]
