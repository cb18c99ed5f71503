"""Email addresses as identities: when is a sender the same person as a named contact.

`normalize(address)` gives the key under which a sender is matched to a contact; store it beside the
address as written, and look contacts up by it. It is for matching only: mail is always sent to the
address as written.

The rules, and why:

- **The domain is case-insensitive** (RFC 5321 section 2.4; DNS names, RFC 4343). It is lowercased, and a
  non-ASCII domain is IDNA-encoded (UTS #46 mapping, then IDNA 2008 A-labels, RFC 5891), so
  `ana@München.de` and `ana@xn--mnchen-3ya.de` are one person. An address literal keeps its brackets
  with the IP address in canonical form (`[IPv6:::1]`, RFC 5321 section 4.1.3).
- **The local part is compared case-insensitively** (`Ana@` is `ana@`). RFC 5321 section 2.4 lets a
  receiving host treat it as case-sensitive, but says hosts SHOULD NOT depend on that, and every mainstream
  provider and server (Gmail, Microsoft 365, Yahoo, Postfix and Dovecot lookups) folds case. It is safe
  enough because it gives nothing away: entitlement authenticates only the From *domain* (DKIM `d=`, DMARC
  alignment), so the local part is the domain's word in any case; a domain that gave `Ana` and `ana` to two
  people would at most let a colleague at the same customer use a named contact's entitlement, and
  replies still go to the address that wrote. Non-ASCII local parts (RFC 6531) are NFC-normalized and
  lowercased, never casefolded (`ß` stays `ß`).
- **A plus tag is ignored**: `ana+x@school.org` is the same person as `ana@school.org` (the subaddress
  convention of RFC 5233; on by default at Gmail, Microsoft 365, Fastmail and in Postfix/Dovecot set-ups).
  This is safe only because authentication is on the From domain: whoever can make school.org sign mail
  from `ana+x` is trusted by school.org to write as that address, and at every provider that delivers
  `ana+x` to ana's mailbox, sending as `ana+x` is a right of ana's account. People tag addresses to filter
  their own mail; holding their mail, or spending one of their two or four named-contact seats on a tag,
  would punish them for it. The residual risk is a domain where `+` is an ordinary character and
  `ana+x` a different mailbox; then a colleague at the same customer shares ana's entitlement. Only the
  first `+` counts, and a local part that starts with `+` keeps it (there is no one before the tag).
- **Dots are kept**: `a.na` is not `ana`. Only Gmail ignores dots, and only for its own consumer domain.
- A quoted local part means what its content means (RFC 5322 section 3.4.1): `"ana"@school.org` is
  `ana@school.org`.

`is_valid_address(text)` is stricter, for addresses a person types into the CLI: a dot-atom local part
(RFC 5322 section 3.4.1, with UTF-8 allowed by RFC 6532), exactly one `@`, no spaces or control
characters, lengths within RFC 5321 section 4.5.3.1, and a domain that has a dot (so `localhost` and
typos like `ana@school` are refused) or is a loopback address literal (`[127.0.0.1]`, `[IPv6:::1]`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata

import idna

# RFC 5322 section 3.2.3 atext, plus any non-ASCII character (RFC 6532 section 3.2); the non-ASCII
# characters are screened separately for spaces and controls.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_MAX_LOCAL_OCTETS = 64  # RFC 5321 section 4.5.3.1.1
_MAX_ADDRESS_OCTETS = 254  # a 256-octet path (section 4.5.3.1.3) less its angle brackets


@functools.lru_cache(maxsize=4096)  # pure; the intake asks about each message's sender and requester ten times
def normalize(address: str) -> str:
    """The key that identifies the person behind `address` (see the module docstring for the rules).

    Raises ValueError when `address` is not `local@domain` or its domain cannot be IDNA-encoded.
    """
    local, domain = _split(address)
    local = unicodedata.normalize("NFC", local).lower()
    tag_at = local.find("+")
    if tag_at > 0:
        local = local[:tag_at]
    return f"{local}@{_normalize_domain(domain)}"


def key_of(address: str) -> str:
    """`normalize(address)`, or the text lowercased when it is no address: a key for whatever was written."""
    try:
        return normalize(address)
    except ValueError:
        return address.strip().lower()


def same_person(a: str, b: str) -> bool:
    """Whether two addresses belong to the same person; False when either is not an address."""
    try:
        return normalize(a) == normalize(b)
    except ValueError:
        return False


def is_valid_address(text: str) -> bool:
    """Whether `text` is a plain addr-spec fit to register as a named contact (see the module docstring)."""
    if text.count("@") != 1 or any(_is_space_or_control(c) for c in text):
        return False
    local, domain = text.split("@")
    if not _DOT_ATOM.fullmatch(local) or len(local.encode()) > _MAX_LOCAL_OCTETS:
        return False
    if domain.startswith("["):
        literal = _address_literal(domain)
        return literal is not None and literal.is_loopback
    try:
        ascii_domain = _normalize_domain(domain)
    except ValueError:
        return False
    return "." in ascii_domain and len(local.encode()) + 1 + len(ascii_domain) <= _MAX_ADDRESS_OCTETS


def _split(address: str) -> tuple[str, str]:
    # rpartition: a quoted local part may itself contain "@" (RFC 5322 section 3.4.1).
    local, at, domain = address.rpartition("@")
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    if not at or not local or not domain:
        raise ValueError(f"not an email address: {address!r}")
    return local, domain


@functools.lru_cache(maxsize=4096)  # pure, and every message asks for the same few domains again and again
def _normalize_domain(domain: str) -> str:
    if domain.startswith("["):
        literal = _address_literal(domain)
        if literal is None:
            raise ValueError(f"not an address literal: {domain!r}")
        return f"[IPv6:{literal.compressed}]" if literal.version == 6 else f"[{literal}]"
    if domain.endswith("."):
        # A root-anchored name is not a Domain in RFC 5321 section 4.1.2's grammar.
        raise ValueError(f"not a valid domain: {domain!r} (trailing dot)")
    try:
        # UTS #46 maps case and width (so "ＳＣＨＯＯＬ．org" is "school.org") before IDNA 2008 checks labels.
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"not a valid domain: {domain!r} ({exc})") from exc


def _address_literal(domain: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of an RFC 5321 section 4.1.3 literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`), or None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return ipaddress.IPv6Address(inner[5:])
        return ipaddress.IPv4Address(inner)
    except ValueError:
        return None


def _is_space_or_control(char: str) -> bool:
    # Unicode categories Z* (separators) and C* (controls, format characters, unassigned).
    return unicodedata.category(char)[0] in "ZC"
