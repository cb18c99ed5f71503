"""Whether a message's From address is provably the sender's: trusted Authentication-Results, or DKIM.

`authenticate(raw, from_address, fields=..., ...)` gives an `AuthVerdict`. First, one reading for everyone
(issue 12): the bytes are read with their line ends normalised (mailbot.newlines), and the header fields
dkimpy reads must be exactly the `fields` the parser read (names, order, values), with no field that
RFC 5322 section 3.6 (or RFC 2045) allows once present twice: a signature covers the bottom-most instance
of a field (RFC 6376 section 5.4.2) while the parser reads the first, so with two Subjects a signed
message could show an unsigned one. A "From " line inside the header block is refused too: dkimpy skips
it, the parser pushes it into the body. Then the From address is authenticated when

1. the trusted receiver's own Authentication-Results say so: only headers whose authserv-id is in
   `trusted_authserv_ids` (compared case-insensitively, RFC 8601 section 2.5), and only those above the
   first Received header written by another host (below it they were written before the message reached
   the trusted receiver, by anyone, RFC 8601 section 7.2). mailbot's own Received header on top, and
   Received headers `by` a host of a trusted authserv-id's organizational domain, do not end that block. For each method the topmost trusted
   header that reports it decides: `dmarc=pass` with `header.from` equal to the From domain, or
   `dkim=pass` with a `header.d` (else `header.i`) aligned with it, authenticates; a `fail` there for the
   From domain is final, and a pass further down never wins over it. The trusted receiver must also delete
   incoming headers bearing its own authserv-id (RFC 8601 section 5), as OpenDMARC, OpenDKIM and rspamd
   do; or
2. a DKIM-Signature verifies (dkimpy) and passes three checks of our own, because dkimpy accepts all three
   cases: its `h=` lists From (RFC 6376 section 5.4 requires it; without it the From can be anything), it
   has no `l=` shorter or longer than the canonicalised body (RFC 6376 section 8.2: text appended after an
   `l=` signature still verifies; an `l=` equal to the whole body is as safe as none, so it is allowed),
   and its `d=` is aligned with the From domain (DMARC relaxed alignment, RFC 7489 section 3.1.1).

Reading is bounded, whatever the message (issue 12: 100 `l=` signatures on 5 MB cost 36 s, 900 huge
Authentication-Results 41 s): the cheap checks on a signature's tags (From signed, `d=` aligned) come
first; the body is canonicalised once per canonicalisation mode and hashed once per mode and algorithm,
and `bh=` compared with that before any DNS; at most MAX_SIGNATURES_VERIFIED signatures go on to DNS and
RSA; DNS goes through a per-message `DnsBudget`; an Authentication-Results header is parsed (authres) only
when its authserv-id, read as text, is trusted, and at most MAX_RESULTS_PARSED of them. `AuthVerdict.work`
counts that work.

A message without exactly one From header is never authenticated (RFC 5322 section 3.6; RFC 7489
section 6.6.1). A DNS failure while verifying gives `temporary=True` (try again later), never a pass,
unless another signature passes. Malformed headers and signatures give a refusal with a reason, never an
exception. With `require_sender_auth = false` the caller uses `trusted_path()` instead.

`authenticate` blocks (DNS look-ups, RSA arithmetic): the caller runs it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import authres
import dkim
import idna
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import HASH_ALGORITHMS
from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffixlist import PublicSuffixList

from mailbot.dns import DnsBudget, Resolver, dkim_dnsfunc
from mailbot.errors import TransientDNSError
from mailbot.newlines import normalise

Tags = dict[bytes, bytes]
Headers = list[list[bytes]]  # dkimpy's parsed header block: [name, value] pairs, values folded as received
Fields = Sequence[tuple[str, str]]  # the parser's header block: EmailMessage.raw_items()

# Aligned signatures, with a matching body hash, that may go on to DNS and RSA. Real mail has one or two
# aligned signatures (the author's domain, perhaps its mail provider's subdomain).
MAX_SIGNATURES_VERIFIED = 3
# Trusted Authentication-Results headers parsed: a receiver writes one, or one per filter (DKIM, DMARC).
MAX_RESULTS_PARSED = 5
# Fields a message has at most once (RFC 5322 section 3.6, RFC 2045 for the MIME ones).
ONCE = frozenset(
    b"from sender reply-to to cc bcc message-id in-reply-to references subject date "
    b"mime-version content-type content-transfer-encoding".split()
)
_RECEIVED_BY = re.compile(rb"\bby\s+([^\s;()]+)", re.IGNORECASE)
_OURS = re.compile(rb"\bby\s+\S+\s+\(mailbot\)")  # the Received header mailbot's listener writes on top
_COMMENT = re.compile(rb"\([^()]*\)")


@dataclass
class Work:
    """What authenticating one message cost, counted: tests bound it (never by timing)."""

    body_canonicalisations: int = 0
    body_hashes: int = 0
    signatures_verified: int = 0  # handed to dkimpy: one key look-up and one RSA check each
    dns_queries: int = 0
    results_parsed: int = 0  # Authentication-Results headers parsed by authres


@dataclass(frozen=True)
class AuthVerdict:
    """Whether the From address is authenticated, by which method, for which domain, and why (not)."""

    authenticated: bool
    method: str  # "dkim" | "arh-dmarc" | "arh-dkim" | "trusted-path" | "none"
    domain: str | None  # the aligned signing/authenticated domain
    reason: str
    temporary: bool = False  # a DNS failure: try again later, never a pass
    work: Work = field(default_factory=Work, compare=False)


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
    raw: bytes,
    from_address: str,
    *,
    fields: Fields,
    trusted_authserv_ids: Sequence[str],
    resolver: Resolver,
    lookups: DnsBudget | None = None,
) -> AuthVerdict:
    """Whether `raw` proves that `from_address` wrote it (see the module docstring for the rules).

    `fields`: the top-level header fields as the parser read them (`ParsedMessage.message.raw_items()`).
    `lookups`: the DNS budget to spend, by default a fresh `DnsBudget` over `resolver`.
    Blocks on DNS and RSA work: run it off the event loop.
    """
    work = Work()
    lookups = lookups or DnsBudget(resolver)
    verdict = _authenticate(normalise(raw), from_address, fields, trusted_authserv_ids, lookups, work)
    return replace(verdict, work=work)


def _authenticate(
    raw: bytes, from_address: str, fields: Fields, trusted_ids: Sequence[str], lookups: DnsBudget, work: Work
) -> AuthVerdict:
    from_domain = _from_domain(from_address)
    if not from_domain:
        return _refused(f"From address {from_address!r} has no domain")
    try:
        message = dkim.DKIM(raw)
    except dkim.DKIMException as exc:
        return _refused(f"header block cannot be parsed: {exc}")
    except IndexError:  # dkimpy's parser on a continuation line before any header
        return _refused("header block cannot be parsed: it starts with a continuation line")
    problem = _reading_problem(raw, message.headers, fields)
    if problem is not None:
        return _refused(problem)
    trusted = {authserv_id.lower() for authserv_id in trusted_ids}
    by_results, final = _by_authentication_results(message.headers, from_domain, trusted, work)
    if by_results.authenticated or final:
        return by_results
    try:
        by_signatures = _by_dkim_signatures(message, from_domain, lookups, work)
    finally:
        work.dns_queries = lookups.asked
    if by_signatures.authenticated:
        return by_signatures
    return replace(by_signatures, reason=f"{by_results.reason}; {by_signatures.reason}")


# --- One reading ---------------------------------------------------------------------------------------


def _reading_problem(raw: bytes, headers: Headers, fields: Fields) -> str | None:
    """Why the verifier's and the parser's readings of the header block may differ, or None."""
    counts = Counter(name.lower() for name, _ in headers)
    if counts[b"from"] != 1:
        return f"message has {counts[b'from']} From headers, not one"
    repeated = sorted(name.decode() for name, count in counts.items() if count > 1 and name in ONCE)
    if repeated:
        # A signature covers the bottom-most instance (RFC 6376 section 5.4.2), the parser reads the first.
        return f"message has more than one {', '.join(repeated)} header (RFC 5322 section 3.6 allows one)"
    if _envelope_line_inside(raw):
        return "a 'From ' line inside the header block: the verifier skips it, the parser reads a body from it"
    if len(headers) != len(fields) or any(
        _field(name, value) != (parsed_name, parsed_value)
        for (name, value), (parsed_name, parsed_value) in zip(headers, fields, strict=False)
    ):
        return "the DKIM verifier and the parser read different header fields, so neither can be believed"
    return None


def _field(name: bytes, value: bytes) -> tuple[str, str]:
    """A dkimpy header as the standard parser stores it (email.policy's header_source_parse)."""
    text = value.lstrip(b" \t").rstrip(b"\r\n")
    return name.decode("ascii", "surrogateescape"), text.decode("ascii", "surrogateescape")


def _envelope_line_inside(raw: bytes) -> bool:
    """An mbox "From " line in the header block anywhere but on the first line."""
    end = raw.find(b"\r\n\r\n")
    return b"\r\nFrom " in raw[: len(raw) if end < 0 else end + 2]


# --- Authentication-Results ----------------------------------------------------------------------------


def _by_authentication_results(
    headers: Headers, from_domain: str, trusted: set[str], work: Work
) -> tuple[AuthVerdict, bool]:
    """The trusted receiver's verdict, and whether it is final (a trusted fail)."""
    found = _trusted_results(headers, trusted, work)
    if not found:
        return _refused("no trusted Authentication-Results"), False
    dmarc = _topmost(found, "dmarc")
    if dmarc is not None:
        authserv_id, results = dmarc
        mine = [r for r in results if _ascii_domain(_property(r, "header", "from") or "") == from_domain]
        if any(_result(r) == "pass" for r in mine):
            return AuthVerdict(
                True, "arh-dmarc", from_domain, f"dmarc=pass for {from_domain} from trusted {authserv_id}"
            ), True
        if any(_result(r) == "fail" for r in mine):
            return _refused(f"dmarc=fail for {from_domain} from trusted {authserv_id} (final)"), True
    dkim_results = _topmost(found, "dkim")
    if dkim_results is not None:
        authserv_id, results = dkim_results
        signers = [(r, _dkim_result_domain(r)) for r in results]
        mine = [(r, signer) for r, signer in signers if signer and aligned(signer, from_domain)]
        for result, signer in mine:
            if _result(result) == "pass":
                return AuthVerdict(
                    True,
                    "arh-dkim",
                    signer,
                    f"dkim=pass for {signer}, aligned with {from_domain}, from trusted {authserv_id}",
                ), True
        if any(_result(r) == "fail" for r, _ in mine):
            return _refused(f"dkim=fail aligned with {from_domain} from trusted {authserv_id} (final)"), True
    ids = ", ".join(sorted({authserv_id for authserv_id, _ in found}))
    reason = f"trusted Authentication-Results ({ids}) show no dmarc=pass or aligned dkim=pass for {from_domain}"
    return _refused(reason), False


def _topmost(found: list[tuple[str, Any]], method: str) -> tuple[str, list[Any]] | None:
    """The results for `method` of the topmost trusted header that reports it."""
    for authserv_id, header in found:
        results = [r for r in header.results if str(r.method).lower() == method]
        if results:
            return authserv_id, results
    return None


def _trusted_results(headers: Headers, trusted: set[str], work: Work) -> list[tuple[str, Any]]:
    """(authserv-id, parsed header) for the trusted receiver's Authentication-Results, topmost first: those
    above the first Received header another host wrote; at most MAX_RESULTS_PARSED are parsed."""
    found: list[tuple[str, Any]] = []
    for index, (name, value) in enumerate(headers):
        lowered = name.lower()
        if lowered == b"received":
            if index == 0 and _OURS.search(value):
                continue  # mailbot's listener's own, on top
            if _trusted_hop(value, trusted):
                continue
            break
        if lowered != b"authentication-results" or _authserv_id(value) not in trusted:
            continue
        if work.results_parsed >= MAX_RESULTS_PARSED:
            break
        work.results_parsed += 1
        unfolded = value.replace(b"\r\n", b"").decode("utf-8", "replace")
        try:
            header = authres.all_features().parse_value(unfolded)
        except authres.AuthResError:
            continue  # unparseable: we cannot tell what it says, so it says nothing
        if str(header.authserv_id).lower() in trusted:
            found.append((str(header.authserv_id).lower(), header))
    return found


def _trusted_hop(received: bytes, trusted: set[str]) -> bool:
    """Whether a Received header was written by the trusted receiver's organization: its `by` host has the
    organizational domain of a trusted authserv-id (mx.schoolmint.com, and the imap.schoolmint.com that
    delivered the message to the mailbox mailbot reads)."""
    by = _RECEIVED_BY.search(received)
    if by is None:
        return False
    host = _ascii_domain(by.group(1).decode("ascii", "replace"))
    return host in trusted or organizational_domain(host) in {organizational_domain(t) for t in trusted}


def _authserv_id(value: bytes) -> str:
    """The authserv-id of an Authentication-Results value, read as text (RFC 8601 section 2.2): the first
    word before the first ";", comments left out; cheap, so nothing is parsed for an untrusted header."""
    head = _COMMENT.sub(b" ", value.split(b";", 1)[0])
    words = head.split(None, 1)
    return words[0].decode("ascii", "replace").lower() if words else ""


def _result(result: Any) -> str:
    return str(result.result).lower()


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


# --- DKIM signatures -----------------------------------------------------------------------------------


class _Body:
    """The message body canonicalised once per mode and hashed once per mode and algorithm (dkimpy does
    both again for each signature it verifies, and an l= signature is not even cheaper: issue 12)."""

    def __init__(self, body: bytes, work: Work) -> None:
        self.body = body
        self.work = work
        self._canonical: dict[bytes, bytes] = {}
        self._digests: dict[tuple[bytes, bytes], bytes] = {}

    def canonical(self, policy: CanonicalizationPolicy) -> bytes:
        mode = policy.body_algorithm.name
        if mode not in self._canonical:
            self.work.body_canonicalisations += 1
            self._canonical[mode] = policy.canonicalize_body(self.body)
        return self._canonical[mode]

    def digest(self, policy: CanonicalizationPolicy, algorithm: bytes) -> bytes:
        key = (policy.body_algorithm.name, algorithm)
        if key not in self._digests:
            self.work.body_hashes += 1
            self._digests[key] = HASH_ALGORITHMS[algorithm](self.canonical(policy)).digest()
        return self._digests[key]


def _by_dkim_signatures(message: dkim.DKIM, from_domain: str, lookups: DnsBudget, work: Work) -> AuthVerdict:
    # The same selection dkimpy's verify(idx=...) indexes into.
    signatures = [value for name, value in message.headers if name.lower() == b"dkim-signature"]
    if not signatures:
        return _refused("no DKIM signature")
    body = _Body(message.body, work)
    dnsfunc = dkim_dnsfunc(lookups)
    problems: list[str] = []
    dns_failure: str | None = None
    for idx, value in enumerate(signatures):
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            problems.append("dkim signature is malformed (bad tag=value list)")
            continue
        problem = _policy_problem(tags, from_domain) or _tags_problem(tags) or _body_problem(tags, body)
        if problem is not None:
            problems.append(problem)
            continue
        if work.signatures_verified >= MAX_SIGNATURES_VERIFIED:
            problems.append(f"more than {MAX_SIGNATURES_VERIFIED} aligned dkim signatures: the rest not checked")
            break
        work.signatures_verified += 1
        try:
            problem = _verification_problem(message, idx, tags, dnsfunc)
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


def _verification_problem(
    message: dkim.DKIM, idx: int, tags: Tags, dnsfunc: Callable[..., bytes | None]
) -> str | None:
    """Why dkimpy does not verify signature `idx` (its key, header hash and RSA), or None when it does.

    TransientDNSError from the key look-up passes up.
    """
    try:
        prepared = message.verify_headerprep(idx)  # the tag checks of dkim.verify (v=, a=, x=, i= ...)
        if not prepared:
            return f"dkim signature is missing ({_label(tags)})"
        sig, include_headers, signature_headers = prepared
        # bh= was compared with the body canonicalised once per mode (_body_problem). Without it, dkimpy's
        # verify_sig checks the header hash and the key only, instead of canonicalising the body again.
        header_only = {tag: value for tag, value in sig.items() if tag != b"bh"}
        verified = message.verify_sig(header_only, include_headers, signature_headers[idx], dnsfunc)
    except dkim.DKIMException as exc:
        return f"dkim signature is invalid ({_label(tags)}): {exc}"
    except binascii.Error as exc:
        return f"dkim signature is invalid ({_label(tags)}): {exc}"
    return None if verified else f"dkim signature does not verify ({_label(tags)})"


def _policy_problem(tags: Tags, from_domain: str) -> str | None:
    """Our checks on a signature's tags beyond dkimpy's verdict (see the module docstring): no body work,
    no DNS, so they come first."""
    label = _label(tags)
    if b"d" not in tags or b"h" not in tags:
        return f"dkim signature is malformed: d= or h= missing ({label})"
    # Split h= as dkimpy does when it hashes, so both see the same list.
    if b"from" not in {name.strip().lower() for name in re.split(rb"\s*:\s*", tags[b"h"])}:
        return f"dkim signature does not cover From ({label})"
    try:
        signer = tags[b"d"].decode()
    except UnicodeDecodeError:
        return f"dkim signature is malformed: d= is not UTF-8 ({label})"
    if not aligned(signer, from_domain):
        return f"dkim signing domain is not aligned with From domain {from_domain} ({label})"
    return None


def _tags_problem(tags: Tags) -> str | None:
    """dkimpy's own checks of the tags (v=, a=, b=, x=, t=, i=), which need neither the body nor DNS."""
    try:
        dkim.validate_signature_fields(tags)
    except dkim.DKIMException as exc:
        return f"dkim signature is invalid ({_label(tags)}): {exc}"
    return None


def _body_problem(tags: Tags, body: _Body) -> str | None:
    """l= and bh= against the body canonicalised once per mode; None when the body hash matches."""
    label = _label(tags)
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        return f"dkim signature is malformed: invalid c= ({label})"
    algorithm = tags.get(b"a", b"")
    if algorithm not in HASH_ALGORITHMS or b"bh" not in tags:
        return f"dkim signature is malformed: unknown a= or no bh= ({label})"
    if b"l" in tags:
        if not tags[b"l"].isdigit():
            return f"dkim signature is malformed: l= is not a number ({label})"
        if int(tags[b"l"]) != len(body.canonical(policy)):
            return f"dkim signature l= does not cover the whole body ({label})"
    try:
        expected = base64.b64decode(re.sub(rb"\s+", b"", tags[b"bh"]), validate=True)
    except binascii.Error:
        return f"dkim signature is invalid ({label}): bh= is not base64"
    if body.digest(policy, algorithm) != expected:
        return f"dkim signature is invalid ({label}): body hash mismatch"
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
