"""Sender authentication: trusted Authentication-Results, DKIM with our own checks, alignment."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import dkim
import dkim.util
import pytest
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import parse_pem_private_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbot import authn as authn_module
from mailbot.authn import (
    MAX_RESULTS_PARSED,
    AuthVerdict,
    aligned,
    authenticate,
    organizational_domain,
    trusted_path,
)
from mailbot.dns import FixedResolver, Resolver, dkim_dnsfunc
from mailbot.newlines import normalise
from mailbot.parse import UnparseableMessage, parse

TRUSTED = ["mx.schoolmint.com"]
BODY = b"Hello,\r\n\r\nI cannot log in since this morning.\r\n\r\nAna\r\n"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A fresh RSA key: (private key PEM, the DKIM TXT record that publishes its public half)."""
    path: Path = tmp_path_factory.mktemp("dkim") / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return path.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def message(from_address: str = "ana@example.com", *, above: bytes = b"", body: bytes = BODY) -> bytes:
    """A customer's message; `above` goes on top of the header block, where receivers add theirs."""
    head = (
        f"From: Ana <{from_address}>\r\n"
        "To: herosupport@schoolmint.com\r\n"
        "Subject: Login broken\r\n"
        "Date: Tue, 24 Nov 2026 10:00:00 -0500\r\n"
        "Message-ID: <c1@example.com>\r\n"
        "\r\n"
    )
    return above + head.encode() + body


def sign(
    raw: bytes, private_key: bytes, domain: str = "example.com", selector: str = "sel", **kw: object
) -> bytes:
    """`raw` with a DKIM-Signature by dkimpy prepended."""
    headers = kw.pop("include_headers", [b"from", b"to", b"subject", b"date", b"message-id"])
    signature = dkim.sign(raw, selector.encode(), domain.encode(), private_key, include_headers=headers, **kw)
    return bytes(signature) + raw


def sign_without_from(raw: bytes, private_key: bytes, domain: str = "example.com") -> bytes:
    """A valid signature whose h= leaves From out (dkimpy's sign() refuses to make one; a forger will)."""
    signer = dkim.DKIM(raw)
    signer.hasher = hashlib.sha256
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    include = (b"to", b"subject", b"date")
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(signer.body)).digest())
    fields = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/simple"), (b"d", domain.encode()),
        (b"s", b"sel"), (b"t", str(int(time.time())).encode()), (b"h", b" : ".join(include)),  # wall clock ok: dkimpy checks t= against it
        (b"bh", body_hash), (b"b", b"0" * 60),
    ]  # fmt: skip
    value = signer.gen_header(fields, include, policy, b"DKIM-Signature", parse_pem_private_key(private_key))
    return b"DKIM-Signature: " + bytes(value) + raw


def keys(record: bytes, *domains: str, selector: str = "sel") -> FixedResolver:
    return FixedResolver({f"{selector}._domainkey.{domain}": [record] for domain in domains})


def dkimpy_says(raw: bytes, resolver: Resolver) -> bool:
    """dkimpy's own verdict on the topmost signature, to show a refusal is our check, not dkimpy's."""
    return bool(dkim.verify(raw, dnsfunc=dkim_dnsfunc(resolver)))


def check(
    raw: bytes, resolver: Resolver, from_address: str = "ana@example.com", trusted: Sequence[str] = TRUSTED
) -> AuthVerdict:
    """The verdict on `raw`, with the header fields the parser reads from it (as the intake passes them)."""
    try:
        fields = list(parse(raw).message.raw_items())
    except UnparseableMessage:
        fields = []  # the intake never gets this far; authenticate must still not raise
    return authenticate(raw, from_address, fields=fields, trusted_authserv_ids=trusted, resolver=resolver)


class TestOrganizationalDomain:
    @pytest.mark.parametrize(
        ("domain", "expected"),
        [
            ("mail.schoolmint.com", "schoolmint.com"),
            ("schoolmint.com", "schoolmint.com"),
            ("a.b.example.co.uk", "example.co.uk"),
            ("Mail.SchoolMint.COM.", "schoolmint.com"),
            ("co.uk", "co.uk"),
            ("mail.bücher.de", "xn--bcher-kva.de"),
        ],
    )
    def test_registrable_domain(self, domain: str, expected: str) -> None:
        """The name one below the public suffix, lowercased and in A-labels."""
        assert organizational_domain(domain) == expected


