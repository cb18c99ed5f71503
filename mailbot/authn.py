"""Whether a message's From address is provably the sender's: trusted Authentication-Results, or DKIM.

`authenticate(raw, from_address, ...)` gives an `AuthVerdict`. The From address is authenticated when

1. an `Authentication-Results` header whose authserv-id is in `trusted_authserv_ids` (compared
   case-insensitively, RFC 8601 section 2.5) says `dmarc=pass` with `header.from` equal to the From domain,
   or `dkim=pass` with a `header.d` (else `header.i`) aligned with it; headers from anyone else are
   ignored, since any sender can write one (RFC 8601 section 7.2). The trusted receiver must delete
   incoming headers bearing its own authserv-id (RFC 8601 section 5), as OpenDMARC, OpenDKIM and rspamd
   do, or a sender could forge one with that id; or
2. a DKIM-Signature verifies (dkimpy) and passes three checks of our own, because dkimpy accepts all three
   cases: its `h=` lists From (RFC 6376 section 5.4 requires it; without it the From can be anything), it
   has no `l=` shorter or longer than the canonicalised body (RFC 6376 section 8.2: text appended after an
   `l=` signature still verifies; an `l=` equal to the whole body is as safe as none, so it is allowed),
   and its `d=` is aligned with the From domain (DMARC relaxed alignment, RFC 7489 section 3.1.1).

A message without exactly one From header is never authenticated (RFC 5322 section 3.6; RFC 7489
section 6.6.1). A DNS failure while verifying gives `temporary=True` (try again later), never a pass,
unless another signature passes. Malformed headers and signatures give a refusal with a reason, never an
exception. With `require_sender_auth = false` the caller uses `trusted_path()` instead.

`authenticate` blocks (DNS look-ups, RSA arithmetic): the caller runs it off the event loop.
"""

from __future__ import annotations

import binascii
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import authres
import dkim
import idna
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffixlist import PublicSuffixList

from mailbot.dns import Resolver, dkim_dnsfunc
from mailbot.errors import TransientDNSError

Tags = dict[bytes, bytes]
Headers = list[list[bytes]]  # dkimpy's parsed header block: [name, value] pairs, values folded as received


@dataclass(frozen=True)
class AuthVerdict:
    """Whether the From address is authenticated, by which method, for which domain, and why (not)."""

    authenticated: bool
    method: str  # "dkim" | "arh-dmarc" | "arh-dkim" | "trusted-path" | "none"
    domain: str | None  # the aligned signing/authenticated domain
    reason: str
    temporary: bool = False  # a DNS failure: try again later, never a pass


@functools.lru_cache(maxsize=4096)  # pure, and asked for the same few domains for every message
def organizational_domain(domain: str) -> str:
    """The registrable domain under the public suffix (RFC 7489 3.2): mail.schoolmint.com -> schoolmint.com.

    The name is lowercased and IDNA-encoded first; a public suffix is its own organizational domain.
    """
    name = _ascii_domain(domain)
    return _public_suffixes().privatesuffix(name) or name


def aligned(signing_domain: str, from_domain: str) -> bool:
    """DMARC relaxed alignment (RFC 7489 section 3.1.1): both names have the same organizational domain."""
    if not _ascii_domain(signing_domain) or not _ascii_domain(from_domain):
        return False
    return organizational_domain(signing_domain) == organizational_domain(from_domain)


def trusted_path(from_address: str) -> AuthVerdict:
    """The verdict under `require_sender_auth = false`: the site trusts its receiving path to check From."""
    return AuthVerdict(
        True,
        "trusted-path",
        _from_domain(from_address) or None,
        "require_sender_auth = false: receiving path trusted",
    )


