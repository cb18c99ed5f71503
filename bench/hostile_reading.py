"""What reading one hostile message costs (issue 12): the intake's parse and sender authentication of the
messages of the security review, with a real RSA key (openssl) and fixed DNS records, one at a time.

  1. "100 l= signatures": 100 aligned DKIM signatures with an l= shorter than a 5 MB body, and the genuine
     signature below them (the review measured 36 s of CPU);
  2. "slow DNS": 5 aligned signatures whose key look-ups each take 3 s and then time out (16 s, then
     retried every 5 minutes for a day);
  3. "huge Authentication-Results": 900 headers of 20 KB, half by an untrusted receiver, half carrying the
     trusted authserv-id below another host's Received line (41 s).
For each: wall and CPU seconds of mailbot.parse.parse + mailbot.authn.authenticate, the verdict, and the
work it counted (AuthVerdict.work). Baseline "dkimpy": dkim.verify of every signature, as the review's
reading did (case 1 only).

    .venv/bin/python bench/hostile_reading.py [--body-mb 5] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dkim

from mailbot.authn import AuthVerdict, authenticate
from mailbot.dns import FixedResolver, dkim_dnsfunc
from mailbot.errors import TransientDNSError
from mailbot.parse import parse

FROM = "ana@lincoln.example"
HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


class SlowResolver(FixedResolver):
    """A name server that answers nothing for 3 s a look-up, then times out."""

    def txt(self, name: str) -> list[bytes]:
        time.sleep(3.0)
        raise TransientDNSError(f"DNS TXT look-up of {name} failed: timeout (3 s)")


def rsa_key() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "key.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True)
        der = subprocess.run(
            ["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"], check=True, capture_output=True
        ).stdout
        return path.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def message(body: bytes, above: bytes = b"") -> bytes:
    head = (
        f"From: Ana Diaz <{FROM}>\r\nTo: herosupport@schoolmint.com\r\nSubject: hostile\r\n"
        "Date: Tue, 01 Dec 2026 10:00:00 -0500\r\nMessage-ID: <hostile@lincoln.example>\r\n\r\n"
    ).encode()
    return above + head + body


def l_signatures(key: bytes, body_mb: int) -> bytes:
    body = b"A line of a large body, long enough to be worth canonicalising.\r\n" * (body_mb * 16_000)
    raw = message(body)
    short = dkim.sign(message(body[:1000]), b"sel", b"lincoln.example", key, include_headers=HEADERS,
                      length=True, canonicalize=(b"relaxed", b"relaxed"))  # fmt: skip
    return bytes(short) * 100 + bytes(dkim.sign(raw, b"sel", b"lincoln.example", key, include_headers=HEADERS)) + raw


def slow_signatures(key: bytes) -> bytes:
    raw = message(b"Hello.\r\n")
    for i in range(5):
        raw = bytes(dkim.sign(raw, f"s{i}".encode(), b"lincoln.example", key, include_headers=HEADERS)) + raw
    return raw


def huge_results() -> bytes:
    padding = "\r\n\t".join(["x" * 900] * 22)
    untrusted = f"Authentication-Results: mx.other.example; dmarc=pass header.from=lincoln.example; {padding}\r\n"
    trusted = f"Authentication-Results: mx.schoolmint.com; dmarc=pass header.from=lincoln.example; {padding}\r\n"
    hop = "Received: from a.example.org by relay.example.org; Tue, 1 Dec 2026 10:00:00 -0500\r\n"
    return message(b"Hello.\r\n", (untrusted * 450 + hop + trusted * 450).encode())


def timed(work: Callable[[], object]) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def read(raw: bytes, resolver: FixedResolver) -> AuthVerdict:
    """What the intake does with the bytes: parse, then authenticate the From with the parser's fields."""
    fields = list(parse(raw).message.raw_items())
    return authenticate(raw, FROM, fields=fields, trusted_authserv_ids=["mx.schoolmint.com"], resolver=resolver)


def verify(message: dkim.DKIM, idx: int, dnsfunc: Callable[..., bytes | None]) -> bool:
    try:
        return bool(message.verify(idx=idx, dnsfunc=dnsfunc))
    except dkim.DKIMException:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--body-mb", type=int, default=5)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    private, record = rsa_key()
    keys = FixedResolver({"sel._domainkey.lincoln.example": [record]})
    cases = [
        (f"100 l= signatures, {args.body_mb} MB body", l_signatures(private, args.body_mb), keys),
        ("5 aligned signatures, slow DNS", slow_signatures(private), SlowResolver({})),
        ("900 Authentication-Results of 20 KB", huge_results(), keys),
    ]
    print(f"{'case':<40} {'MB':>5} {'wall s':>7} {'cpu s':>7}  verdict / work")
    for name, raw, resolver in cases:
        verdict, wall, cpu = timed(lambda raw=raw, resolver=resolver: read(raw, resolver))
        assert isinstance(verdict, AuthVerdict)
        outcome = "pass" if verdict.authenticated else ("temporary" if verdict.temporary else "refused")
        print(f"{name:<40} {len(raw) / 1e6:>5.1f} {wall:>7.2f} {cpu:>7.2f}  {outcome}, {verdict.work}")
    if not args.skip_baseline:
        raw = cases[0][1]
        message_ = dkim.DKIM(raw)
        count = sum(1 for header, _ in message_.headers if header.lower() == b"dkim-signature")
        dnsfunc = dkim_dnsfunc(keys)
        _, wall, cpu = timed(lambda: [verify(message_, i, dnsfunc) for i in range(count)])
        print(f"{'baseline: dkimpy verify of each signature':<40} {len(raw) / 1e6:>5.1f} {wall:>7.2f} {cpu:>7.2f}")


if __name__ == "__main__":
    main()
