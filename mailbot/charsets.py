"""Bytes of mail text -> Unicode, when charset labels lie, name a subset, or are missing.

Pure policy over maintained decoders: the standard library's codecs do the decoding, charset-normalizer
guesses the charset of undeclared 8-bit bytes. What is ours is only the order of belief:

1. Valid UTF-8 that has multi-byte sequences is UTF-8 when the label names a single-byte charset (or none):
   UTF-8 labelled iso-8859-1 would otherwise read as mojibake (`Ã¤`), while Latin text is almost never
   valid UTF-8 by chance.
2. A label is widened to the superset senders actually use (gb2312 -> gb18030, shift_jis -> cp932, as the
   WHATWG Encoding Standard does), and ISO-2022-JP in any variant (-2, -ext, Microsoft's CP5022x with NEC
   row 13) is decoded by the first of its family that reads the bytes strictly (`ISO2022JP`).
3. Escape sequences of ISO-2022-JP in 7-bit text with no label (or a us-ascii one) are that charset.
4. Undeclared 8-bit bytes that are not UTF-8: a CJK charset when the bytes come in pairs as CJK characters
   do and charset-normalizer finds one whose text is mostly CJK characters (raw GB2312 and Shift_JIS
   subjects), else windows-1252, else Latin-1. Western text is far more common here: wrongly reading it as
   CJK would make readable mail unreadable, so the evidence asked for CJK is the stronger.
5. Text labelled UTF-8 in which fewer than half the 8-bit bytes form UTF-8 sequences is read as undeclared
   (rule 4): GBK or windows-1252 under a utf-8 label.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata

from charset_normalizer import from_bytes

# Labels that name a subset of what senders actually use (WHATWG Encoding Standard does the same).
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "cp936": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "big5": "big5hkscs",
    "tis-620": "cp874",
    "iso8859-11": "cp874",
}
_ALIASES = {
    "windows-874": "cp874",
    "iso-8859-8-i": "iso8859-8",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "cp50220": "iso-2022-jp",
    "cp50221": "iso-2022-jp",
    "cp50222": "iso-2022-jp",
}
# Codecs that are not charsets a sender could mean.
_REFUSED = {
    "idna",
    "punycode",
    "undefined",
    "unicode_escape",
    "raw_unicode_escape",
    "unicode-escape",
    "raw-unicode-escape",
}
# us-ascii and iso-8859-1 labels are routinely put on windows-1252 or UTF-8 text.
WESTERN = {"ascii", "iso8859-1", "cp1252"}
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xf4][\x80-\xbf]")

# The ISO-2022-JP family, tried in this order; the name below is registered as one codec for all of it.
ISO2022JP = "x-mailbot-iso-2022-jp"
_ISO2022JP_FAMILY = ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_1")
_ISO2022JP_CODECS = {"iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_ext", "iso2022_jp_3",
                     "iso2022_jp_2004"}
# Microsoft's CP50220/CP50221 put NEC row 13 (circled digits, units) under the JIS X 0208 designation;
# JIS X 0213 plane 1 (ESC $ ( Q) is a superset of JIS X 0208 that has them.
_JIS_X_0208 = re.compile(rb"\x1b\$[@B]")
# ESC sequences that designate a Japanese double-byte set (RFC 1468, RFC 1554).
_ISO2022JP_ESCAPE = re.compile(rb"\x1b\$[@B]|\x1b\$\(D|\x1b\(I")

# Undeclared 8-bit bytes: the charsets charset-normalizer may choose from (CJK, and Western as the rival).
_CJK = ("gb18030", "cp932", "euc_jp", "cp949", "big5hkscs")
_CANDIDATES = [*_CJK, "cp1252"]
_MIN_CJK_BYTES = 4  # two double-byte characters: shorter runs are as likely to be accented Latin letters
_MIN_PAIRED = 0.5
_DETECT_BYTES = 64 * 1024  # the detector samples; deciding on the first 64 KiB bounds its cost


def _decode_iso2022jp(data: bytes, errors: str = "strict") -> tuple[str, int]:
    """Decode with the first ISO-2022-JP variant that reads `data` strictly; else -2 with `errors`."""
    for name in _ISO2022JP_FAMILY:
        try:
            return data.decode(name), len(data)
        except UnicodeDecodeError:
            continue
    try:
        return _JIS_X_0208.sub(b"\x1b$(Q", data).decode("iso2022_jp_2004"), len(data)
    except UnicodeDecodeError:
        return data.decode("iso2022_jp_2", errors), len(data)


def _search(name: str) -> codecs.CodecInfo | None:
    if name.replace("_", "-") != ISO2022JP:
        return None
    encoder = codecs.lookup("iso2022_jp_2").encode
    return codecs.CodecInfo(encoder, lambda data, errors="strict": _decode_iso2022jp(bytes(data), errors),
                            name=ISO2022JP)


# So that the standard library's own decoding of encoded words (`=?iso-2022-jp?B?...?=`) can use it too.
codecs.register(_search)


@functools.lru_cache(maxsize=256)
def codec(label: str) -> str | None:
    """The Python codec for a MIME charset label, widened to its superset; None when unknown. Remembered:
    the same few labels come in every message, and the codec registry does not change once this module
    registered its own search function."""
    name = label.strip().strip("\"'").lower()
    name = _ALIASES.get(name, name)
    for candidate in (name, name[2:] if name.startswith("x-") else None):
        if not candidate:
            continue
        try:
            info = codecs.lookup(candidate)
        except (LookupError, ValueError):
            continue
        if info.name in _REFUSED or not getattr(info, "_is_text_encoding", True):
            return None
        if info.name in _ISO2022JP_CODECS:
            return ISO2022JP
        return _SUPERSETS.get(info.name, info.name)
    return None


def guess(data: bytes) -> tuple[str, str]:
    """Undeclared bytes: UTF-8 if valid, else a CJK charset the detector is sure of, else windows-1252,
    else Latin-1 (which never fails). Returns the text and the codec used."""
    if data.isascii() and _ISO2022JP_ESCAPE.search(data):
        return _decode_iso2022jp(data, "replace")[0], "iso-2022-jp"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    cjk = _cjk(data)
    if cjk is not None:
        return data.decode(cjk, "replace"), cjk
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _cjk(data: bytes) -> str | None:
    """The CJK charset of `data` when charset-normalizer finds one and its text is mostly CJK; else None."""
    sample = data[:_DETECT_BYTES]
    if sum(byte >= 0x80 for byte in sample) < _MIN_CJK_BYTES or _paired(sample) < _MIN_PAIRED:
        return None
    best = from_bytes(data[:_DETECT_BYTES], cp_isolation=_CANDIDATES).best()
    if best is None or best.encoding not in _CJK:
        return None
    letters = [c for c in str(best) if not c.isascii() and c.isalpha()]
    cjk = sum(_is_cjk(c) for c in letters)
    return best.encoding if letters and cjk >= 0.8 * len(letters) else None


def _paired(data: bytes) -> float:
    """The share of 8-bit bytes next to another: CJK characters are byte pairs (a Shift_JIS katakana's second
    byte may be ASCII, so about half), while accented Latin letters mostly sit between plain ones."""
    high = [index for index, byte in enumerate(data) if byte >= 0x80]
    paired = sum(
        1 for i in high if (i > 0 and data[i - 1] >= 0x80) or (i + 1 < len(data) and data[i + 1] >= 0x80)
    )
    return paired / len(high)


def _is_cjk(char: str) -> bool:
    return unicodedata.name(char, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "HALFWIDTH KATAKANA"))


def is_utf8(data: bytes) -> bool:
    """Valid UTF-8 with at least one multi-byte sequence (rule 1 of the module docstring)."""
    if not _UTF8_MULTIBYTE.search(data):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode_text(data: bytes, label: str | None) -> tuple[str, str | None]:
    """Decode body bytes declared as charset `label`; return the text and a defect note or None."""
    name = codec(label) if label else None
    if data.isascii():
        return _seven_bit(data, name, label)
    if name is None or name in WESTERN:
        text, used = guess(data)
        if label and name is None:
            return text, f"unknown charset {label!r}; decoded as {used}"
        if name is None or (used == "utf-8") != (name == "utf-8") or used not in WESTERN | {"utf-8"}:
            return text, f"8-bit text labelled {label or 'us-ascii'!r} decoded as {used}"
        return text, None
    if name != "utf-8" and codecs.lookup(name).name in _SINGLE_BYTE and is_utf8(data):
        return data.decode("utf-8"), f"text labelled {label!r} is UTF-8"
    try:
        return data.decode(name), None
    except UnicodeDecodeError:
        pass
    if name != "utf-8":
        try:
            return data.decode("utf-8"), f"text labelled {label!r} is UTF-8"
        except UnicodeDecodeError:
            return data.decode(name, "replace"), f"invalid {label!r} bytes replaced"
    # Little of it is UTF-8 (none, or sequences a CJK text makes by chance): a legacy charset mislabelled.
    if _utf8_share(data) < 0.5:
        text, used = guess(data)
        return text, f"text labelled {label!r} decoded as {used}"
    return data.decode("utf-8", "replace"), "invalid UTF-8 bytes replaced"


# A well-formed UTF-8 multi-byte sequence (RFC 3629 §4, without the overlong and surrogate checks).
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def _utf8_share(data: bytes) -> float:
    """The share of 8-bit bytes that sit in well-formed UTF-8 sequences."""
    high = sum(byte >= 0x80 for byte in data)
    return sum(len(found) for found in _UTF8_SEQUENCE.findall(data)) / high if high else 1.0


def _seven_bit(data: bytes, name: str | None, label: str | None) -> tuple[str, str | None]:
    """7-bit text: ASCII, unless it is in a 7-bit charset declared or recognised by its escapes (rule 3)."""
    if name in _SEVEN_BIT:
        return data.decode(name, "replace"), None
    if name in (None, *WESTERN) and _ISO2022JP_ESCAPE.search(data):
        return _decode_iso2022jp(data, "replace")[0], f"text labelled {label or 'us-ascii'!r} is ISO-2022-JP"
    return data.decode("ascii"), None


_SEVEN_BIT = {ISO2022JP, "iso2022_kr", "utf-7", "hz"}

# Single-byte charsets whose every byte sequence decodes: valid UTF-8 under such a label is mojibake-prone.
_SINGLE_BYTE = {
    codecs.lookup(name).name
    for name in (
        *(f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)),
        *(f"cp{n}" for n in (1250, 1251, 1253, 1254, 1255, 1256, 1257, 1258, 874, 437, 850, 866)),
        "koi8-r",
        "koi8-u",
        "mac-roman",
    )
}


def decode_header_bytes(data: bytes, hint: str | None) -> str:
    """Raw header bytes: UTF-8 (RFC 6532), ISO-2022-JP escapes, the message's charset, else a guess."""
    if data.isascii():
        return guess(data)[0]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    name = codec(hint) if hint else None
    if name and name not in WESTERN:
        try:
            return data.decode(name)
        except UnicodeDecodeError:
            pass
    return guess(data)[0]


def word_charset(label: str, payload: bytes) -> str | None:
    """The codec to decode one RFC 2047 encoded word's bytes with; None when the label is unknown.

    A Western label over bytes that are UTF-8 is UTF-8 (rule 1): encoded words are the usual place of
    `=?iso-8859-1?Q?=C3=A4?=`. Other Western labels read as windows-1252, their superset in practice.
    """
    name = codec(label)
    if name in WESTERN:
        return "utf-8" if is_utf8(payload) else "cp1252"
    if name in _SINGLE_BYTE and is_utf8(payload):
        return "utf-8"
    return name