def authenticate(
    raw: bytes, from_address: str, *, trusted_authserv_ids: Sequence[str], resolver: Resolver
) -> AuthVerdict:
    """Whether `raw` proves that `from_address` wrote it (see the module docstring for the rules).

    Blocks on DNS and RSA work: run it off the event loop.
    """
    from_domain = _from_domain(from_address)
    if not from_domain:
        return _refused(f"From address {from_address!r} has no domain")
    try:
        message = dkim.DKIM(raw)
    except dkim.DKIMException as exc:
        return _refused(f"header block cannot be parsed: {exc}")
    except IndexError:  # dkimpy's parser on a continuation line before any header
        return _refused("header block cannot be parsed: it starts with a continuation line")
    from_count = sum(1 for name, _ in message.headers if name.lower() == b"from")
    if from_count != 1:
        return _refused(f"message has {from_count} From headers, not one")
    trusted = {authserv_id.lower() for authserv_id in trusted_authserv_ids}
    by_results = _by_authentication_results(message.headers, from_domain, trusted)
    if by_results.authenticated:
        return by_results
    by_signatures = _by_dkim_signatures(message, from_domain, dkim_dnsfunc(resolver))
    if by_signatures.authenticated:
        return by_signatures
    return replace(by_signatures, reason=f"{by_results.reason}; {by_signatures.reason}")


def _by_authentication_results(headers: Headers, from_domain: str, trusted: set[str]) -> AuthVerdict:
    found = _trusted_results(headers, trusted)
    if not found:
        return _refused("no trusted Authentication-Results")
    results = [(authserv_id, result) for authserv_id, header in found for result in header.results]
    for authserv_id, result in results:
        if (
            _passes(result, "dmarc")
            and _ascii_domain(_property(result, "header", "from") or "") == from_domain
        ):
            return AuthVerdict(
                True, "arh-dmarc", from_domain, f"dmarc=pass for {from_domain} from trusted {authserv_id}"
            )
    for authserv_id, result in results:
        signer = _dkim_result_domain(result) if _passes(result, "dkim") else None
        if signer and aligned(signer, from_domain):
            return AuthVerdict(
                True,
                "arh-dkim",
                signer,
                f"dkim=pass for {signer}, aligned with {from_domain}, from trusted {authserv_id}",
            )
    ids = ", ".join(sorted({authserv_id for authserv_id, _ in found}))
    return _refused(
        f"trusted Authentication-Results ({ids}) show no dmarc=pass or aligned dkim=pass for {from_domain}"
    )


def _trusted_results(headers: Headers, trusted: set[str]) -> list[tuple[str, Any]]:
    """(authserv-id, parsed header) for each Authentication-Results header from a trusted receiver."""
    found = []
    for name, value in headers:
        if name.lower() != b"authentication-results":
            continue
        unfolded = value.replace(b"\r\n", b"").decode("utf-8", "replace")
        try:
            header = authres.all_features().parse_value(unfolded)
        except authres.AuthResError:
            continue  # unparseable: we cannot tell who wrote it, so nobody we trust did
        if header.authserv_id in trusted:
            found.append((header.authserv_id, header))
    return found


def _passes(result: Any, method: str) -> bool:
    return bool(str(result.method).lower() == method and str(result.result).lower() == "pass")


def _property(result: Any, ptype: str, name: str) -> str | None:
    for prop in result.properties:
        if prop.type.lower() == ptype and prop.name.lower() == name and prop.value:
            return str(prop.value)
    return None


def _dkim_result_domain(result: Any) -> str | None:
    """The signing domain a dkim= result names: header.d, else header.i's domain (RFC 8601 section 2.7.1)."""
    signer = _property(result, "header", "d")
    if signer is None:
        identity = _property(result, "header", "i")
        signer = identity.rpartition("@")[2] if identity else None
    return _ascii_domain(signer) if signer else None


