"""DNS TXT look-ups: dnspython against a small name server on 127.0.0.1, the fixed resolver, dkimpy's hook."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from mailbot.dns import DnsBudget, DnsResolver, FixedResolver, dkim_dnsfunc
from mailbot.errors import TransientDNSError


class _ZoneHandler(socketserver.BaseRequestHandler):
    """Answers one UDP query from a fixed script keyed by the queried name."""

    def handle(self) -> None:
        data, sock = self.request
        query = dns.message.from_wire(data)
        qname = query.question[0].name
        name = qname.to_text(omit_final_dot=True).lower()
        if name == "silent.test":
            return  # never answers: the client's lifetime runs out
        response = dns.message.make_response(query)
        if name == "nx.test":
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif name == "broken.test":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name == "sel._domainkey.example.test":
            # One record split into two character-strings, as long DKIM keys are published.
            response.answer.append(dns.rrset.from_text(qname, 60, "IN", "TXT", '"v=DKIM1; k=rsa; " "p=QUJD"'))
        elif name == "two.test":
            response.answer.append(dns.rrset.from_text(qname, 60, "IN", "TXT", '"first"', '"second"'))
        # Any other name: NOERROR with no answer (NODATA).
        sock.sendto(response.to_wire(), self.client_address)


@pytest.fixture(scope="module")
def name_server() -> Iterator[int]:
    server = socketserver.UDPServer(("127.0.0.1", 0), _ZoneHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def resolver(name_server: int) -> DnsResolver:
    return DnsResolver(nameservers=["127.0.0.1"], port=name_server, lifetime=0.3)


class TestDnsResolver:
    def test_joins_the_character_strings_of_a_record(self, resolver: DnsResolver) -> None:
        """A record published as several strings comes back as one value (RFC 6376 section 3.6.2.2)."""
        assert resolver.txt("sel._domainkey.example.test") == [b"v=DKIM1; k=rsa; p=QUJD"]

    def test_returns_every_record(self, resolver: DnsResolver) -> None:
        """Each TXT record of the set is one element."""
        assert sorted(resolver.txt("two.test")) == [b"first", b"second"]

    def test_nxdomain_is_no_records(self, resolver: DnsResolver) -> None:
        """A name that does not exist has no records: an answer, not a failure."""
        assert resolver.txt("nx.test") == []

    def test_nodata_is_no_records(self, resolver: DnsResolver) -> None:
        """A name without TXT records has none."""
        assert resolver.txt("empty.test") == []

    def test_servfail_is_transient(self, resolver: DnsResolver) -> None:
        """SERVFAIL tells nothing about the records: try again later."""
        with pytest.raises(TransientDNSError, match=r"broken\.test"):
            resolver.txt("broken.test")

    def test_timeout_is_transient(self, resolver: DnsResolver) -> None:
        """A server that never answers is a temporary failure, not an empty answer."""
        with pytest.raises(TransientDNSError, match=r"silent\.test"):
            resolver.txt("silent.test")

    @pytest.mark.parametrize("name", ["a..test", "x" * 64 + ".test"])
    def test_impossible_names_have_no_records(self, resolver: DnsResolver, name: str) -> None:
        """A name that cannot exist (empty or over-long label, e.g. from a crafted d=) has no records."""
        assert resolver.txt(name) == []


class TestFixedResolver:
    def test_names_compare_case_insensitively_with_or_without_the_dot(self) -> None:
        """DNS names are case-insensitive (RFC 4343) and the root dot is optional."""
        fixed = FixedResolver({"Sel._domainkey.Example.com.": [b"v=DKIM1; p=QUJD"]})
        assert fixed.txt("sel._domainkey.example.com") == [b"v=DKIM1; p=QUJD"]

    def test_unknown_name_has_no_records(self) -> None:
        """A name not in the table answers like NXDOMAIN."""
        assert FixedResolver({}).txt("sel._domainkey.example.com") == []

    def test_failing_name_raises_transient(self) -> None:
        """A name listed as failing stands for a timeout."""
        fixed = FixedResolver({"a.example": [b"x"]}, failing=["A.example."])
        with pytest.raises(TransientDNSError):
            fixed.txt("a.example")


class TestDkimDnsfunc:
    def test_takes_bytes_with_trailing_dot(self) -> None:
        """dkimpy asks for b"sel._domainkey.example." and gets one record back as bytes."""
        lookup = dkim_dnsfunc(FixedResolver({"sel._domainkey.example": [b"v=DKIM1; p=QUJD"]}))
        assert lookup(b"sel._domainkey.example.", timeout=5) == b"v=DKIM1; p=QUJD"

    def test_first_of_several_records(self) -> None:
        """Several records at one selector are undefined (RFC 6376 section 3.6.2.2); the first is used."""
        lookup = dkim_dnsfunc(FixedResolver({"sel._domainkey.example": [b"one", b"two"]}))
        assert lookup(b"sel._domainkey.example.") == b"one"

    def test_no_record_is_none(self) -> None:
        """A missing key is None, which dkimpy reports as a failed signature."""
        assert dkim_dnsfunc(FixedResolver({}))(b"sel._domainkey.example.") is None

    def test_non_ascii_name_is_none(self) -> None:
        """A name that is not ASCII cannot be in DNS as written."""
        assert dkim_dnsfunc(FixedResolver({}))(b"s\xff._domainkey.example.") is None

    def test_transient_failure_passes_through(self) -> None:
        """A failure is raised, so dkimpy's caller can tell it from a missing key."""
        lookup = dkim_dnsfunc(FixedResolver({}, failing=["sel._domainkey.example"]))
        with pytest.raises(TransientDNSError):
            lookup(b"sel._domainkey.example.")

    def test_over_real_dns(self, resolver: DnsResolver) -> None:
        """The adapter works on the dnspython resolver too."""
        assert dkim_dnsfunc(resolver)(b"sel._domainkey.example.test.") == b"v=DKIM1; k=rsa; p=QUJD"


