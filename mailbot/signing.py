"""DKIM signing of outgoing mail, so receivers see the support domain's mail pass their checks.

`DkimSigner(domain, selector, private_key_pem).sign(message)` returns the message with a DKIM-Signature
header prepended: rsa-sha256 (RFC 8301), relaxed/relaxed canonicalisation (survives the header refolding
and trailing-whitespace changes relays make, RFC 6376 section 3.4), no `l=` (RFC 6376 section 8.2).
It signs the headers a reader relies on, whether present or not: a header signed but absent cannot be
added later without breaking the signature (RFC 6376 section 5.4.2). From is listed twice, so nobody can
add a second From that some mail clients would show instead (oversigning).

Signing is pure CPU work on bytes (no DNS, no files after construction); the RSA arithmetic blocks, so
the sender runs it off the event loop. dkimpy stamps `t=` from the system clock; it has no hook for another.
It also takes the key only as PEM text and parses it again for every signature (about 0.14 ms).

dkimpy does the RSA itself, in pure Python: about 6.4 ms of CPU per signature with a 2048-bit key on the
benchmark machine, where OpenSSL takes 0.24 ms (bench/RESULTS.md, section 9), so with DKIM on, signing was
most of what a confirmation cost. dkimpy builds and canonicalises everything as before; only the last step,
RSASSA-PKCS1-v1_5 over its digest (RFC 8017 section 8.2), is done by `cryptography` (OpenSSL) for the keys
a DkimSigner loaded. That signature is deterministic: the very bytes dkimpy would have made
(tests/test_signing.py holds it). dkimpy has no parameter for it, so its module-level signing function is
the seam; any other key still goes to dkimpy's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from mailbot.errors import ConfigError

SIGNED_HEADERS: tuple[bytes, ...] = (
    b"From",
    b"From",  # oversigned: a second From added after signing breaks the signature
    b"To",
    b"Cc",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"In-Reply-To",
    b"References",
    b"Reply-To",
    b"Auto-Submitted",
    b"Content-Type",
    b"MIME-Version",
)
MIN_KEY_BITS = 1024  # RFC 8301 section 3.2: signers MUST use at least 1024 bits; verifiers refuse less
_OPENSSL_KEYS: dict[int, rsa.RSAPrivateKey] = {}  # by modulus: the signers' keys, loaded by OpenSSL
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
_pure_python_sign = dkim.RSASSA_PKCS1_v1_5_sign


def _openssl_sign(digest: Any, key: dict[str, int]) -> bytes:
    """dkimpy's RSASSA_PKCS1_v1_5_sign(hash object, parsed key), by OpenSSL for a key a DkimSigner loaded."""
    loaded, algorithm = _OPENSSL_KEYS.get(key["modulus"]), _DIGESTS.get(digest.name)
    if loaded is None or algorithm is None:
        signature: bytes = _pure_python_sign(digest, key)
        return signature
    return loaded.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm()))


dkim.RSASSA_PKCS1_v1_5_sign = _openssl_sign


class DkimSigner:
    """Signs messages as `domain` with the key published at `selector._domainkey.domain`."""

    def __init__(self, domain: str, selector: str, private_key: bytes) -> None:
        self.domain = _dns_label_text("domain", domain)
        self.selector = _dns_label_text("selector", selector)
        private_key = private_key.replace(b"\r\n", b"\n")  # dkimpy's PEM reader expects LF line endings
        try:
            key = parse_pem_private_key(private_key)
        except (UnparsableKeyError, ValueError, IndexError) as exc:
            detail = " ".join(str(exc).split())  # dkimpy's messages span lines; ConfigError is one line
            raise ConfigError(
                f"DKIM private key is not a PEM RSA private key (PKCS#1 or PKCS#8): {detail}"
            ) from exc
        bits = key["modulus"].bit_length()
        if bits < MIN_KEY_BITS:
            raise ConfigError(
                f"DKIM private key has {bits} bits; at least {MIN_KEY_BITS} are needed (RFC 8301)"
            )
        self._private_key = private_key
        _load_for_openssl(private_key)

    @classmethod
    def from_file(cls, domain: str, selector: str, private_key_file: Path) -> DkimSigner:
        """A signer whose key is read from a PEM file; ConfigError naming the file when it is unusable."""
        try:
            pem = private_key_file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"outbound.dkim.private_key_file: cannot read {private_key_file}: {exc.strerror or exc}"
            ) from exc
        try:
            return cls(domain, selector, pem)
        except ConfigError as exc:
            raise ConfigError(f"outbound.dkim.private_key_file: {private_key_file}: {exc}") from exc

    def sign(self, message: bytes) -> bytes:
        """`message` with a DKIM-Signature header prepended, in the message's own line endings.

        Raises dkim.DKIMException if the message's header block cannot be parsed (a composition bug).
        """
        signature = dkim.sign(
            message,
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self._private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"rsa-sha256",
            include_headers=list(SIGNED_HEADERS),
            linesep=_line_ending(message),
        )
        return bytes(signature) + message


def _load_for_openssl(pem: bytes) -> None:
    """The key for `_openssl_sign`; one OpenSSL cannot read (dkimpy's reader is laxer) stays with dkimpy."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return
    if isinstance(key, rsa.RSAPrivateKey):
        _OPENSSL_KEYS[key.private_numbers().public_numbers.n] = key


def _dns_label_text(what: str, value: str) -> str:
    # d= and s= are ASCII DNS names (RFC 6376 section 3.5); an internationalised domain goes in as A-labels.
    name = value.strip().removesuffix(".")
    if not name or not name.isascii() or any(c.isspace() or c in ";=" for c in name):
        raise ConfigError(f"outbound.dkim.{what}: {value!r} is not an ASCII DNS name (use A-labels, xn--...)")
    return name.lower()


def _line_ending(message: bytes) -> bytes:
    end = message.find(b"\n")
    return b"\r\n" if end > 0 and message[end - 1 : end] == b"\r" else b"\n"
