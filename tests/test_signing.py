"""DKIM signing of outgoing mail: what dkimpy and our own authentication make of the signed bytes."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from pathlib import Path

import dkim
import pytest
from dkim.crypto import parse_pem_private_key
from dkim.util import parse_tag_value

from mailbot import signing
from mailbot.authn import authenticate
from mailbot.dns import FixedResolver, dkim_dnsfunc
from mailbot.errors import ConfigError
from mailbot.parse import parse
from mailbot.signing import DkimSigner

OUTGOING = (
    b"From: Hero Support <herosupport@schoolmint.com>\r\n"
    b"To: ana@example.com\r\n"
    b"Subject: [#12] We are looking into it\r\n"
    b"Date: Tue, 24 Nov 2026 10:05:00 -0500\r\n"
    b"Message-ID: <t12.confirmation@schoolmint.com>\r\n"
    b"In-Reply-To: <c1@example.com>\r\n"
    b"References: <c1@example.com>\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Ana,\r\n\r\nyour issue is under review.\r\n"
)


def openssl_key(directory: Path, bits: int) -> tuple[Path, bytes]:
    """A new RSA key file and the DKIM TXT record that publishes its public half."""
    path = directory / f"rsa{bits}.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), str(bits)], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    return openssl_key(tmp_path_factory.mktemp("dkim"), 2048)


@pytest.fixture(scope="module")
def signer(key: tuple[Path, bytes]) -> DkimSigner:
    return DkimSigner.from_file("schoolmint.com", "mailbot", key[0])


@pytest.fixture(scope="module")
def resolver(key: tuple[Path, bytes]) -> FixedResolver:
    return FixedResolver({"mailbot._domainkey.schoolmint.com": [key[1]]})


def verifies(raw: bytes, resolver: FixedResolver) -> bool:
    return bool(dkim.verify(raw, dnsfunc=dkim_dnsfunc(resolver)))


def signature_tags(raw: bytes) -> dict[bytes, bytes]:
    match = re.match(rb"DKIM-Signature:(.*?\r?\n)(?=\S)", raw, re.DOTALL)
    assert match is not None
    tags: dict[bytes, bytes] = parse_tag_value(match.group(1))
    return tags


class TestOpenSsl:
    """The RSA step by OpenSSL: the same signature dkimpy's pure-Python RSA makes, for a fraction of the CPU."""

    def test_it_signs_the_very_bytes_dkimpy_would(self, key: tuple[Path, bytes], signer: DkimSigner) -> None:
        parsed = parse_pem_private_key(key[0].read_bytes())
        for name in ("sha256", "sha1"):
            digest = hashlib.new(name, b"from:Hero Support <support@schoolmint.com>\r\nsubject:[Ticket #1]")
            assert signing._openssl_sign(digest, parsed) == signing._pure_python_sign(digest, parsed)

    def test_the_signers_keys_never_reach_the_pure_python_rsa(
        self, signer: DkimSigner, resolver: FixedResolver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def refuse(*_: object) -> bytes:
            raise AssertionError("signed by dkimpy's pure-Python RSA")

        monkeypatch.setattr(signing, "_pure_python_sign", refuse)
        assert verifies(signer.sign(OUTGOING), resolver)

    def test_a_key_no_signer_loaded_is_left_to_dkimpy(self, tmp_path: Path) -> None:
        other = parse_pem_private_key(openssl_key(tmp_path, 1024)[0].read_bytes())
        digest = hashlib.sha256(b"anything")
        assert other["modulus"] not in signing._OPENSSL_KEYS
        assert signing._openssl_sign(digest, other) == signing._pure_python_sign(digest, other)


class TestSign:
    def test_signed_message_verifies(self, signer: DkimSigner, resolver: FixedResolver) -> None:
        """dkimpy verifies our signature with the key served from (fixed) DNS."""
        assert verifies(signer.sign(OUTGOING), resolver)

    def test_signature_is_prepended_and_message_kept(self, signer: DkimSigner) -> None:
        """The output is one DKIM-Signature header followed by the unchanged message."""
        signed = signer.sign(OUTGOING)
        assert signed.startswith(b"DKIM-Signature: ") and signed.endswith(OUTGOING)

    def test_signature_tags(self, signer: DkimSigner) -> None:
        """rsa-sha256, relaxed/relaxed, our domain and selector, From oversigned, no l=."""
        tags = signature_tags(signer.sign(OUTGOING))
        signed = [name.strip() for name in re.split(rb"\s*:\s*", tags[b"h"])]
        assert (tags[b"a"], tags[b"c"], tags[b"d"], tags[b"s"]) == (
            b"rsa-sha256", b"relaxed/relaxed", b"schoolmint.com", b"mailbot"
        )  # fmt: skip
        assert signed == [
            b"from", b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
            b"reply-to", b"auto-submitted", b"content-type", b"mime-version",
        ]  # fmt: skip
        assert b"l" not in tags

    @pytest.mark.parametrize("where", ["top", "bottom"])
    def test_injected_from_breaks_the_signature(
        self, signer: DkimSigner, resolver: FixedResolver, where: str
    ) -> None:
        """A second From added after signing, above or below the first, fails verification."""
        signed = signer.sign(OUTGOING)
        injected = b"From: Ceo <ceo@schoolmint.com>\r\n"
        if where == "top":
            tampered = injected + signed
        else:
            head, body = signed.split(b"\r\n\r\n", 1)
            tampered = head + b"\r\n" + injected + b"\r\n" + body
        assert verifies(signed, resolver) and not verifies(tampered, resolver)

    def test_absent_signed_header_cannot_be_added(self, signer: DkimSigner, resolver: FixedResolver) -> None:
        """Cc was absent when signed; adding one afterwards fails verification."""
        signed = signer.sign(OUTGOING)
        head, body = signed.split(b"\r\n\r\n", 1)
        assert not verifies(head + b"\r\nCc: eve@evil.test\r\n\r\n" + body, resolver)

    def test_relaxed_canonicalisation_survives_refolding(
        self, signer: DkimSigner, resolver: FixedResolver
    ) -> None:
        """A relay that refolds the Subject and pads line ends does not break a relaxed/relaxed signature."""
        signed = signer.sign(OUTGOING)
        relayed = signed.replace(b"Subject: [#12] We", b"Subject: [#12]\r\n  We").replace(
            b"under review.\r\n", b"under review.  \r\n"
        )
        assert relayed != signed and verifies(relayed, resolver)

    def test_lf_message_gets_an_lf_signature(self, signer: DkimSigner, resolver: FixedResolver) -> None:
        """A message with bare LF line ends is signed in LF, not a CRLF/LF mixture, and verifies."""
        lf_message = OUTGOING.replace(b"\r\n", b"\n")
        signed = signer.sign(lf_message)
        assert b"\r" not in signed and verifies(signed, resolver)

    def test_our_authentication_accepts_our_signature(
        self, signer: DkimSigner, resolver: FixedResolver
    ) -> None:
        """What we send passes what we require of others (From signed, no l=, d= aligned)."""
        signed = signer.sign(OUTGOING)
        fields = list(parse(signed).message.raw_items())
        verdict = authenticate(
            signed, "herosupport@schoolmint.com", fields=fields, trusted_authserv_ids=[], resolver=resolver
        )
        assert (verdict.authenticated, verdict.method, verdict.domain) == (True, "dkim", "schoolmint.com")


class TestKeys:
    def test_crlf_key_file_is_accepted(
        self, key: tuple[Path, bytes], tmp_path: Path, resolver: FixedResolver
    ) -> None:
        """A PEM file saved with CRLF line ends still signs."""
        crlf = tmp_path / "crlf.pem"
        crlf.write_bytes(key[0].read_bytes().replace(b"\n", b"\r\n"))
        assert verifies(DkimSigner.from_file("schoolmint.com", "mailbot", crlf).sign(OUTGOING), resolver)

    def test_traditional_pkcs1_key_is_accepted(
        self, key: tuple[Path, bytes], tmp_path: Path, resolver: FixedResolver
    ) -> None:
        """`BEGIN RSA PRIVATE KEY` (PKCS#1) works as well as OpenSSL 3's PKCS#8 default."""
        pkcs1 = tmp_path / "pkcs1.pem"
        subprocess.run(
            ["openssl", "rsa", "-in", str(key[0]), "-traditional", "-out", str(pkcs1)],
            check=True,
            capture_output=True,
        )
        assert pkcs1.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
        assert verifies(DkimSigner.from_file("schoolmint.com", "mailbot", pkcs1).sign(OUTGOING), resolver)

    def test_missing_file(self, tmp_path: Path) -> None:
        """An unreadable key file is a ConfigError naming the key and the file."""
        missing = tmp_path / "nope.pem"
        with pytest.raises(ConfigError, match=rf"private_key_file: cannot read {re.escape(str(missing))}"):
            DkimSigner.from_file("schoolmint.com", "mailbot", missing)

    def test_not_a_key(self, tmp_path: Path) -> None:
        """A file that holds no PEM RSA key is refused with one line."""
        junk = tmp_path / "junk.pem"
        junk.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        with pytest.raises(ConfigError, match="not a PEM RSA private key") as caught:
            DkimSigner.from_file("schoolmint.com", "mailbot", junk)
        assert "\n" not in str(caught.value) and str(junk) in str(caught.value)

    def test_short_key(self, tmp_path: Path) -> None:
        """A key under 1024 bits is refused: receivers reject its signatures (RFC 8301)."""
        short, _ = openssl_key(tmp_path, 512)
        with pytest.raises(ConfigError, match="512 bits"):
            DkimSigner.from_file("schoolmint.com", "mailbot", short)

    @pytest.mark.parametrize(
        ("domain", "selector"), [("bücher.de", "mailbot"), ("schoolmint.com", ""), ("a;b", "s")]
    )
    def test_domain_and_selector_must_be_ascii_names(
        self, key: tuple[Path, bytes], domain: str, selector: str
    ) -> None:
        """d= and s= are ASCII DNS names (A-labels); anything else is refused at start."""
        with pytest.raises(ConfigError, match="not an ASCII DNS name"):
            DkimSigner(domain, selector, key[0].read_bytes())
