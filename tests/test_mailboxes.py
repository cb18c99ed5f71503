"""mailbot.mailboxes: the simple forms read exactly as the header registry reads them, all else left to it."""

from __future__ import annotations

import string
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, cast
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mailbot.parse
from mailbot import automatic
from mailbot.automatic import header_addresses
from mailbot.mailboxes import simple_mailboxes
from mailbot.parse import Address, parse

FIELDS = ["from", "to", "cc", "reply-to", "sender"]
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
QTEXT = "".join(c for c in map(chr, range(32, 127)) if c not in '"\\')

atom = st.text(ATEXT, min_size=1, max_size=8)
label = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=8)
addr_spec = st.builds(
    "{}@{}".format,
    st.lists(atom, min_size=1, max_size=3).map(".".join),
    st.lists(label, min_size=1, max_size=3).map(".".join),
)
display_name = st.one_of(
    st.lists(atom, min_size=1, max_size=3).map(" ".join), st.text(QTEXT, max_size=12).map('"{}"'.format)
)
mailbox = st.one_of(
    addr_spec,
    addr_spec.map("<{}>".format),
    st.builds("{}{}<{}>".format, display_name, st.sampled_from(["", " "]), addr_spec),
)
separator = st.sampled_from([",", ", ", " ,", " , "])
simple_value = st.builds(
    lambda first, rest: first + "".join(sep + box for sep, box in rest),
    mailbox,
    st.lists(st.tuples(separator, mailbox), max_size=3),
).filter(lambda value: "=?" not in value)
# One character slipped into a simple value: the near misses a strict pattern must still get right.
near_miss = st.builds(
    lambda value, index, char: value[:index] + char + value[index:],
    simple_value,
    st.integers(0, 200),
    st.sampled_from(list(' \t"\\()<>@,.:;[]=?é\x00\x7f') + ["=?utf-8?q?x?=", "\udcc3"]),
)


def registry(name: str, value: str) -> tuple[list[tuple[str, str, str]], list[Any]]:
    """The registry's (display_name, username, domain) triples for `value`, and its defects."""
    header = policy.default.header_factory(name, value)
    return [(a.display_name, a.username, a.domain) for a in header.addresses], list(header.defects)


def triples(value: str) -> list[tuple[str, str, str]] | None:
    found = simple_mailboxes(value)
    return None if found is None else [(a.display_name, a.username, a.domain) for a in found]


def registry_header_addresses(message: EmailMessage, name: str) -> list[Any]:
    """automatic.header_addresses as it was before the fast path: every value through the registry."""
    try:
        return [a for value in message.get_all(name, []) for a in getattr(value, "addresses", ())]
    except automatic._PARSER_FAILURES:
        return []


class TestSimpleForms:
    """Values in the simple forms are read, and read exactly as the registry reads them."""

    @settings(max_examples=300, deadline=None)
    @given(name=st.sampled_from(FIELDS), value=simple_value)
    def test_simple_values_match_the_registry(self, name: str, value: str) -> None:
        """Every generated simple entry or list is taken, with the registry's mailboxes and no defect."""
        assert triples(value) == registry(name, value)[0]
        assert registry(name, value)[1] == []

    @settings(max_examples=300, deadline=None)
    @given(name=st.sampled_from(FIELDS), value=near_miss)
    def test_near_misses_are_left_to_the_registry_or_match_it(self, name: str, value: str) -> None:
        """A value one character off a simple one is either refused or read just as the registry reads it."""
        found = triples(value)
        if found is not None:
            assert (found, []) == registry(name, value)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("ana@lincoln.example", [("", "ana", "lincoln.example")]),
            ("Ana Diaz <Ana.Diaz@Lincoln.Example>", [("Ana Diaz", "Ana.Diaz", "Lincoln.Example")]),
            ('"Diaz, Ana" <ana@x.org>, bob@y.org', [("Diaz, Ana", "ana", "x.org"), ("", "bob", "y.org")]),
            ('"a@b.com" <c@d.com>', [("a@b.com", "c", "d.com")]),
            ("<ana@x.org>", [("", "ana", "x.org")]),
            ("O'Brien<o.brien+tag@x.org>", [("O'Brien", "o.brien+tag", "x.org")]),
        ],
    )
    def test_examples(self, value: str, expected: list[tuple[str, str, str]]) -> None:
        """Common forms read to the registry's display name, username and domain."""
        assert triples(value) == expected == registry("to", value)[0]


