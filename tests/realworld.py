"""Real-world mail, built here byte by byte: the shapes help desks meet from Japanese and Chinese mailers,
mislabelled charsets, broken header blocks, malformed From fields and Outlook's winmail.dat.

Each `Case` is a message with what a person reading it would take as its sender, subject and text, and whom
mailbot may trust as its author. `CASES` feeds tests/test_realworld.py and the fuzzers' corpora.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

from compressed_rtf import compress

CRLF = b"\r\n"


def build(*fields: bytes | str, body: bytes | str = b"Hello.\r\n") -> bytes:
    """A message from header lines (given as written, str lines in UTF-8) and a body."""
    lines = [f.encode() if isinstance(f, str) else f for f in fields]
    data = body.encode() if isinstance(body, str) else body
    return CRLF.join(lines) + CRLF + CRLF + data


def encoded_word(text: str, charset: str, python_codec: str | None = None) -> bytes:
    """An RFC 2047 B-encoded word of `text` in `charset` (encoded with `python_codec`, by default the same)."""
    payload = base64.b64encode(text.encode(python_codec or charset))
    return b"=?" + charset.encode() + b"?B?" + payload + b"?="


def q_word(data: bytes, charset: str) -> bytes:
    """An RFC 2047 Q-encoded word carrying `data` as it is, under the label `charset`."""
    return b"=?" + charset.encode() + b"?Q?" + b"".join(b"=%02X" % byte for byte in data) + b"?="


# --- TNEF (MS-OXTNEF), just enough of it to write what Outlook writes --------------------------------------

_TNEF_SIGNATURE = 0x223E9F78
_LVL_MESSAGE, _LVL_ATTACHMENT = 1, 2
# Attribute ids with their type in the high word (MS-OXTNEF 2.1.3.1).
_ATT_TNEF_VERSION = 0x00089006
_ATT_OEM_CODEPAGE = 0x00069007
_ATT_MESSAGE_CLASS = 0x00078008
_ATT_BODY = 0x0002800C
_ATT_ATTACH_REND_DATA = 0x00069002
_ATT_ATTACH_TITLE = 0x00018010
_ATT_ATTACH_DATA = 0x0006800F
_ATT_MSG_PROPS = 0x00069003
_PT_BINARY = 0x0102
_PR_HTML = 0x1013
_PR_RTF_COMPRESSED = 0x1009


def _attribute(level: int, attribute: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BII", level, attribute, len(data)) + data + struct.pack("<H", checksum)


def _binary_property(prop: int, value: bytes) -> bytes:
    """A MAPI property list with one binary value (MS-OXTNEF 2.1.3.4)."""
    padded = value + b"\0" * (-len(value) % 4)
    return struct.pack("<IHHII", 1, _PT_BINARY, prop, 1, len(value)) + padded


def tnef(
    body: str | None = None, files: dict[str, bytes] | None = None, html: str | None = None, rtf: bytes | None = None
) -> bytes:
    """A winmail.dat: a plain body (attBody), an HTML body (PR_HTML), a rich-text body (PR_RTF_COMPRESSED,
    compressed as MS-OXRTFCP says) and attachments, as Outlook packs them."""
    out = struct.pack("<IH", _TNEF_SIGNATURE, 0x1234)
    out += _attribute(_LVL_MESSAGE, _ATT_TNEF_VERSION, struct.pack("<I", 0x00010000))
    out += _attribute(_LVL_MESSAGE, _ATT_OEM_CODEPAGE, struct.pack("<II", 1252, 0))
    out += _attribute(_LVL_MESSAGE, _ATT_MESSAGE_CLASS, b"IPM.Microsoft Mail.Note\0")
    if body is not None:
        out += _attribute(_LVL_MESSAGE, _ATT_BODY, body.encode("cp1252") + b"\0")
    if html is not None:
        out += _attribute(_LVL_MESSAGE, _ATT_MSG_PROPS, _binary_property(_PR_HTML, html.encode()))
    if rtf is not None:
        out += _attribute(_LVL_MESSAGE, _ATT_MSG_PROPS, _binary_property(_PR_RTF_COMPRESSED, compress(rtf)))
    for name, data in (files or {}).items():
        out += _attribute(_LVL_ATTACHMENT, _ATT_ATTACH_REND_DATA, struct.pack("<HIIHHI", 1, 0xFFFFFFFF, 0, 0, 0, 0))
        out += _attribute(_LVL_ATTACHMENT, _ATT_ATTACH_TITLE, name.encode("cp1252") + b"\0")
        out += _attribute(_LVL_ATTACHMENT, _ATT_ATTACH_DATA, data)
    return out


def with_winmail(winmail: bytes, *, text: str | None = None, sender: str = "Pat Lee <pat@ready.example.org>") -> bytes:
    """Outlook's MIME wrapping of a winmail.dat: an optional text/plain part, then application/ms-tnef."""
    parts = []
    if text is not None:
        parts.append(b"--tnef\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + text.encode() + CRLF)
    parts.append(
        b"--tnef\r\nContent-Type: application/ms-tnef; name=\"winmail.dat\"\r\n"
        b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"winmail.dat\"\r\n\r\n"
        + base64.encodebytes(winmail).replace(b"\n", CRLF)
    )
    return build(
        f"From: {sender}",
        "To: herosupport@schoolmint.com",
        "Subject: Enrollment forms",
        "Message-ID: <tnef.1@ready.example.org>",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="tnef"',
        body=b"".join(parts) + b"--tnef--\r\n",
    )


# --- The cases ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A message, and what a person reads in it: sender (name, address), subject, text; whom mailbot trusts."""

    name: str
    raw: bytes
    sender: tuple[str, str] | None
    subject: str
    text: str  # the text starts with this
    trusted: str | None  # the author's address when the From can be trusted, else None


JP_SUBJECT = "ログインできません"
JP_BODY = "高橋です。成績表が表示されません。"
CN_SUBJECT = "关于朱镕基中学的账号问题"
CN_BODY = "老师无法登录系统，请帮忙。"
DE_TEXT = "Die Zeugnisübersicht für Klasse 5b lädt nicht."

_TO = "To: herosupport@schoolmint.com"


def _jis(text: str, codec: str = "iso2022_jp") -> bytes:
    return text.encode(codec)


CASES: list[Case] = [
    # Japanese: ISO-2022-JP with and without labels, and its variants.
    Case(
        "iso-2022-jp labelled",
        build(
            "From: =?ISO-2022-JP?B?" + base64.b64encode(_jis("高橋")).decode() + "?= <takahashi@school.example.jp>",
            _TO,
            b"Subject: " + encoded_word(JP_SUBJECT, "ISO-2022-JP", "iso2022_jp"),
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=ISO-2022-JP",
            "Content-Transfer-Encoding: 7bit",
            body=_jis(JP_BODY) + CRLF,
        ),
        ("高橋", "takahashi@school.example.jp"),
        JP_SUBJECT,
        JP_BODY,
        "takahashi@school.example.jp",
    ),
    Case(
        "iso-2022-jp without any label",
        build("From: takahashi@school.example.jp", _TO, b"Subject: " + _jis(JP_SUBJECT), body=_jis(JP_BODY) + CRLF),
        ("", "takahashi@school.example.jp"),
        JP_SUBJECT,
        JP_BODY,
        "takahashi@school.example.jp",
    ),
    Case(
        "iso-2022-jp-2 with JIS X 0212 kanji",
        build(
            "From: sato@school.example.jp",
            _TO,
            b"Subject: " + encoded_word("丂の字", "ISO-2022-JP-2", "iso2022_jp_2"),
            "Content-Type: text/plain; charset=ISO-2022-JP-2",
            body=_jis("丂の字が出ません。", "iso2022_jp_2") + CRLF,
        ),
        ("", "sato@school.example.jp"),
        "丂の字",
        "丂の字が出ません。",
        "sato@school.example.jp",
    ),
    Case(
        "iso-2022-jp labelled, half-width katakana (-ext)",
        build(
            "From: sato@school.example.jp",
            _TO,
            b"Subject: " + encoded_word("ｶﾀｶﾅ", "ISO-2022-JP", "iso2022_jp_ext"),
            "Content-Type: text/plain; charset=ISO-2022-JP",
            body=_jis("ｶﾀｶﾅで書きました。", "iso2022_jp_ext") + CRLF,
        ),
        ("", "sato@school.example.jp"),
        "ｶﾀｶﾅ",
        "ｶﾀｶﾅで書きました。",
        "sato@school.example.jp",
    ),
    Case(
        "iso-2022-jp with Microsoft's circled digits (CP50220)",
        build(
            "From: sato@school.example.jp",
            _TO,
            b"Subject: =?iso-2022-jp?B?" + base64.b64encode(b"\x1b$B-!-\"\x1b(B") + b"?=",
            "Content-Type: text/plain; charset=iso-2022-jp",
            body=b"\x1b$B-!-\"\x1b(B" + CRLF,
        ),
        ("", "sato@school.example.jp"),
        "①②",
        "①②",
        "sato@school.example.jp",
    ),
    Case(
        "shift_jis raw subject, nothing labelled",
        build("From: sato@school.example.jp", _TO, b"Subject: " + JP_SUBJECT.encode("cp932"), body="Hello.\r\n"),
        ("", "sato@school.example.jp"),
        JP_SUBJECT,
        "Hello.",
        "sato@school.example.jp",
    ),
    # Chinese: GB2312/GBK raw 8-bit, with the body's label as the only hint, or no hint at all.
    Case(
        "gbk raw subject, gb2312 body",
        build(
            b"From: " + "王老师".encode("gbk") + b" <wang@zhu.example.cn>",
            _TO,
            b"Subject: " + CN_SUBJECT.encode("gb18030"),
            "Content-Type: text/plain; charset=gb2312",
            "Content-Transfer-Encoding: 8bit",
            body=CN_BODY.encode("gbk") + CRLF,
        ),
        ("王老师", "wang@zhu.example.cn"),
        CN_SUBJECT,
        CN_BODY,
        "wang@zhu.example.cn",
    ),
    Case(
        "gbk raw subject and body, nothing labelled",
        build("From: wang@zhu.example.cn", _TO, b"Subject: " + CN_SUBJECT.encode("gb18030"), body=CN_BODY.encode("gbk")),
        ("", "wang@zhu.example.cn"),
        CN_SUBJECT,
        CN_BODY,
        "wang@zhu.example.cn",
    ),
    Case(
        "gbk body labelled iso-8859-1",
        build(
            "From: wang@zhu.example.cn",
            _TO,
            "Subject: account",
            "Content-Type: text/plain; charset=iso-8859-1",
            body=CN_BODY.encode("gbk"),
        ),
        ("", "wang@zhu.example.cn"),
        "account",
        CN_BODY,
        "wang@zhu.example.cn",
    ),
    Case(
        "gbk body labelled utf-8",
        build(
            "From: wang@zhu.example.cn",
            _TO,
            "Subject: account",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            body=(CN_BODY + "成绩单无法打印。").encode("gbk"),
        ),
        ("", "wang@zhu.example.cn"),
        "account",
        CN_BODY + "成绩单无法打印。",
        "wang@zhu.example.cn",
    ),
    # UTF-8 declared as Latin-1, or not declared.
    Case(
        "utf-8 declared as iso-8859-1",
        build(
            b"From: " + q_word("Jürgen Weiß".encode(), "iso-8859-1") + b" <jw@schule.example.de>",
            _TO,
            b"Subject: " + q_word("Zeugnisübersicht".encode(), "ISO-8859-1"),
            "Content-Type: text/plain; charset=iso-8859-1",
            "Content-Transfer-Encoding: 8bit",
            body=DE_TEXT.encode(),
        ),
        ("Jürgen Weiß", "jw@schule.example.de"),
        "Zeugnisübersicht",
        DE_TEXT,
        "jw@schule.example.de",
    ),
    Case(
        "utf-8 undeclared",
        build(b"From: jw@schule.example.de", _TO, "Subject: Zeugnisübersicht", body=DE_TEXT.encode()),
        ("", "jw@schule.example.de"),
        "Zeugnisübersicht",
        DE_TEXT,
        "jw@schule.example.de",
    ),
    Case(
        "windows-1252 undeclared",
        build(b"From: jw@schule.example.de", _TO, b"Subject: Zeugnis", body=DE_TEXT.encode("cp1252")),
        ("", "jw@schule.example.de"),
        "Zeugnis",
        DE_TEXT,
        "jw@schule.example.de",
    ),
    # Header blocks a stray line would cut short.
    Case(
        "stray line of text inside the header block",
        build(
            "From: Ana Diaz <ana@lincoln.example>",
            "this line lost its field name",
            "To: herosupport@schoolmint.com",
            "Subject: Roster import",
            body="The import stops at row 12.\r\n",
        ),
        ("Ana Diaz", "ana@lincoln.example"),
        "Roster import",
        "The import stops at row 12.",
        None,
    ),
    Case(
        "two stray lines, then an unknown field, then known ones",
        build(
            "Received: from mx.lincoln.example by mx.schoolmint.com",
            "garbage one",
            "garbage two",
            "X-Unknown: 1",
            "From: Ana Diaz <ana@lincoln.example>",
            "Subject: Grades",
            body="Grades are missing.\r\n",
        ),
        ("Ana Diaz", "ana@lincoln.example"),
        "Grades",
        "Grades are missing.",
        None,
    ),
    Case(
        "space before the colon",
        build("From: Ana Diaz <ana@lincoln.example>", "Subject : Attendance", _TO, body="Attendance is off.\r\n"),
        ("Ana Diaz", "ana@lincoln.example"),
        "Attendance",
        "Attendance is off.",
        None,
    ),
    Case(
        "stray continuation before the first field",
        build("  continued from nowhere", "From: Ana Diaz <ana@lincoln.example>", "Subject: Login", body="Help.\r\n"),
        ("Ana Diaz", "ana@lincoln.example"),
        "Login",
        "Help.",
        None,
    ),
    # From fields a strict parser refuses: shown as a person reads them, never trusted.
    Case(
        "trailing dot on the domain",
        build("From: Claudia.Shu@yahoo.com.", "Reply-To: other@elsewhere.example", "Subject: Hi", body="Hi.\r\n"),
        ("", "Claudia.Shu@yahoo.com"),
        "Hi",
        "Hi.",
        None,
    ),
    Case(
        "bare MAILER-DAEMON",
        build("From: MAILER-DAEMON (Mail Delivery System)", "Subject: Undelivered Mail", body="Sorry.\r\n"),
        ("Mail Delivery System", "MAILER-DAEMON"),
        "Undelivered Mail",
        "Sorry.",
        None,
    ),
    Case(
        "unquoted comma in the display name",
        build("From: Reyes, Morgan <morgan@rise.example.org>", "Subject: Hi", body="Hi.\r\n"),
        ("Reyes, Morgan", "morgan@rise.example.org"),
        "Hi",
        "Hi.",
        None,
    ),
    Case(
        "unquoted specials in the display name",
        build("From: Office [Main] @ Lincoln <office@lincoln.example>", "Subject: Hi", body="Hi.\r\n"),
        ("Office [Main] @ Lincoln", "office@lincoln.example"),
        "Hi",
        "Hi.",
        None,
    ),
    Case(
        "quoted local part with spaces",
        build('From: "front office"@lincoln.example', "Subject: Hi", body="Hi.\r\n"),
        ("", '"front office"@lincoln.example'),
        "Hi",
        "Hi.",
        '"front office"@lincoln.example',
    ),
    Case(
        "two From fields, one garbage",
        build("From: garbage", "From: Ana Diaz <ana@lincoln.example>", "Subject: Hi", body="Hi.\r\n"),
        ("Ana Diaz", "ana@lincoln.example"),
        "Hi",
        "Hi.",
        None,
    ),
    Case(
        "empty angle address beside a real one",
        build('From: "Name " <>, "LTD" <sales@ltd.example>', "Subject: Offer", body="Hi.\r\n"),
        ("LTD", "sales@ltd.example"),
        "Offer",
        "Hi.",
        None,
    ),
    Case(
        "no From: Reply-To is shown, never trusted",
        build("Reply-To: Morgan Reyes <morgan@rise.example.org>", "Subject: Hi", body="Hi.\r\n"),
        ("Morgan Reyes", "morgan@rise.example.org"),
        "Hi",
        "Hi.",
        None,
    ),
    # Outlook with rich text: the body and the attachments inside winmail.dat.
    Case(
        "winmail.dat with a body and attachments",
        with_winmail(
            tnef("Please find the enrollment forms attached.", {"forms.pdf": b"%PDF-1.4 forms", "list.csv": b"a,b\r\n"})
        ),
        ("Pat Lee", "pat@ready.example.org"),
        "Enrollment forms",
        "Please find the enrollment forms attached.",
        "pat@ready.example.org",
    ),
    Case(
        "winmail.dat with only an HTML body",
        with_winmail(tnef(html="<html><body><p>The forms are <b>attached</b>.</p></body></html>")),
        ("Pat Lee", "pat@ready.example.org"),
        "Enrollment forms",
        "The forms are attached.",
        "pat@ready.example.org",
    ),
    Case(
        "winmail.dat with only rich text (Outlook's RTF)",
        with_winmail(
            tnef(
                rtf=rb"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Calibri;}}\pard The forms are "
                rb"{\b attached}.\par Thanks, Pat\par}",
                files={"forms.pdf": b"%PDF-1.4"},
            )
        ),
        ("Pat Lee", "pat@ready.example.org"),
        "Enrollment forms",
        "The forms are attached.\nThanks, Pat",
        "pat@ready.example.org",
    ),
]
