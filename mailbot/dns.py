"""DNS TXT look-ups behind one small interface, so sender authentication can run on fixed records.

`Resolver.txt(name)` answers with the TXT records at `name` (each record's character-strings joined,
RFC 6376 section 3.6.2.2), `[]` when the name or the record type does not exist, and raises
`TransientDNSError` when it could not find out (timeout, SERVFAIL): a failed look-up is never read as an
answer. `DnsResolver` asks the system's resolvers through dnspython; `FixedResolver` serves records from
a dict (tests, offline checks). `DnsBudget` bounds what one message may cost. `dkim_dnsfunc` adapts any
of them to dkimpy's `dnsfunc=` hook.

Look-ups block; callers run them off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from mailbot.errors import ConfigError, TransientDNSError

DEFAULT_LIFETIME = 3.0  # seconds for a whole look-up, all servers and retries included
# What one message's sender authentication may spend on DNS (issue 12: five aligned signatures with a slow
# name server each waited 3 s). A look-up is not started once MESSAGE_SECONDS have passed, so the worst
# case is MESSAGE_SECONDS plus one lifetime.
MESSAGE_QUERIES = 3
MESSAGE_SECONDS = 4.0


class Resolver(Protocol):
    def txt(self, name: str) -> list[bytes]:
        """The TXT records at `name` (no trailing dot); [] on NXDOMAIN/NODATA; TransientDNSError otherwise."""
        ...


class DnsResolver:
    """TXT look-ups through dnspython: the system's resolv.conf, or the given name servers."""

    def __init__(
        self, *, nameservers: Sequence[str] | None = None, port: int = 53, lifetime: float = DEFAULT_LIFETIME
    ) -> None:
        try:
            self._resolver = dns.resolver.Resolver(configure=nameservers is None)
        except dns.resolver.NoResolverConfiguration as exc:
            raise ConfigError(f"DNS: no name server configured in /etc/resolv.conf ({exc})") from exc
        if nameservers is not None:
            self._resolver.nameservers = list(nameservers)
        self._resolver.port = port
        self._resolver.lifetime = lifetime

    def txt(self, name: str) -> list[bytes]:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            # An empty or over-long label (e.g. from a crafted DKIM d=) names nothing that can exist.
            return []
        try:
            answer = self._resolver.resolve(qname, dns.rdatatype.TXT, raise_on_no_answer=False, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            # Timeouts and SERVFAIL/REFUSED from every server (NoNameservers): nothing was learnt.
            raise TransientDNSError(f"DNS TXT look-up of {name} failed: {exc}") from exc
        if answer.rrset is None:
            return []
        return [b"".join(rdata.strings) for rdata in answer.rrset]


class FixedResolver:
    """TXT records from a dict; names in `failing` raise TransientDNSError (tests, offline use)."""

    def __init__(self, records: Mapping[str, list[bytes]], *, failing: Iterable[str] = ()) -> None:
        self._records = {_key(name): list(values) for name, values in records.items()}
        self._failing = {_key(name) for name in failing}
        self.asked: list[str] = []  # every name looked up, in order: what a test counts

    def txt(self, name: str) -> list[bytes]:
        key = _key(name)
        self.asked.append(key)
        if key in self._failing:
            raise TransientDNSError(f"DNS TXT look-up of {name} failed: timeout (fixed)")
        return list(self._records.get(key, []))


class DnsBudget:
    """One message's DNS: each name asked once (a failure included), at most `queries` look-ups, none
    started once `seconds` have passed since the first. Past the budget, TransientDNSError: the message is
    tried again later as a whole."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        queries: int = MESSAGE_QUERIES,
        seconds: float = MESSAGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.queries = queries
        self.clock = clock
        self.seconds = seconds
        self.started: float | None = None
        self.asked = 0
        self._answers: dict[str, list[bytes] | TransientDNSError] = {}

    def txt(self, name: str) -> list[bytes]:
        key = _key(name)
        if key not in self._answers:
            self._answers[key] = self._ask(name)
        answer = self._answers[key]
        if isinstance(answer, TransientDNSError):
            raise answer
        return list(answer)

    def _ask(self, name: str) -> list[bytes] | TransientDNSError:
        now = self.clock()
        self.started = now if self.started is None else self.started
        if self.asked >= self.queries:
            return TransientDNSError(f"DNS TXT look-up of {name} not tried: {self.queries} look-ups made already")
        if now - self.started >= self.seconds:
            return TransientDNSError(f"DNS TXT look-up of {name} not tried: {self.seconds:g} s of DNS spent already")
        self.asked += 1
        try:
            return self.resolver.txt(name)
        except TransientDNSError as exc:
            return exc


def dkim_dnsfunc(resolver: Resolver) -> Callable[..., bytes | None]:
    """dkimpy's `dnsfunc`: takes b"sel._domainkey.example." (and a `timeout=`), returns one record or None.

    TransientDNSError passes through dkimpy's verify unchanged (it catches only its own errors), so the
    caller can tell "try later" from "no key".
    """

    def lookup(name: bytes, timeout: float = DEFAULT_LIFETIME) -> bytes | None:
        # `timeout` is dkimpy's; the resolver applies its own lifetime.
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            return None  # DNS names in d= and s= are ASCII (A-labels, RFC 6376 section 3.5)
        records = resolver.txt(text.removesuffix("."))
        # Several records at one selector give undefined results (RFC 6376 section 3.6.2.2); like
        # dkimpy's own look-up, use the first.
        return records[0] if records else None

    return lookup


def _key(name: str) -> str:
    # DNS names compare case-insensitively (RFC 4343); the trailing dot is optional here.
    return name.removesuffix(".").lower()
