"""mailbot.salvage: what can still be read from a message the parser refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbot.parse import Address, ParseLimits
from mailbot.salvage import read
from tests.test_parse import mutated_messages

HEAD = b"From: Ana Diaz <ana@lincoln.example>\r\nTo: herosupport@schoolmint.com\r\nSubject: deep\r\n"


def nested(levels: int, leaf: bytes) -> bytes:
    out = HEAD + b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for level in range(1, levels):
        out += b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (level - 1, level)
    return out + b"--b%d\r\n" % (levels - 1) + leaf


class TestDegraded:
    def test_a_message_within_the_limits_is_read_in_full(self) -> None:
        parsed = read(HEAD + b"\r\nbody\r\n")
        assert parsed.degraded is None and parsed.attachments == [] and parsed.text == "body"

    def test_first_text_headers_and_the_original(self) -> None:
        raw = nested(
            200,
            b"Content-Type: application/pdf\r\nContent-Disposition: attachment\r\n\r\n%PDF\r\n"
            b"--b199\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n"
            b"\r\nLe caf=E9 est ferm=E9.\r\n--b199--\r\n",
        )
        parsed = read(raw)
        assert parsed.degraded == "MIME parts nested more than 30 deep"
        assert parsed.text == "Le café est fermé."
        assert parsed.subject == "deep" and parsed.to == [Address("", "herosupport@schoolmint.com")]
        assert parsed.author == parsed.from_ == Address("Ana Diaz", "ana@lincoln.example")
        [original] = parsed.attachments
        assert (original.filename, original.content_type, original.data) == ("original.eml", "message/rfc822", raw)
        assert parsed.defects[0].startswith("degraded reading: MIME parts nested")
        assert parsed.to_json()["degraded"] == "MIME parts nested more than 30 deep"

    def test_html_when_there_is_no_plain_text(self) -> None:
        parsed = read(nested(40, b"Content-Type: text/html\r\n\r\n<p>Only <b>HTML</b></p>\r\n"))
        assert parsed.text == "Only HTML" and parsed.html is not None

    def test_several_from_fields_trust_no_one(self) -> None:
        raw = b"From: eve@evil.example\r\n" + HEAD + b"".join(b"X-F: %d\r\n" % i for i in range(1200)) + b"\r\nx"
        parsed = read(raw)
        assert parsed.degraded and parsed.author is None and parsed.from_ is not None

    def test_a_repaired_block_trusts_no_one(self) -> None:
        raw = HEAD + b"stray line\r\nX-F: 1\r\n" + b"".join(b"X-F: %d\r\n" % i for i in range(1200)) + b"\r\nx"
        parsed = read(raw)
        assert parsed.degraded and parsed.author is None and parsed.subject == "deep stray line"

    def test_over_the_size_limit(self) -> None:
        raw = HEAD + b"\r\n" + b"x" * 5000
        parsed = read(raw, ParseLimits(max_bytes=1000))
        assert parsed.degraded and parsed.subject == "deep" and parsed.attachments[-1].data == raw

    def test_empty_message(self) -> None:
        parsed = read(b"\r\n")
        assert parsed.degraded == "message is empty" and parsed.from_ is None and parsed.text == ""

    def test_parse_command_prints_the_degraded_reading(self, tmp_path: Path) -> None:
        path = tmp_path / "deep.eml"
        path.write_bytes(nested(100, b"Content-Type: text/plain\r\n\r\nhelp\r\n"))
        done = subprocess.run([sys.executable, "-m", "mailbot", "parse", str(path)], capture_output=True, check=True)
        document = json.loads(done.stdout)
        assert document["text"] == "help" and document["degraded"] == "MIME parts nested more than 30 deep"
        assert [a["filename"] for a in document["attachments"]] == ["original.eml"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_messages(), st.binary(max_size=2000)))
def test_any_bytes_are_read(raw: bytes) -> None:
    """Whatever the bytes, a reading: in full, or degraded with the original kept whole."""
    parsed = read(raw, ParseLimits(max_depth=3, max_parts=8, max_headers=12))
    if parsed.degraded:
        assert parsed.attachments[-1].data == raw
    json.dumps(parsed.to_json(), ensure_ascii=False).encode("utf-8")


def test_a_from_field_too_long_to_keep_trusts_no_one() -> None:
    """A From over max_header_bytes is left out whole: shown from nowhere else, trusted never."""
    raw = (
        b"From: Ana <ana@lincoln.example>\r\n" + b" (x)\r\n" * 20_000 + b"Reply-To: ana@lincoln.example\r\n"
        b"Subject: long\r\n\r\nbody\r\n"
    )
    parsed = read(raw)
    assert parsed.degraded and parsed.author is None and parsed.subject == "long"