def _by_dkim_signatures(
    message: dkim.DKIM, from_domain: str, dnsfunc: Callable[..., bytes | None]
) -> AuthVerdict:
    # The same selection dkimpy's verify(idx=...) indexes into.
    signatures = [value for name, value in message.headers if name.lower() == b"dkim-signature"]
    if not signatures:
        return _refused("no DKIM signature")
    problems: list[str] = []
    dns_failure: str | None = None
    for idx, value in enumerate(signatures):
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            problems.append("dkim signature is malformed (bad tag=value list)")
            continue
        try:
            problem = _signature_problem(message, idx, tags, from_domain, dnsfunc)
        except TransientDNSError as exc:
            dns_failure = (
                dns_failure
                or f"DNS failure verifying dkim signature ({_label(tags)}), try again later: {exc}"
            )
            continue
        if problem is None:
            signer = _ascii_domain(tags[b"d"].decode())
            return AuthVerdict(
                True, "dkim", signer, f"dkim signature by {signer} aligned with From domain {from_domain}"
            )
        problems.append(problem)
    if dns_failure is not None:
        return AuthVerdict(False, "none", None, "; ".join([dns_failure, *problems]), temporary=True)
    return _refused("; ".join(problems))


def _signature_problem(
    message: dkim.DKIM, idx: int, tags: Tags, from_domain: str, dnsfunc: Callable[..., bytes | None]
) -> str | None:
    """Why signature `idx` does not authenticate `from_domain`, or None when it does.

    TransientDNSError from the key look-up passes up.
    """
    problem = _policy_problem(tags, message.body, from_domain)
    if problem is not None:
        return problem
    try:
        verified = message.verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.DKIMException as exc:
        return f"dkim signature is invalid ({_label(tags)}): {exc}"
    except binascii.Error as exc:
        # dkimpy 1.1.8 checks bh= against b='s pattern, so a non-base64 bh= fails only when decoded.
        return f"dkim signature is invalid ({_label(tags)}): bh= is not base64: {exc}"
    return None if verified else f"dkim signature does not verify ({_label(tags)})"


def _policy_problem(tags: Tags, body: bytes, from_domain: str) -> str | None:
    """Our checks beyond dkimpy's verdict (see the module docstring); checked before any DNS look-up."""
    label = _label(tags)
    if b"d" not in tags or b"h" not in tags:
        return f"dkim signature is malformed: d= or h= missing ({label})"
    # Split h= as dkimpy does when it hashes, so both see the same list.
    if b"from" not in {name.strip().lower() for name in re.split(rb"\s*:\s*", tags[b"h"])}:
        return f"dkim signature does not cover From ({label})"
    if b"l" in tags:
        problem = _body_length_problem(tags, body)
        if problem is not None:
            return f"{problem} ({label})"
    try:
        signer = tags[b"d"].decode()
    except UnicodeDecodeError:
        return f"dkim signature is malformed: d= is not UTF-8 ({label})"
    if not aligned(signer, from_domain):
        return f"dkim signing domain is not aligned with From domain {from_domain} ({label})"
    return None


def _body_length_problem(tags: Tags, body: bytes) -> str | None:
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        return "dkim signature is malformed: bad c="
    if not tags[b"l"].isdigit():
        return "dkim signature is malformed: l= is not a number"
    if int(tags[b"l"]) != len(policy.canonicalize_body(body)):
        return "dkim signature l= does not cover the whole body"
    return None


def _label(tags: Tags) -> str:
    """`d=..., s=...` for reasons; never fails, whatever the bytes."""
    return ", ".join(
        f"{tag.decode()}={tags[tag].decode('utf-8', 'replace')}" for tag in (b"d", b"s") if tag in tags
    )


def _refused(reason: str) -> AuthVerdict:
    return AuthVerdict(False, "none", None, reason)


def _from_domain(address: str) -> str:
    local, at, domain = address.rpartition("@")
    return _ascii_domain(domain) if at and local else ""


def _ascii_domain(domain: str) -> str:
    """`domain` lowercased, without a trailing dot, in IDNA A-labels (as d= is, RFC 6376 section 3.5)."""
    name = domain.strip().removesuffix(".").lower()
    if name.isascii():
        return name
    try:
        # UTS #46 then IDNA 2008, as the addresses module does; never IDNA 2003, which maps "ß" to "ss"
        # and would align straße.example with an unrelated strasse.example.
        return str(idna.encode(name, uts46=True).decode("ascii"))
    except idna.IDNAError:
        return name  # not a DNS name, so no ASCII d= can align with it


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # The list bundled with the package: no network; loading takes about 30 ms, so once, on first use.
    return PublicSuffixList()