class SlowServer(FixedResolver):
    """Fixed records behind a name server that takes `delay` seconds of a fake monotonic clock per look-up."""

    def __init__(self, records: dict[str, list[bytes]], delay: float, **kw: Any) -> None:
        super().__init__(records, **kw)
        self.delay = delay
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def txt(self, name: str) -> list[bytes]:
        self.now += self.delay
        return super().txt(name)


class TestDnsBudget:
    def test_each_name_is_asked_once(self) -> None:
        """A second look-up of a name, answered or failed, costs nothing."""
        server = FixedResolver({"a.example": [b"x"]}, failing=["down.example"])
        budget = DnsBudget(server)
        assert budget.txt("a.example") == budget.txt("A.example.") == [b"x"]
        for _ in range(2):
            with pytest.raises(TransientDNSError):
                budget.txt("down.example")
        assert server.asked == ["a.example", "down.example"] and budget.asked == 2

    def test_at_most_n_look_ups(self) -> None:
        """Past `queries` look-ups, the answer is a temporary failure without asking."""
        server = FixedResolver({})
        budget = DnsBudget(server, queries=2)
        assert budget.txt("a.example") == budget.txt("b.example") == []
        with pytest.raises(TransientDNSError, match="2 look-ups made already"):
            budget.txt("c.example")
        assert len(server.asked) == 2

    def test_no_look_up_starts_after_the_time_budget(self) -> None:
        """A slow server (3 s a look-up) gets two look-ups in a 4 s budget, not five."""
        server = SlowServer({}, delay=3.0, failing=[f"s{i}.example" for i in range(5)])
        budget = DnsBudget(server, seconds=4.0, queries=10, clock=server.clock)
        for i in range(5):
            with pytest.raises(TransientDNSError):
                budget.txt(f"s{i}.example")
        assert len(server.asked) == 2 and server.now == 6.0
