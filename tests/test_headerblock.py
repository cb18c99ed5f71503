"""mailbot.headerblock: a stray line does not end the header block when real fields follow it."""

from __future__ import annotations

from mailbot.headerblock import repair


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
