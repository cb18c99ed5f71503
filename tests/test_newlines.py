"""Line ends: what the SMTP door refuses and how the other doors' mail is read (mailbot.newlines)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbot.newlines import bare_newline, normalise


class TestBareNewline:
    @pytest.mark.parametrize(
        ("raw", "found"),
        [
            (b"Subject: a\r\n\r\nbody\r\n", None),
            (b"", None),
            (b"Subject: a\n\r\nbody\r\n", "LF"),
            (b"X-Pad: a\rFrom: ana@lincoln.example\r\n\r\n", "CR"),
            (b"body\r\r\n", "CR"),
            (b"a\r\nb\n\rc", "LF"),
        ],
    )
    def test_finds_line_ends_that_are_not_crlf(self, raw: bytes, found: str | None) -> None:
        """Only CRLF is a line end (RFC 5322 section 2.3); a lone CR or LF is named."""
        assert bare_newline(raw) == found


class TestNormalise:
    def test_clean_bytes_are_returned_as_they_are(self) -> None:
        """No copy of a large message that needs nothing."""
        raw = b"Subject: a\r\n\r\n" + b"x" * 1000 + b"\r\n"
        assert normalise(raw) is raw

    def test_bare_cr_and_lf_become_crlf(self) -> None:
        """Each lone CR and lone LF is a line end, as the standard parser reads it."""
        assert normalise(b"X-Pad: a\rFrom: b\nSubject: c\r\r\nbody\n") == (
            b"X-Pad: a\r\nFrom: b\r\nSubject: c\r\n\r\nbody\r\n"
        )

    @given(st.lists(st.sampled_from([b"a", b":", b" ", b"\r", b"\n", b"\r\n", b"\x00"]), max_size=40))
    def test_normalised_bytes_have_no_bare_line_end_and_the_same_lines(self, pieces: list[bytes]) -> None:
        """After normalising, the door would accept the bytes, and they split into the same lines as before
        for a reader that splits on CR, LF and CRLF (bytes.splitlines, the stdlib parser)."""
        raw = b"".join(pieces)
        assert bare_newline(normalise(raw)) is None
        assert normalise(raw).splitlines() == raw.splitlines()
        assert normalise(normalise(raw)) == normalise(raw)
