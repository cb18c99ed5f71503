"""mailbot.charsets: which charset mail text is really in, when labels lie or are missing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbot.charsets import ISO2022JP, codec, decode_header_bytes, decode_text, word_charset

# Characters JIS X 0208 has (hiragana, katakana, common kanji), for ISO-2022-JP round trips.
_JIS = st.text(st.sampled_from("あいうえおかきくけこアイウエオカキクケコ日本語学校成績表示問題高橋"), min_size=1, max_size=40)
# Latin words as people write them: accented letters among plain ones.
_LATIN = st.lists(
    st.sampled_from(["Grüße", "über", "Zeugnis", "für", "café", "élève", "año", "niño", "Straße", "Klasse", "école"]),
    min_size=1,
    max_size=12,
).map(" ".join)


class TestLabels:
    @pytest.mark.parametrize(
        ("label", "expected"),
        [
            ("gb2312", "gb18030"),
            ("Shift_JIS", "cp932"),
            ("ISO-2022-JP", ISO2022JP),
            ("iso-2022-jp-2", ISO2022JP),
            ("ISO-2022-JP-EXT", ISO2022JP),
            ("CP50220", ISO2022JP),
            ("x-klingon", None),
        ],
    )
    def test_widened_to_what_senders_use(self, label: str, expected: str | None) -> None:
        assert codec(label) == expected


class TestIso2022Jp:
    @settings(max_examples=100, deadline=None)
    @given(_JIS)
    def test_unlabelled_iso_2022_jp_is_recognised_by_its_escapes(self, text: str) -> None:
        decoded, note = decode_text(text.encode("iso2022_jp"), None)
        assert decoded == text and note is not None

    def test_each_variant_under_the_plain_label(self) -> None:
        """Mailers write -2, -ext and CP50220 bytes under the plain ISO-2022-JP label."""
        for text, python_codec in (("丂", "iso2022_jp_2"), ("ｶﾅ", "iso2022_jp_ext")):
            assert decode_text(text.encode(python_codec), "ISO-2022-JP") == (text, None)
        assert decode_text(b"\x1b$B-!\x1b(B", "iso-2022-jp") == ("\u2460", None)

    def test_raw_header_bytes(self) -> None:
        assert decode_header_bytes("学校".encode("iso2022_jp"), None) == "学校"

    def test_plain_ascii_stays_ascii(self) -> None:
        assert decode_text(b"no escapes here", "iso-2022-jp") == ("no escapes here", None)


class TestUndeclared:
    def test_gbk_and_shift_jis_are_found(self) -> None:
        assert decode_header_bytes("关于账号问题".encode("gbk"), None) == "关于账号问题"
        assert decode_header_bytes("パスワードの変更".encode("cp932"), None) == "パスワードの変更"

    def test_short_latin_is_not_taken_for_cjk(self) -> None:
        """Two accented letters are too few to call CJK."""
        assert decode_header_bytes("çà".encode("cp1252"), None) == "çà"
        assert decode_header_bytes("Größe ändern".encode("cp1252"), None) == "Größe ändern"

    def test_the_message_charset_is_the_first_guess(self) -> None:
        assert decode_header_bytes("登入問題".encode("big5"), "big5") == "登入問題"


class TestMojibake:
    @settings(max_examples=100, deadline=None)
    @given(_LATIN.filter(lambda t: not t.isascii()))
    def test_utf8_labelled_latin1_reads_as_utf8(self, text: str) -> None:
        decoded, note = decode_text(text.encode(), "iso-8859-1")
        assert decoded == text and note is not None

    @settings(max_examples=100, deadline=None)
    @given(_LATIN.filter(lambda t: not t.isascii()))
    def test_latin1_labelled_latin1_stays(self, text: str) -> None:
        assert decode_text(text.encode("latin-1"), "iso-8859-1")[0] == text

    def test_utf8_under_another_single_byte_label(self) -> None:
        assert decode_text("Привет".encode(), "koi8-r")[0] == "Привет"

    def test_encoded_word_charsets(self) -> None:
        assert word_charset("iso-8859-1", "ä".encode()) == "utf-8"
        assert word_charset("iso-8859-1", "ä".encode("latin-1")) == "cp1252"
        assert word_charset("gb2312", b"\xb9\xd8") == "gb18030"