class TestOtherForms:
    """Anything outside the simple forms gets None, the signal to ask the registry."""

    @pytest.mark.parametrize(
        "value",
        [
            "",
            " ",
            "ana@x.org (Ana Diaz)",
            "(comment) ana@x.org",
            "=?utf-8?q?Ana_D=C3=ADaz?= <ana@x.org>",
            '"=?utf-8?q?Ana?=" <ana@x.org>',
            '"Ana \\"the boss\\"" <ana@x.org>',
            '"a\\b" <ana@x.org>',
            "team: ana@x.org, bob@y.org;",
            "undisclosed-recipients:;",
            '"a@b.com"@c.com',
            '"ana"@x.org',
            "alice@example.org)<bob@example.org>",
            "ana@x.org<bob@y.org>",
            "<@route.example:ana@x.org>",
            "ana@[192.0.2.1]",
            "Ana Díaz <ana@x.org>",
            "ana@exämple.org",
            "ana\udcc3@x.org",
            "ana@x.org junk",
            "ana@x.org,",
            "ana@x.org, , bob@y.org",
            " ana@x.org",
            "ana@x.org ",
            "Ana  Diaz <ana@x.org>",
            "Ana\t<ana@x.org>",
            "ana@x.org,\r\n bob@y.org",
            "John Q. Public <john@x.org>",
            "Ana <ana@x.org",
            "Ana <<ana@x.org>>",
            "<ana@x.org> Ana",
            "ana.@x.org",
            "ana..b@x.org",
            "ana@x..org",
            "ana@.x.org",
            "ana",
            "@x.org",
            "ana@",
            "<>",
            "ana@x.org\x00",
        ],
    )
    def test_refused(self, value: str) -> None:
        """Comments, encoded words, escapes, groups, routes, crafted and non-ASCII addresses, junk: refused."""
        assert simple_mailboxes(value) is None


class TestCallers:
    """parse() and header_addresses() give what they gave when every field went through the registry."""

    @settings(max_examples=300, deadline=None)
    @given(value=st.one_of(simple_value, near_miss))
    def test_header_addresses_unchanged(self, value: str) -> None:
        """From and Sender of a policy.default message, a parse() message and a compat32 one are unchanged."""
        raw = f"From: {value}\r\nSender: {value}\r\n\r\nHello.\r\n".encode("utf-8", "surrogateescape")
        for message in (
            cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(raw)),
            cast(EmailMessage, BytesParser().parsebytes(raw)),
            parse(raw).message,
        ):
            for name in ("From", "sender"):
                assert header_addresses(message, name) == registry_header_addresses(message, name)

    @settings(max_examples=300, deadline=None)
    @given(value=st.one_of(simple_value, near_miss))
    def test_parse_unchanged(self, value: str) -> None:
        """parse() reads the same address fields and defects with the fast path as with the registry alone."""
        raw = f"From: {value}\r\nTo: {value}\r\nCc: {value}\r\nReply-To: {value}\r\n\r\nHi.\r\n"
        fast = parse(raw.encode("utf-8", "surrogateescape"))
        with mock.patch.object(mailbot.parse, "cached_mailboxes", lambda value: None):
            slow = parse(raw.encode("utf-8", "surrogateescape"))
        assert (fast.to_json(), fast.defects, fast.sender) == (slow.to_json(), slow.defects, slow.sender)

    def test_header_objects_are_read_as_before(self) -> None:
        """A field set in code is a header object, read through its own .addresses."""
        message = EmailMessage()
        message["From"] = "Ana Diaz <ana@x.org>"
        assert header_addresses(message, "From") == registry_header_addresses(message, "From")
        assert [a.addr_spec for a in header_addresses(message, "From")] == ["ana@x.org"]

    @pytest.mark.parametrize(
        ("from_", "to", "author", "recipients"),
        [
            (
                "Ana Diaz <Ana.Diaz@Lincoln.Example>",
                '"Diaz, Ana" <ana@x.org>, bob@y.org',
                Address("Ana Diaz", "Ana.Diaz@lincoln.example"),
                [Address("Diaz, Ana", "ana@x.org"), Address("", "bob@y.org")],
            ),
            (
                "ana@x.org (Ana Diaz)",
                "Hero Support <help@schoolmint.com>",
                Address("Ana Diaz", "ana@x.org"),
                [Address("Hero Support", "help@schoolmint.com")],
            ),
            (
                '"a@b.com"@c.com',
                "alice@example.org)<bob@example.org>, carol@z.org",
                Address("", '"a@b.com"@c.com'),
                [Address("alice@example.org)", "bob@example.org"), Address("", "carol@z.org")],
            ),
        ],
    )
    def test_parse_examples(
        self, monkeypatch: pytest.MonkeyPatch, from_: str, to: str, author: Address, recipients: list[Address]
    ) -> None:
        """parse() reads the same mailboxes and defects with the fast path as with the registry alone."""
        raw = f"From: {from_}\nTo: {to}\nSubject: Login\n\nHello.\n".encode()
        fast = parse(raw)
        monkeypatch.setattr(mailbot.parse, "cached_mailboxes", lambda value: None)
        slow = parse(raw)
        assert (fast.from_, fast.to) == (author, recipients)
        assert (fast.to_json(), fast.defects) == (slow.to_json(), slow.defects)