class TestAligned:
    @pytest.mark.parametrize(
        ("signer", "author"),
        [
            ("schoolmint.com", "mail.schoolmint.com"),
            ("mail.schoolmint.com", "schoolmint.com"),
            ("a.example.com", "b.example.com"),
            ("EXAMPLE.com", "example.COM"),
            ("xn--bcher-kva.de", "mail.bücher.de"),
        ],
    )
    def test_same_organization_is_aligned(self, signer: str, author: str) -> None:
        """Relaxed alignment: parent, child or sibling names of one organization (RFC 7489 3.1.1)."""
        assert aligned(signer, author)

    @pytest.mark.parametrize(
        ("signer", "author"),
        [
            ("schoolmint.net", "schoolmint.com"),
            ("example.com", "example.com.evil.test"),
            ("co.uk", "example.co.uk"),
            ("alice.github.io", "bob.github.io"),
            ("strasse.de", "straße.de"),
            ("", ""),
        ],
    )
    def test_other_organizations_are_not(self, signer: str, author: str) -> None:
        """Different registrable domains, a public suffix, a private suffix's tenants, IDNA 2003's ß->ss."""
        assert not aligned(signer, author)


class TestDkim:
    def test_valid_aligned_signature_passes(self, key: tuple[bytes, bytes]) -> None:
        """A good signature by the From domain authenticates it."""
        verdict = check(sign(message(), key[0]), keys(key[1], "example.com"))
        assert (
            verdict == AuthVerdict(True, "dkim", "example.com", verdict.reason)
            and "example.com" in verdict.reason
        )

    def test_parent_domain_signs_for_subdomain(self, key: tuple[bytes, bytes]) -> None:
        """d=schoolmint.com authenticates From user@mail.schoolmint.com (relaxed alignment)."""
        raw = sign(message("user@mail.schoolmint.com"), key[0], "schoolmint.com")
        verdict = check(raw, keys(key[1], "schoolmint.com"), "user@mail.schoolmint.com")
        assert (verdict.authenticated, verdict.method, verdict.domain) == (True, "dkim", "schoolmint.com")

    def test_tampered_body_fails(self, key: tuple[bytes, bytes]) -> None:
        """A body changed after signing breaks the signature."""
        raw = sign(message(), key[0]).replace(b"cannot log in", b"can log in")
        verdict = check(raw, keys(key[1], "example.com"))
        assert not verdict.authenticated and not verdict.temporary
        assert "body hash mismatch" in verdict.reason

    def test_signature_without_from_fails(self, key: tuple[bytes, bytes]) -> None:
        """h= without From proves nothing about the From, though dkimpy accepts the signature."""
        raw = sign_without_from(message(), key[0])
        resolver = keys(key[1], "example.com")
        assert dkimpy_says(raw, resolver)
        verdict = check(raw, resolver)
        assert not verdict.authenticated and "dkim signature does not cover From" in verdict.reason

    def test_body_length_with_appended_text_fails(self, key: tuple[bytes, bytes]) -> None:
        """With l=, text appended after signing still verifies in dkimpy; we refuse it."""
        raw = (
            sign(message(), key[0], length=True) + b"Click here to reset your password: http://evil.test/\r\n"
        )
        resolver = keys(key[1], "example.com")
        assert dkimpy_says(raw, resolver)
        verdict = check(raw, resolver)
        assert not verdict.authenticated and "l= does not cover the whole body" in verdict.reason

    def test_body_length_covering_the_whole_body_passes(self, key: tuple[bytes, bytes]) -> None:
        """An l= equal to the canonicalised body leaves nothing unsigned, so it is accepted."""
        verdict = check(sign(message(), key[0], length=True), keys(key[1], "example.com"))
        assert verdict.authenticated and verdict.method == "dkim"

    def test_unaligned_signing_domain_fails(self, key: tuple[bytes, bytes]) -> None:
        """A valid signature by another domain says nothing about the From domain; dkimpy accepts it."""
        raw = sign(message(), key[0], "attacker.test")
        resolver = keys(key[1], "attacker.test")
        assert dkimpy_says(raw, resolver)
        verdict = check(raw, resolver)
        assert not verdict.authenticated and "not aligned with From domain example.com" in verdict.reason

    def test_no_signature_is_not_authenticated(self, key: tuple[bytes, bytes]) -> None:
        """A plain message is not authenticated, and says why."""
        verdict = check(message(), keys(key[1], "example.com"))
        assert verdict == AuthVerdict(
            False, "none", None, "no trusted Authentication-Results; no DKIM signature"
        )

    def test_missing_key_fails_permanently(self, key: tuple[bytes, bytes]) -> None:
        """No key published (NXDOMAIN) is a failure, not a reason to retry."""
        verdict = check(sign(message(), key[0]), FixedResolver({}))
        assert not verdict.authenticated and not verdict.temporary and "does not verify" in verdict.reason

    def test_dns_failure_is_temporary(self, key: tuple[bytes, bytes]) -> None:
        """A DNS timeout is "try again later", never a pass and never a final fail."""
        resolver = FixedResolver({}, failing=["sel._domainkey.example.com"])
        verdict = check(sign(message(), key[0]), resolver)
        assert (verdict.authenticated, verdict.temporary) == (False, True)
        assert "DNS failure" in verdict.reason

    def test_another_valid_signature_wins_over_a_dns_failure(self, key: tuple[bytes, bytes]) -> None:
        """When one signature's key cannot be fetched but another verifies, the message passes."""
        raw = sign(sign(message(), key[0], selector="good"), key[0], selector="down")
        resolver = FixedResolver(
            {"good._domainkey.example.com": [key[1]]}, failing=["down._domainkey.example.com"]
        )
        verdict = check(raw, resolver)
        assert (verdict.authenticated, verdict.temporary, verdict.method) == (True, False, "dkim")

    def test_dns_failure_after_a_refused_signature_is_temporary(self, key: tuple[bytes, bytes]) -> None:
        """A refused signature does not settle the matter while another could not be checked."""
        raw = sign(sign(message(), key[0], selector="down"), key[0], "attacker.test")
        resolver = FixedResolver(
            {"sel._domainkey.attacker.test": [key[1]]}, failing=["down._domainkey.example.com"]
        )
        verdict = check(raw, resolver)
        assert (verdict.authenticated, verdict.temporary) == (False, True)
        assert "not aligned" in verdict.reason and "DNS failure" in verdict.reason

    def test_second_from_header_is_refused(self, key: tuple[bytes, bytes]) -> None:
        """Two From headers: which one a reader sees is anyone's guess (RFC 7489 section 6.6.1)."""
        raw = b"From: boss@example.com\r\n" + sign(message(), key[0])
        verdict = check(raw, keys(key[1], "example.com"))
        assert not verdict.authenticated and "2 From headers" in verdict.reason

    @pytest.mark.parametrize(
        "raw",
        [
            b" folded line before any header\r\nFrom: ana@example.com\r\n\r\nbody\r\n",
            b"no colon here\r\n\r\n",
        ],
    )
    def test_unparseable_header_block_is_refused(self, raw: bytes) -> None:
        """A header block dkimpy cannot parse is a refusal with a reason, not an exception."""
        verdict = check(raw, FixedResolver({}))
        assert not verdict.authenticated and "header block cannot be parsed" in verdict.reason

    @settings(max_examples=200, deadline=None)
    @given(
        parts=st.lists(
            st.one_of(
                st.sampled_from(
                    [
                        b"From: ana@example.com\r\n",
                        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; l=0; b=AAAA\r\n",
                        b"Authentication-Results: mx.schoolmint.com; dmarc=none header.from=example.com\r\n",
                        b"\r\n",
                        b"\tfolded\r\n",
                        b"\n",
                        b"X-Junk: \xff\r\n",
                        b"From example.com\r\n",
                    ]
                ),
                st.binary(max_size=10),
            ),
            max_size=12,
        )
    )
    def test_arbitrary_message_never_raises(self, parts: list[bytes]) -> None:
        """Any bytes at all give a verdict, not an exception."""
        assert isinstance(check(b"".join(parts), FixedResolver({})), AuthVerdict)

    def test_from_address_without_domain(self, key: tuple[bytes, bytes]) -> None:
        """An address with no domain cannot be aligned with anything."""
        verdict = check(sign(message(), key[0]), keys(key[1], "example.com"), "ana")
        assert not verdict.authenticated and "has no domain" in verdict.reason

    @pytest.mark.parametrize(
        ("signature", "expected"),
        [
            (b"garbage without tags", "malformed"),
            (b"v=1; d=example.com; d=example.org; s=sel; h=from", "malformed"),
            (b"v=1; a=rsa-sha256; s=sel; h=from; bh=AAAA; b=AAAA", "d= or h= missing"),
            (
                b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from; l=12x; bh=AAAA; b=AAAA",
                "l= value is not a decimal integer",
            ),
            (
                b"v=1; a=rsa-sha256; c=odd/odd; d=example.com; s=sel; h=from; l=3; bh=AAAA; b=AAAA",
                "invalid c=",
            ),
            (b"v=1; a=rsa-sha256; d=ex\xffample.com; s=sel; h=from; bh=AAAA; b=AAAA", "d= is not UTF-8"),
            (b"v=1; a=rsa-md5; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA", "unknown signature algorithm"),
            (b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AAAA; b=!!!!", "not valid base64"),
            (b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AA\x00A; b=AAAA", "bh= is not base64"),
            (b"v=1; a=rsa-sha256; c=odd; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA", "invalid c="),
            (b"v=2; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA", "v= value is not 1"),
            (b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA; t=99999999999", "future"),
        ],
    )
    def test_malformed_signature_is_a_failure_with_a_reason(
        self, key: tuple[bytes, bytes], signature: bytes, expected: str
    ) -> None:
        """A broken DKIM-Signature is refused with a reason, never an exception."""
        raw = b"DKIM-Signature: " + signature + b"\r\n" + message()
        verdict = check(raw, keys(key[1], "example.com"))
        assert not verdict.authenticated and not verdict.temporary
        assert expected in verdict.reason

    def test_unusable_key_record_is_a_failure(self, key: tuple[bytes, bytes]) -> None:
        """A garbled key in DNS fails the signature."""
        verdict = check(
            sign(message(), key[0]), FixedResolver({"sel._domainkey.example.com": [b"v=DKIM1; p=!!"]})
        )
        assert not verdict.authenticated and not verdict.temporary and "does not verify" in verdict.reason

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        tags=st.dictionaries(
            st.sampled_from(["v", "a", "c", "d", "s", "h", "l", "t", "x", "i", "q", "b", "bh", "z"]),
            st.one_of(
                st.sampled_from(
                    ["1", "rsa-sha256", "relaxed/relaxed", "example.com", "sel", "from : to", "0", "AAAA"]
                ),
                st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
            ),
        ),
        record=st.binary(max_size=40),
    )
    def test_arbitrary_signature_never_raises(self, tags: dict[str, str], record: bytes) -> None:
        """Whatever the DKIM-Signature and key record say, the answer is a verdict, not an exception."""
        value = "; ".join(f"{tag}={text}" for tag, text in tags.items()).encode("latin-1")
        raw = b"DKIM-Signature: " + value + b"\r\n" + message()
        verdict = check(raw, FixedResolver({"sel._domainkey.example.com": [record]}))
        assert isinstance(verdict, AuthVerdict) and not verdict.authenticated


def results(authserv_id: str, text: str) -> bytes:
    return f"Authentication-Results: {authserv_id};\r\n\t{text}\r\n".encode()


class TestAuthenticationResults:
    def test_trusted_dmarc_pass(self) -> None:
        """dmarc=pass for the From domain from a trusted receiver authenticates, without any DNS."""
        raw = message(above=results("mx.schoolmint.com", "dmarc=pass (p=reject) header.from=example.com"))
        verdict = check(raw, FixedResolver({}, failing=["sel._domainkey.example.com"]))
        assert (verdict.authenticated, verdict.method, verdict.domain) == (True, "arh-dmarc", "example.com")

    def test_authserv_id_compares_case_insensitively(self) -> None:
        """authserv-ids are domain-like names: case does not matter."""
        raw = message(above=results("MX.SchoolMint.com", "dmarc=pass header.from=Example.COM"))
        assert check(raw, FixedResolver({}), trusted=["mx.SCHOOLMINT.com"]).authenticated

    def test_untrusted_authserv_id_is_ignored(self) -> None:
        """The same header from a receiver we do not trust counts for nothing."""
        raw = message(above=results("mx.elsewhere.test", "dmarc=pass header.from=example.com"))
        verdict = check(raw, FixedResolver({}))
        assert not verdict.authenticated and "no trusted Authentication-Results" in verdict.reason

    def test_forged_results_above_a_trusted_fail_are_ignored(self) -> None:
        """A sender's own pass, even on top, does not outvote the trusted receiver's fail."""
        above = results("forged.test", "dmarc=pass header.from=example.com") + results(
            "mx.schoolmint.com", "dmarc=fail header.from=example.com; dkim=fail header.d=example.com"
        )
        verdict = check(message(above=above), FixedResolver({}))
        assert not verdict.authenticated and "dmarc=fail for example.com from trusted" in verdict.reason

    def test_dmarc_pass_for_another_domain_fails(self) -> None:
        """A pass for a different header.from is not about this From."""
        raw = message(above=results("mx.schoolmint.com", "dmarc=pass header.from=example.org"))
        assert not check(raw, FixedResolver({})).authenticated

    @pytest.mark.parametrize(
        ("text", "domain"),
        [
            ("dkim=pass header.d=example.com header.s=sel", "example.com"),
            ("dkim=pass header.i=@mail.example.com", "mail.example.com"),
        ],
    )
    def test_trusted_aligned_dkim_pass(self, text: str, domain: str) -> None:
        """dkim=pass whose header.d (or header.i) is aligned with the From domain authenticates."""
        verdict = check(message(above=results("mx.schoolmint.com", text)), FixedResolver({}))
        assert (verdict.authenticated, verdict.method, verdict.domain) == (True, "arh-dkim", domain)

    def test_trusted_dkim_pass_for_unaligned_domain_fails(self) -> None:
        """dkim=pass by another domain says nothing about the From domain."""
        raw = message(above=results("mx.schoolmint.com", "dkim=pass header.d=attacker.test"))
        verdict = check(raw, FixedResolver({}))
        assert not verdict.authenticated and "aligned dkim=pass" in verdict.reason

    def test_unparseable_results_are_ignored(self) -> None:
        """A header without an authserv-id cannot be from anyone we trust."""
        raw = message(above=b"Authentication-Results: ; dmarc=pass header.from=example.com\r\n")
        verdict = check(raw, FixedResolver({}))
        assert not verdict.authenticated and "no trusted Authentication-Results" in verdict.reason

    def test_dkim_is_checked_when_trusted_results_do_not_decide(self, key: tuple[bytes, bytes]) -> None:
        """A trusted receiver that says neither pass nor fail for the From domain leaves our DKIM check."""
        raw = sign(message(above=results("mx.schoolmint.com", "dmarc=none header.from=example.com")), key[0])
        verdict = check(raw, keys(key[1], "example.com"))
        assert (verdict.authenticated, verdict.method) == (True, "dkim")

    @pytest.mark.parametrize("text", ["dmarc=fail header.from=example.com", "dkim=fail header.d=example.com"])
    def test_a_trusted_fail_is_final(self, key: tuple[bytes, bytes], text: str) -> None:
        """The trusted receiver's fail stands: a valid signature checked by us does not outvote it, and no
        DNS is spent on it."""
        raw = sign(message(above=results("mx.schoolmint.com", text)), key[0])
        resolver = keys(key[1], "example.com")
        verdict = check(raw, resolver)
        assert not verdict.authenticated and "(final)" in verdict.reason
        assert resolver.asked == [] and verdict.work.signatures_verified == 0

    @settings(max_examples=150, deadline=None)
    @given(text=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
    def test_arbitrary_results_never_raise(self, text: str) -> None:
        """Whatever a trusted-looking header says, the answer is a verdict, not an exception."""
        raw = message(above=f"Authentication-Results: mx.schoolmint.com; {text}\r\n".encode())
        assert isinstance(check(raw, FixedResolver({})), AuthVerdict)


class TestTrustedPath:
    def test_trusted_path_verdict(self) -> None:
        """require_sender_auth = false: authenticated by configuration, for the From domain."""
        verdict = trusted_path("Ana@Example.COM")
        assert (verdict.authenticated, verdict.method, verdict.domain) == (
            True,
            "trusted-path",
            "example.com",
        )


# --- One reading for everyone (issue 12) ----------------------------------------------------------------

# Pieces of header values: ordinary text, folding (obs-fold included: a fold of white space only), and
# what splits lines differently for different readers: lone CR, lone LF, NUL.
CLEAN_PIECES = ["a", "b c", "<x@example.com>", ";", ":", "\r\n ", "\r\n\t", "\r\n \t", "\x00"]
HOSTILE_PIECES = ["\r", "\n", "\r\r\n", "\r\nFrom: Eve <eve@example.com>"]
# Lines a forger adds to a genuinely signed message: above it, where receivers add theirs, or inside.
INJECTIONS = [
    b"X-Pad: a\rFrom: Eve <eve@example.com>\rSubject: pay now\r\r\n",
    b"X-Pad: a\nFrom: Eve <eve@example.com>\n\r\n",
    b"Subject: pay now\r\n",
    b"From: Eve <eve@example.com>\r\n",
    b"To: eve@example.com\r\n",
    b"From eve@example.com Tue Nov 24 10:00:00 2026\r\n",
    b"X-Null: a\x00b\r\n",
    b" folded onto the field above\r\n",
]
READ_FIELDS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "sender",
    "in-reply-to",
    "references",
)


def signed_fields(raw: bytes, dkim_value: bytes) -> tuple[list[bytes], list[tuple[str, str]]]:
    """h= of a signature and the header fields it covers, as dkimpy selects them (bottom-most first) from
    the bytes as read, each in the parser's form."""
    tags = dkim.util.parse_tag_value(dkim_value)
    include = [name.strip().lower() for name in tags[b"h"].split(b":")]
    headers = dkim.DKIM(normalise(raw)).headers
    covered = dkim.select_headers(headers, include)
    return include, [authn_module._field(name, value) for name, value in covered]


class TestOneReading:
    """The fields DKIM signed are the fields we read: whatever CR, LF, NUL, folds or repeated fields a
    message holds, an authenticated message's From, Subject and the other fields the intake reads are the
    instances the passing signature covers."""

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        values=st.lists(
            st.lists(st.sampled_from(CLEAN_PIECES + HOSTILE_PIECES), max_size=5), min_size=4, max_size=4
        ),
        above=st.lists(st.sampled_from(INJECTIONS), max_size=2),
        inside=st.lists(st.sampled_from(INJECTIONS), max_size=2),
        repeat=st.sampled_from(["", "Subject: second subject\r\n", "From: Ana <ana@example.com>\r\n"]),
    )
    def test_the_fields_dkim_signed_are_the_fields_we_read(
        self,
        key: tuple[bytes, bytes],
        values: list[list[str]],
        above: list[bytes],
        inside: list[bytes],
        repeat: str,
    ) -> None:
        to, subject, date, extra = ("".join(pieces) for pieces in values)
        head = (
            f"From: Ana <ana@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\nX-Extra: {extra}\r\n"
            f"Message-ID: <c1@example.com>\r\n{repeat}"
        ).encode()
        original = head + b"\r\n" + BODY
        try:
            signature = bytes(
                dkim.sign(
                    original,
                    b"sel",
                    b"example.com",
                    key[0],
                    include_headers=[b"from", b"to", b"subject", b"date"],
                )
            )
        except dkim.DKIMException:
            return  # dkimpy cannot read it either: nothing signed, nothing to forge
        raw = b"".join(above) + signature + b"".join(inside) + original
        verdict = check(raw, keys(key[1], "example.com"), from_address=_author_of(raw))
        if verdict.authenticated:
            parsed = parse(raw).message
            include, covered = signed_fields(raw, signature.partition(b":")[2])
            assert b"from" in include
            for name in READ_FIELDS:
                if name.encode() in include:
                    read = [(n, v) for n, v in parsed.raw_items() if n.lower() == name]
                    assert sorted(read) == sorted(c for c in covered if c[0].lower() == name), name
        clean = all(piece in CLEAN_PIECES for pieces in values for piece in pieces)
        if clean and not above and not inside and not repeat:
            assert verdict.authenticated, verdict.reason  # the property is not vacuous

    def test_a_bare_cr_cannot_forge_the_sender_of_a_signed_message(self, key: tuple[bytes, bytes]) -> None:
        """issue 12: dkimpy saw X-Pad and the signed From, the parser saw Eve. Now both read Eve's lines,
        and the signature no longer covers them."""
        genuine = sign(message("bob@example.com"), key[0])
        assert check(genuine, keys(key[1], "example.com"), from_address="bob@example.com").authenticated
        forged = b"X-Pad: a\rFrom: Ana <ana@example.com>\rSubject: pay now\r\r\n" + genuine
        assert _author_of(forged) == "ana@example.com"
        verdict = check(forged, keys(key[1], "example.com"))
        assert not verdict.authenticated and "no DKIM signature" in verdict.reason

    @pytest.mark.parametrize(
        ("added", "reason"),
        [
            (b"Subject: pay now\r\n", "more than one subject header"),
            (b"From: Ana <ana@example.com>\r\n", "2 From headers"),
            (b"From eve@example.com Tue Nov 24 10:00:00 2026\r\n", "'From ' line inside the header block"),
        ],
    )
    def test_what_one_reader_would_read_differently_is_refused(
        self, key: tuple[bytes, bytes], added: bytes, reason: str
    ) -> None:
        """A repeated once-only field (dkimpy signs the bottom one, the parser reads the top one) or an mbox
        From line (dkimpy skips it, the parser reads the body from it) is refused, signature or not."""
        raw = sign(message(), key[0])
        signature, _, rest = raw.partition(b"From: Ana")
        verdict = check(signature + added + b"From: Ana" + rest, keys(key[1], "example.com"))
        assert not verdict.authenticated and reason in verdict.reason

    def test_fields_the_parser_read_differently_are_refused(self, key: tuple[bytes, bytes]) -> None:
        """The parser's fields must be dkimpy's, name for name and value for value."""
        raw = sign(message(), key[0])
        fields = [
            (name, "pay now" if name == "Subject" else value)
            for name, value in parse(raw).message.raw_items()
        ]
        verdict = authenticate(
            raw,
            "ana@example.com",
            fields=fields,
            trusted_authserv_ids=[],
            resolver=keys(key[1], "example.com"),
        )
        assert not verdict.authenticated and "read different header fields" in verdict.reason


def _author_of(raw: bytes) -> str:
    """The From address the intake would authenticate for `raw`."""
    try:
        author = parse(raw).from_
    except UnparseableMessage:
        return ""
    return author.address if author else ""


class TestTrustedBlock:
    """Only the trusted receiver's topmost Authentication-Results count (issue 12)."""

    PASS = results("mx.schoolmint.com", "dmarc=pass header.from=example.com")

    @pytest.mark.parametrize(
        "hops",
        [
            b"Received: from sender.example.com by mailbot.local (mailbot) with ESMTP; Tue, 1 Dec 2026\r\n",
            b"Received: from mx.schoolmint.com by imap.schoolmint.com (Dovecot) with LMTP; Tue, 1 Dec 2026\r\n",
            b"Received: from sender.example.com by MX.SchoolMint.com. (Postfix); Tue, 1 Dec 2026\r\n",
        ],
    )
    def test_the_trusted_path_s_own_hops_keep_the_block_open(self, hops: bytes) -> None:
        """mailbot's own Received on top and the trusted organization's hops come above its verdict."""
        assert check(message(above=hops + self.PASS), FixedResolver({})).authenticated

    def test_a_received_line_by_another_host_ends_the_block(self) -> None:
        """Below another host's Received line, the sender wrote it: not parsed, not believed."""
        hop = b"Received: from a.example.org by relay.example.org; Tue, 1 Dec 2026 10:00:00 -0500\r\n"
        verdict = check(message(above=hop + self.PASS), FixedResolver({}))
        assert not verdict.authenticated and verdict.work.results_parsed == 0

    def test_untrusted_results_are_never_parsed(self) -> None:
        """The authserv-id is compared as text first; authres parses only a trusted one, at most five."""
        many = b"".join(results("mx.other.example", "dmarc=pass header.from=example.com") for _ in range(50))
        trusted = b"".join(
            results("mx.schoolmint.com", "spf=pass smtp.mailfrom=example.com") for _ in range(9)
        )
        verdict = check(message(above=many + trusted), FixedResolver({}))
        assert verdict.work.results_parsed == MAX_RESULTS_PARSED and not verdict.authenticated
