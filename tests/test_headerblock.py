"""mailbot.headerblock: a stray line does not end the header block when real fields follow it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailbot.headerblock import _WHOLE_BLOCK, HEADER_LINE, _block_end, repair


class TestRepair:
    def test_sound_block_is_untouched(self) -> None:
        raw = b"From: a@x.example\r\nSubject: s\r\n\r\nbody\r\n"
        assert repair(raw).raw is raw and repair(raw).repairs == ()

    def test_stray_line_is_folded_when_known_fields_follow(self) -> None:
        block = repair(b"From: a@x.example\r\nstray\r\nSubject: s\r\n\r\nbody\r\n")
        assert block.raw == b"From: a@x.example\r\n stray\r\nSubject: s\r\n\r\nbody\r\n"
        assert block.repairs == ("1 header line(s) without a field name were read as folded continuations",)

    def test_space_before_colon_is_mended(self) -> None:
        block = repair(b"From: a@x.example\r\nSubject : s\r\nTo : b@x.example\r\n\r\nbody\r\n")
        assert block.raw == b"From: a@x.example\r\nSubject: s\r\nTo: b@x.example\r\n\r\nbody\r\n"

    def test_a_body_without_its_blank_line_stays_body(self) -> None:
        """Text followed by no known field, or by more than a short run of text, is the body."""
        for raw in (
            b"From: a@x.example\nSubject: s\nHello there,\nNote: the server is down.\n",
            b"From: a@x.example\nHello\nthere\nmy\nfriend\nSubject: s\n",
        ):
            assert repair(raw).raw == raw

    def test_only_the_top_block_is_read(self) -> None:
        raw = b"From: a@x.example\r\n\r\nstray\r\nSubject: in the body\r\n"
        assert repair(raw).raw == raw

    def test_leading_blank_lines_are_dropped(self) -> None:
        block = repair(b"\r\n\r\nFrom: a@x.example\r\n\r\nbody")
        assert block.raw.startswith(b"From:") and block.repairs


LINE_PIECES = [b"From: a@x.example", b"From a@x Tue", b"Subject:", b":", b" folded", b"\tfolded", b"stray", b"", b"X-\x80: y"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(LINE_PIECES) | st.binary(max_size=12), max_size=10), st.sampled_from([b"\r\n", b"\n", b"\r"]))
def test_whole_block_pattern_is_the_line_by_line_check(lines: list[bytes], end: bytes) -> None:
    """The one-pass pattern finds a block sound exactly when every line bytes.splitlines makes matches
    HEADER_LINE (what the repair loop checks line by line)."""
    block = end.join(lines)
    line_by_line = all(HEADER_LINE.match(line) for line in block.splitlines(keepends=True))
    assert (_WHOLE_BLOCK.fullmatch(block) is not None) == line_by_line


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b": "]), max_size=12))
def test_block_end_is_where_a_blank_line_first_starts(pieces: list[bytes]) -> None:
    """The first match of `\\r?\\n\\r?\\n`, or the length when there is none."""
    import re

    raw = b"".join(pieces)
    blank = re.search(rb"\r?\n\r?\n", raw)
    assert _block_end(raw) == (blank.start() if blank else len(raw))
