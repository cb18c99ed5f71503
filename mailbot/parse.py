"""Raw message bytes -> a ParsedMessage value: addresses, thread keys, text, attachments and flags.

Pure: bytes in, a value out, no I/O. Built on the standard library's `email` package with
`policy.default`, with repairs where it is weak on real mail (see FIELD-NOTES, "Python's standard
library"): raw 8-bit header bytes, charsets that lie or need their supersets (mailbot.charsets), junk
From headers and the two readings of the author (mailbot.senders), names given only in comments, broken
header blocks (mailbot.headerblock) and boundaries, several inline text parts, HTML and flowed text
rendered alike (mailbot.htmltext, mailbot.flowed), Outlook's winmail.dat (mailbot.tnef). Hostile mail is refused early: a linear pre-scan of the raw bytes counts parts, nesting depth
and header sizes before the standard parser (recursive, and slow on long or intricate header fields)
sees it, and parse() raises UnparseableMessage instead (ParseLimits has the figures). Most mail is one
text part under a clean header block: that is read without the parser's line-by-line generators and the
pre-scan, into the very message object the parser makes of it (`_single_part`), and everything after
that is the same for every message.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import mimetypes
import quopri
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email import errors, headerregistry, policy
from email.generator import BytesGenerator
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import parsedate_to_datetime
from io import BytesIO
from typing import Any, cast

from lxml.etree import LxmlError

from mailbot.automatic import automatic_reason, cached_mailboxes, header_addresses
from mailbot.bounces import Bounce, read_bounce
from mailbot.charsets import codec, decode_header_bytes, decode_text, word_charset
from mailbot.errors import MailbotError
from mailbot.flowed import unflow
from mailbot.headerblock import HEADER_LINE as _HEADER_LINE
from mailbot.headerblock import repair
from mailbot.htmltext import html_to_text
from mailbot.newlines import normalise
from mailbot.senders import Address, lenient_mailbox, trusted_author
from mailbot.tnef import is_tnef
from mailbot.tnef import unpack as unpack_tnef

# What the standard `email` package raises on malformed input besides its own MessageError: its
# header parser has raised IndexError, TypeError, AttributeError and AssertionError on junk in past
# releases, and every lookup of a charset or codec can raise LookupError.
_STDLIB_FAILURES = (
    errors.MessageError,
    LookupError,
    ValueError,
    TypeError,
    AttributeError,
    AssertionError,
    RecursionError,
)


class UnparseableMessage(MailbotError):
    """The message exceeds ParseLimits or cannot be read at all; str() names the problem."""


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on the work one message may cost; parse() raises UnparseableMessage beyond any of them, and
    mailbot.salvage reads such a message in a degraded way (headers, first text, the raw bytes kept).

    max_bytes             64 MiB in all. The listener's max_message_size stops large mail at the door;
                          this is the backstop for `parse FILE` and IMAP.
    max_depth             30 levels of multipart or message/* nesting. Real mail seldom nests past 6 (a
                          forward of a forward); the standard library fails near 2,000 levels while
                          parsing and near 500 when re-serializing (RecursionError).
    max_parts             500 MIME entities, containers included. 100,000 empty parts cost the
                          standard library 4 to 9 seconds of CPU.
    max_headers           1,000 header fields in any one header block (the top one or a part's). A long
                          Received chain has about 100.
    max_header_bytes      64 KiB in any one header field, folding included (Postfix's own
                          header_size_limit is 100 KiB). The standard header parser is quadratic in a
                          field's length, so read addresses from ParsedMessage rather than message["To"].
    max_mime_header_bytes 8 KiB in any one Content-* field.
    max_mime_complexity   16,000 for all Content-* fields together, counted as the sum over fields of
                          (RFC 2045 special characters and runs of white space in the value) x (1 + KiB
                          of the field). The standard header parser spends about 55 us on each special
                          character, more in long fields: 500 parts with hostile 1 KiB Content-Type and
                          -Disposition fields cost it 35 seconds. An attachment part counts about 11.
    max_comment_depth     30 levels of nested (comments) in a header field: the standard header parser
                          recurses once per level.
    max_html_chars        4,000,000 characters of HTML rendered to text (inscriptis takes about 40 us per
                          table row); longer HTML is rendered from its start and noted in `defects`.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_depth: int = 30
    max_parts: int = 500
    max_headers: int = 1000
    max_header_bytes: int = 64 * 1024
    max_mime_header_bytes: int = 8 * 1024
    max_mime_complexity: int = 16_000
    max_comment_depth: int = 30
    max_html_chars: int = 4_000_000


@dataclass(frozen=True)
class Attachment:
    """A part that is not body text: sanitized filename, decoded size and sha256, whether shown inline."""

    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ParsedMessage:
    """What mailbot needs from one message.

    Two readings of the author (mailbot.senders): `from_` is whom it shows (lenient: the best mailbox a
    person would read, falling back to Reply-To or Sender; the JSON's "from", the requester's name), and
    `author` is whom it trusts (strict: the one well-formed From of an unrepaired header block, or None;
    the only one authentication, entitlement and threading may use).

    `defects` says in words what was repaired or guessed; `message` is the standard library's object for
    later rules (its policy caches parsed header fields, so reading one twice costs nothing).
    """

    message_id: str | None
    from_: Address | None
    author: Address | None
    to: list[Address]
    cc: list[Address]
    reply_to: list[Address]
    sender: Address | None
    subject: str
    date: datetime | None
    in_reply_to: str | None
    references: list[str]
    text: str
    html: str | None
    attachments: list[Attachment]
    bounce_report: Bounce | None  # the delivery report it is (mailbot.bounces), read once
    defects: list[str]
    message: EmailMessage = field(repr=False, compare=False)
    # Why only a degraded reading was possible (mailbot.salvage): the message was over ParseLimits or the
    # standard parser could not read it. None for a full reading.
    degraded: str | None = None

    @property
    def auto_submitted(self) -> bool:
        """Written by a program (mailbot.automatic), whatever its envelope; a check that fails on junk
        headers counts as automatic. For the JSON: the intake works out its own verdict with the envelope
        sender (mailbot.reading), so parsing never does."""
        try:
            return automatic_reason(self.message, None) is not None
        except _STDLIB_FAILURES:
            return True

    @property
    def bounce(self) -> bool:
        return self.bounce_report is not None

    def to_json(self) -> dict[str, Any]:
        """The `mailbot parse FILE` JSON of INTERFACE.md (attachment data and `message` left out)."""
        return {
            "message_id": self.message_id,
            "from": _address_json(self.from_) if self.from_ else None,
            "to": [_address_json(a) for a in self.to],
            "cc": [_address_json(a) for a in self.cc],
            "reply_to": [_address_json(a) for a in self.reply_to],
            "subject": self.subject,
            "date": self.date.isoformat() if self.date else None,
            "in_reply_to": self.in_reply_to,
            "references": list(self.references),
            "text": self.text,
            "html": self.html,
            "attachments": [
                {
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.size,
                    "sha256": a.sha256,
                    "inline": a.inline,
                }
                for a in self.attachments
            ],
            "auto_submitted": self.auto_submitted,
            "bounce": self.bounce,
            "degraded": self.degraded,
        }


def _address_json(address: Address) -> dict[str, str]:
    return {"name": address.name, "address": address.address}


def content_key(raw: bytes) -> str:
    """The identity of a message without a Message-ID: "sha256:<hex>" of its raw bytes."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def parse(raw: bytes, limits: ParseLimits = ParseLimits()) -> ParsedMessage:
    """Parse one raw message; raise UnparseableMessage when it is over `limits` or unreadable (then
    mailbot.salvage.read gives its degraded reading)."""
    if len(raw) > limits.max_bytes:
        raise UnparseableMessage(f"message is {len(raw)} bytes, over the limit of {limits.max_bytes}")
    if not raw.strip():
        raise UnparseableMessage("message is empty")
    # One reading for everyone (mailbot.newlines): the DKIM verifier splits these same bytes into lines.
    block = repair(normalise(raw))
    defects = list(block.repairs)
    raw = block.raw
    message_policy = policy.default.clone(header_factory=_HeaderCache())
    msg = _single_part(raw, limits, message_policy)
    parts = 1
    if msg is None:
        parts = _prescan(raw, limits, message_policy).parts
        msg = _parse_bytes(raw, message_policy)
    charsets = _Charsets()
    hint = _charset_hint(msg, charsets)
    headers = _Headers(msg, hint, defects)
    body = _Walker(limits, message_policy, hint, charsets, defects, parts).body(msg)
    author, shown = _authors(headers, bool(block.repairs) or _block_cut(msg), defects)
    return ParsedMessage(
        message_id=_message_id(headers.text("message-id")),
        from_=shown,
        author=author,
        to=headers.addresses("to", strict=False),
        cc=headers.addresses("cc", strict=False),
        reply_to=headers.addresses("reply-to", strict=True),
        sender=_first(headers.addresses("sender", strict=True)),
        subject=headers.unstructured("subject"),
        date=_date(headers.text("date"), defects),
        in_reply_to=_first(_message_ids(headers.text("in-reply-to"))),
        references=_message_ids(headers.text("references")),
        text=body.text,
        html=body.html,
        attachments=body.attachments,
        bounce_report=_bounce(msg, defects),
        defects=list(dict.fromkeys(defects + _stdlib_defects(msg))),
        message=msg,
    )


# Short field values parsed recently, shared by every message (see _HeaderCache).
_SHORT_VALUE = 200  # characters
_recently_parsed = functools.lru_cache(maxsize=512)(HeaderRegistry())


class _HeaderCache(HeaderRegistry):
    """policy.default's header registry, parsing each distinct header once per message, and a short value
    it saw recently in any message only once.

    The standard parser asks for a part's Content-Type about five times, and for its parent's once per
    child; each request parses the field again. Most short values also repeat from message to message
    (`text/plain; charset="utf-8"`, `7bit`, `1.0`), and a parsed header is immutable (the email package
    only reads it), so those are shared, in a cache bounded in entries and in the length of the values it
    keeps. Being a HeaderRegistry tells mailbot.automatic that the message's address fields read as the
    registry reads them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parsed: dict[tuple[str, str], BaseHeader] = {}

    def __call__(self, name: str, value: str) -> BaseHeader:
        if len(value) <= _SHORT_VALUE:
            return _recently_parsed(name, value)
        key = (name, value)
        if key not in self._parsed:
            self._parsed[key] = super().__call__(name, value)
        return self._parsed[key]


def _parse_bytes(raw: bytes, message_policy: EmailPolicy[EmailMessage]) -> EmailMessage:
    """The standard parser (run only on pre-scanned bytes); its failures become UnparseableMessage."""
    try:
        return cast(EmailMessage, BytesParser(policy=message_policy).parsebytes(raw))
    except _STDLIB_FAILURES as exc:
        raise UnparseableMessage(f"MIME structure cannot be read: {type(exc).__name__}: {exc}") from exc


def _first(items: list[Any]) -> Any:
    return items[0] if items else None


# --- Pre-scan: mirror email.feedparser's nesting rules in one loop, counting as it goes ---------------

# RFC 2045 §5.1 tspecials, and runs of white space: what the header parser spends its time on.
_MIME_SPECIALS = re.compile(rb'[()<>@,;:\\"/\[\]?=]|[ \t\r\n]+')
_BLANK_LINES = (b"\r\n", b"\n", b"\r")


@dataclass(frozen=True)
class _Shape:
    """What the pre-scan counted."""

    parts: int
    depth: int


@dataclass
class _Multipart:
    """An open multipart: how its delimiter lines start, and its depth."""

    delimiter: bytes
    depth: int
    digest: bool


class _Prescan:
    """One pass over the raw lines, nesting entities the way email.feedparser does (RFC 2046 §5.1)."""

    def __init__(self, limits: ParseLimits, message_policy: EmailPolicy[EmailMessage]) -> None:
        self.limits = limits
        self.policy = message_policy
        self.mime_complexity = 0
        self.parts = 1
        self.deepest = 0
        self.open: list[_Multipart] = []
        self.depth = 0
        self.report_depth = 0
        self.default_type = "text/plain"
        self.fields = 0
        self.field_lines: list[bytes] = []
        self.content_type: list[bytes] | None = None

    def run(self, raw: bytes) -> _Shape:
        mode = "headers"
        for line in raw.splitlines(keepends=True):
            if mode == "body" and not self.open:
                break  # the rest is one payload: nothing in it can start an entity
            mode = self._line(mode, line)
        if mode == "headers":
            self._end_of_headers()
        return _Shape(self.parts, self.deepest)

    def _line(self, mode: str, line: bytes) -> str:
        """Account for one line; return the mode for the next."""
        if self.open and line.startswith(b"--"):
            found = self._find_delimiter(line)
            if found is not None:  # delimiters end any entity, headers included (RFC 2046 §5.1.2)
                if mode == "headers":
                    self._end_of_headers()
                return self._take_delimiter(*found)
        if mode == "report":
            self._report_line(line)
            return mode
        if mode == "body":
            return mode
        if _HEADER_LINE.match(line):
            self._header_line(line)
            return mode
        mode = self._end_of_headers()
        # Without the blank separator the line already belongs to what follows the headers.
        return mode if line in _BLANK_LINES else self._line(mode, line)

    def _header_line(self, line: bytes) -> None:
        if line[:1] not in (b" ", b"\t"):
            self._end_field()
            self.fields += 1
            if self.fields > self.limits.max_headers:
                raise UnparseableMessage(f"more than {self.limits.max_headers} header fields in one block")
        self.field_lines.append(line)

    def _end_field(self) -> None:
        if not self.field_lines:
            return
        value = b"".join(self.field_lines)
        self.mime_complexity = _checked_field(value, self.limits, self.mime_complexity)
        if self.content_type is None and value[:13].lower() == b"content-type:":
            self.content_type = self.field_lines
        self.field_lines = []

    def _end_of_headers(self) -> str:
        """Decide what the body of the entity whose headers just ended holds; return the next mode."""
        self._end_field()
        content_type, boundary = _entity_type(self.content_type, self.default_type, self.policy)
        self.fields, self.content_type = 0, None
        if content_type == "message/delivery-status":
            # RFC 3464 §2.1: blocks of fields separated by blank lines; the parser makes each an entity.
            self._enter(self.depth + 1, "text/plain")
            self.report_depth = self.depth
            return "report"
        if content_type.startswith("message/"):
            self._enter(self.depth + 1, "text/plain")
            return "headers"
        delimiter = _delimiter(boundary) if content_type.startswith("multipart/") else None
        if delimiter is not None:
            self.open.append(_Multipart(delimiter, self.depth, content_type == "multipart/digest"))
        return "body"

    def _find_delimiter(self, line: bytes) -> tuple[int, str] | None:
        """The innermost open multipart this line delimits, and whether it is a part or the close."""
        for index in range(len(self.open) - 1, -1, -1):
            kind = _delimiter_kind(line, self.open[index].delimiter)
            if kind is not None:
                return index, kind
        return None

    def _take_delimiter(self, index: int, kind: str) -> str:
        multipart = self.open[index]
        del self.open[index + 1 :]  # an outer delimiter closes every inner multipart
        if kind == "close":
            self.open.pop()
            return "body"
        # RFC 2046 §5.1.5: in a digest, parts are message/rfc822 unless they say otherwise.
        self._enter(multipart.depth + 1, "message/rfc822" if multipart.digest else "text/plain")
        return "headers"

    def _report_line(self, line: bytes) -> None:
        if line in _BLANK_LINES:
            self._enter(self.report_depth, "text/plain")
        elif _HEADER_LINE.match(line):
            self._header_line(line)

    def _enter(self, depth: int, default_type: str) -> None:
        """A new entity starts at `depth`."""
        self._end_field()
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise UnparseableMessage(f"more than {self.limits.max_parts} MIME parts")
        if depth > self.limits.max_depth:
            raise UnparseableMessage(f"MIME parts nested more than {self.limits.max_depth} deep")
        self.depth, self.deepest = depth, max(self.deepest, depth)
        self.default_type = default_type
        self.fields, self.field_lines, self.content_type = 0, [], None


def _prescan(raw: bytes, limits: ParseLimits, message_policy: EmailPolicy[EmailMessage]) -> _Shape:
    """Count parts, depth and header sizes in linear time; raise UnparseableMessage past `limits`."""
    return _Prescan(limits, message_policy).run(raw)


def _checked_field(value: bytes, limits: ParseLimits, mime_complexity: int) -> int:
    """Check one header field (its lines joined) against `limits`, raising UnparseableMessage past them;
    return the Content-* fields' complexity so far, this field's added."""
    is_mime = value[:8].lower() == b"content-"
    limit = limits.max_mime_header_bytes if is_mime else limits.max_header_bytes
    if len(value) > limit:
        raise UnparseableMessage(f"a header field is {len(value)} bytes, over the limit of {limit}")
    if is_mime:
        specials = len(_MIME_SPECIALS.findall(value.partition(b":")[2].strip()))
        mime_complexity += specials * (1 + len(value) // 1024)
        if mime_complexity > limits.max_mime_complexity:
            raise UnparseableMessage(f"Content-* fields more complex than the limit of {limits.max_mime_complexity}")
    if value.count(b"(") > limits.max_comment_depth and _comment_depth(value) > limits.max_comment_depth:
        raise UnparseableMessage(f"header comments nested over {limits.max_comment_depth} deep")
    return mime_complexity


# --- The common case: one entity, a clean header block ---------------------------------------------------

# A header field as email.feedparser reads one (its headerRE) when it has nothing to note: a name (`:x` is
# a defect, and a `From ` line has a space in it), then continuation lines; CRLF after each line. Its
# groups are what the policy's header_source_parse makes of it: the name, and the value without the
# blanks after the colon (its final CRLF is stripped from the group below). Possessive, so that no line
# can be matched two ways: a block that does not match fails in linear time.
_FIELD = r"([\x21-\x39\x3b-\x7e]+):[ \t]*+([^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)"
_CLEAN_FIELD = re.compile(_FIELD)
_CLEAN_BLOCK = re.compile(f"(?:{_FIELD})+")


def _single_part(raw: bytes, limits: ParseLimits, message_policy: EmailPolicy[EmailMessage]) -> EmailMessage | None:
    """The message the standard parser makes of `raw` when it is one entity (neither multipart nor
    message/*) whose header block is clean: every line a field or its continuation, each ended by CRLF,
    then a blank line; within `limits`, as the pre-scan counts them. None for any other message, which
    the pre-scan and the standard parser then read.

    For such a message the parser does this much: each field's name and value (header_source_parse of
    policy.default) go to set_raw, and the text after the blank line is the payload, as it is. Most
    mail is such a message, and the parser's line-by-line generators cost more than the rest of a
    reading (tests/test_parse.py TestSinglePart compares the two readings).
    """
    text = raw.decode("ascii", "surrogateescape")
    end = text.find("\r\n\r\n") + 2
    head = text[:end]
    if end < 2 or head.count("\r") != head.count("\n") or not _CLEAN_BLOCK.fullmatch(head):
        return None
    fields = _CLEAN_FIELD.findall(head)
    if len(fields) > limits.max_headers:
        return None
    # No field of a short block can be past a limit (a field's complexity is at most its length, times the
    # same factor): the fields of a longer one are checked one by one, as the pre-scan checks them.
    checked = (
        end > min(limits.max_header_bytes, limits.max_mime_header_bytes)
        or end * (1 + end // 1024) > limits.max_mime_complexity
        or head.count("(") > limits.max_comment_depth
    )
    msg = EmailMessage(policy=message_policy)
    try:
        if checked:
            mime_complexity = 0
            for field in _CLEAN_FIELD.finditer(head):
                mime_complexity = _checked_field(field[0].encode("ascii", "surrogateescape"), limits, mime_complexity)
        for name, value in fields:
            msg.set_raw(name, value.rstrip("\r\n"))
        if msg.get_content_maintype() in ("multipart", "message"):
            return None
    except (UnparseableMessage, *_STDLIB_FAILURES):
        return None
    msg.set_payload(text[end + 2 :])
    return msg


def _entity_type(
    field_lines: list[bytes] | None, default_type: str, message_policy: EmailPolicy[EmailMessage]
) -> tuple[str, str | None]:
    """Content type and boundary exactly as the standard parser will read them from these lines."""
    probe = EmailMessage(policy=message_policy)
    probe.set_default_type(default_type)
    try:
        if field_lines:
            name, value = message_policy.header_source_parse(
                [line.decode("ascii", "surrogateescape") for line in field_lines]
            )
            probe.set_raw(name, value)
        content_type = probe.get_content_type()
        return content_type, probe.get_boundary() if content_type.startswith("multipart/") else None
    except _STDLIB_FAILURES as exc:
        raise UnparseableMessage(f"Content-Type cannot be read: {type(exc).__name__}: {exc}") from exc


def _delimiter(boundary: str | None) -> bytes | None:
    """The bytes a delimiter line starts with; None when there is none the standard parser can match."""
    if boundary is None:
        return None
    try:
        return ("--" + boundary).encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return None


def _delimiter_kind(line: bytes, delimiter: bytes) -> str | None:
    """ "part" or "close" when `line` is this multipart's delimiter (RFC 2046 §5.1.1), else None."""
    if not line.startswith(delimiter):
        return None
    rest = line[len(delimiter) :]
    close = rest.startswith(b"--")
    if close:
        rest = rest[2:]
    if rest.rstrip(b"\r\n").strip(b" \t"):
        return None
    return "close" if close else "part"


def _comment_depth(value: bytes) -> int:
    """How deeply (comments) nest in a header field, skipping quoted pairs (RFC 5322 §3.2.2)."""
    depth = deepest = 0
    escaped = False
    for char in re.findall(rb"[()\\]", value):
        if escaped:
            escaped = False
        elif char == b"\\":
            escaped = True
        elif char == b"(":
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1
    return deepest


# --- Text cleaning ----------------------------------------------------------------------------------

_SURROGATES = re.compile("[\udc80-\udcff]")
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(text: str) -> str:
    """Text safe to store and print: line endings as \\n, no NULs, lone surrogates replaced."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if _has_surrogates(text):
        text = _SURROGATES.sub("\ufffd", text)
    return text.removeprefix("\ufeff")


def _has_surrogates(text: str) -> bool:
    """Whether `text` holds one of the lone surrogates the parser keeps raw 8-bit bytes as. Never in ASCII
    text, nor in text that encodes as UTF-8: both checks are many times faster than the regex's scan."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.search(text) is not None
    return False


def _clean_header(text: str) -> str:
    """A header value for display: one line, no control characters, trimmed."""
    if text.isascii() and text.isprintable():
        return text.strip()  # nothing below would change it: no line end, tab, NUL or other control
    return _CONTROLS.sub("", _clean(text).replace("\n", " ").replace("\t", " ")).strip()


# --- Headers ----------------------------------------------------------------------------------------

# RFC 2047 §2 encoded word.
_ENCODED_WORD_START = "=?"
_ENCODED_WORD = r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?="
_ADJACENT_WORDS = re.compile(rf"({_ENCODED_WORD})\s+(?={_ENCODED_WORD})")
_WORD_CHARSET = re.compile(r"=\?([^?\s*]+)((?:\*[^?\s]*)?\?([bBqQ])\?)([^?\s]*)(?=\?=)")
_FOLD = re.compile(r"\r\n|\r|\n")


def _prepare_encoded_words(value: str) -> str:
    """Widen encoded-word charsets to their supersets and join adjacent words (RFC 2047 §6.2)."""
    if _ENCODED_WORD_START not in value:
        return value  # no encoded word: nothing either pattern matches
    return _ADJACENT_WORDS.sub(r"\1", _WORD_CHARSET.sub(_widen_word_charset, value))


def _widen_word_charset(match: re.Match[str]) -> str:
    name = word_charset(match[1], _word_bytes(match[3], match[4]))
    if name is None:
        return match[0]  # unknown: the registry decodes it with replacement and notes a CharsetError
    return f"=?{name}{match[2]}{match[4]}"


def _word_bytes(encoding: str, payload: str) -> bytes:
    """The bytes an encoded word's payload stands for (RFC 2047 §4), as well as they can be read."""
    data = payload.encode("ascii", "replace")
    try:
        if encoding in "bB":
            return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
        return quopri.decodestring(data, header=True)
    except (binascii.Error, ValueError):
        return b""


def _unstructured(value: str) -> tuple[str, list[str]]:
    """Decode RFC 2047 encoded words in free text; return the text and notes on unknown charsets."""
    notes = [
        f"unknown charset {m[1]!r} in an encoded word"
        for m in _WORD_CHARSET.finditer(value)
        if not codec(m[1])
    ]
    if _ENCODED_WORD_START not in value:
        return _clean_header(value), notes  # the registry gives such text back as it is (tests/test_parse.py)
    try:
        # Bytes of an unknown charset come back as UTF-8 where they are valid, replaced where not.
        header = policy.default.header_factory("x-mailbot-text", _prepare_encoded_words(value))
    except _STDLIB_FAILURES:
        return _clean_header(value), [*notes, "encoded words could not be decoded"]
    return _clean_header(str(header)), notes


class _Headers:
    """The top-level header fields of one message, decoded."""

    def __init__(self, msg: EmailMessage, hint: str | None, defects: list[str]) -> None:
        self.raw: dict[str, str] = {}
        self.every: dict[str, list[str]] = {}
        for name, value in msg.raw_items():
            self.raw.setdefault(name.lower(), value)
            self.every.setdefault(name.lower(), []).append(value)
        self.hint = hint
        self.defects = defects
        self.message = msg

    def text(self, name: str) -> str:
        """The field's value as Unicode: unfolded, 8-bit bytes decoded, NULs dropped; "" when absent."""
        return _header_text(self.raw.get(name, ""), self.hint)

    def unstructured(self, name: str) -> str:
        text, notes = _unstructured(self.text(name))
        self.defects.extend(f"{name}: {note}" for note in notes)
        return text

    def addresses(self, name: str, strict: bool) -> list[Address]:
        """Mailboxes of an address field; with `strict`, any unreadable entry voids the whole field."""
        if name not in self.raw:
            return []
        found, notes = _addresses(name, self.text(name), strict)
        self.defects.extend(notes)
        return found


def _as_is(raw: str) -> bool:
    """Whether _header_text surely gives `raw` back unchanged: printable ASCII (no line end, NUL, escape)."""
    return raw.isascii() and raw.isprintable()


def _header_text(raw: str, hint: str | None) -> str:
    if _as_is(raw):
        return raw
    value = "".join(_FOLD.split(raw))  # RFC 5322 §2.2.3 unfolding
    # Raw 8-bit bytes (kept by the parser as surrogate escapes), or ISO-2022-JP sent without encoded words.
    if _has_surrogates(value) or "\x1b" in value:
        value = decode_header_bytes(value.encode("ascii", "surrogateescape"), hint)
    return value.replace("\x00", "")


def _authors(headers: _Headers, block_repaired: bool, defects: list[str]) -> tuple[Address | None, Address | None]:
    """(whom it trusts, whom it shows) of mailbot.senders; the shown one falls back to Reply-To, then Sender."""
    texts = [_header_text(value, headers.hint) for value in headers.every.get("from", [])]
    readings = [_addresses("from", text, strict=True) for text in texts]
    registry = [mailbox.addr_spec for mailbox in header_addresses(headers.message, "From")]
    author, why_not = trusted_author([found or None for found, _ in readings], registry, block_repaired=block_repaired)
    if author is None and texts:
        defects.append(f"from: no trusted author: {why_not}")
    shown = _shown_author(headers, texts, readings, defects)
    if author is not None and shown is not None and shown.address == author.address:
        author = shown  # the same mailbox, with a name found in a comment (`ana@x.org (Ana Diaz)`)
    return author, shown


def _shown_author(
    headers: _Headers, texts: list[str], readings: list[tuple[list[Address], list[str]]], defects: list[str]
) -> Address | None:
    """The first From mailbox that reads strictly, else leniently (mailbot.senders), else Reply-To, Sender."""
    for found, notes in readings:
        defects.extend(notes)
        if found:
            if len(found) > 1:
                defects.append("from: several authors; the first is shown")
            return found[0]
    for text in texts:
        lenient = lenient_mailbox(_prepare_encoded_words(text))
        if lenient is not None:
            defects.append(f"from: read leniently as {lenient[1]!r}")
            return Address(_unstructured(lenient[0])[0], _clean_header(lenient[1]))
    for fallback in ("reply-to", "sender"):
        found = headers.addresses(fallback, strict=True)
        if found:
            defects.append(f"from missing or unreadable; {fallback} used")
            return found[0]
    return None


def _block_cut(msg: EmailMessage) -> bool:
    """Whether the standard parser itself dropped or cut short lines of the top header block (which a DKIM
    verifier reads otherwise, or refuses)."""
    cut = (errors.MissingHeaderBodySeparatorDefect, errors.FirstHeaderLineIsContinuationDefect)
    return any(isinstance(defect, cut) for defect in msg.defects)


# Entries longer than this are not mailboxes; the header parser is quadratic in an entry's length.
_MAX_ENTRY_CHARS = 1000
# Recipients read from one field; each costs the header parser about 150 us.
_MAX_ENTRIES = 1000
# A phrase (unquoted, or one whole quoted string) before one angle address.
_ANGLE_ONLY = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^<>"]*)\s*<([^<>]+)>\s*')
_COMMENT = re.compile(r"\(((?:[^()\\]|\\.)*)\)")


def _addresses(name: str, value: str, strict: bool) -> tuple[list[Address], list[str]]:
    """Parse an address list entry by entry with the policy.default header registry.

    Returns the mailboxes and notes on what was skipped; with `strict`, an unreadable entry voids the
    field. An entry the registry reads only with an InvalidHeaderDefect is not trusted (its guess may
    be the wrong address, as with CVE-2023-27043), except in the common `name <address>` form, where
    the angle address is the mailbox.
    """
    found: list[Address] = []
    notes: list[str] = []
    entries = _split_address_list(_prepare_encoded_words(value))
    if len(entries) > _MAX_ENTRIES:
        notes.append(f"{name}: only the first {_MAX_ENTRIES} of {len(entries)} entries read")
    for entry in entries[:_MAX_ENTRIES]:
        mailboxes = _entry_mailboxes(name, entry) if len(entry) <= _MAX_ENTRY_CHARS else None
        if mailboxes is not None:
            found.extend(mailboxes)
        elif strict:
            return [], [f"{name} ignored: cannot read {_clean_header(entry)[:80]!r}"]
        else:
            notes.append(f"{name}: skipped unreadable entry {_clean_header(entry)[:80]!r}")
    return found, notes


@functools.lru_cache(maxsize=1024)
def _entry_mailboxes(name: str, entry: str) -> tuple[Address, ...] | None:
    """The mailboxes of one address-list entry; None when it cannot be read safely. Remembered, as
    cached_mailboxes is: a customer's From and the support address come again and again, and the
    answer is made of immutable Addresses."""
    parsed = _registry_addresses(name, entry)
    if parsed is None:
        return _angle_mailbox(name, entry)
    if len(parsed) == 1 and not parsed[0].name and '"' not in entry:
        comments = _COMMENT.findall(entry)
        if comments:  # `ana@x.org (Ana Diaz)`: the only name is in a comment (RFC 5322 §3.4)
            return (Address(_unstructured(re.sub(r"\\(.)", r"\1", comments[-1]))[0], parsed[0].address),)
    return tuple(parsed)


def _angle_mailbox(name: str, entry: str) -> tuple[Address, ...] | None:
    """`ana@x.org <ana@x.org>`, `"=?utf-8?q?Ana?=" <ana@x.org>`: a phrase the registry rejects (unquoted
    specials, an encoded word inside quotes), before one angle address.

    The angle address is the mailbox (it is also what DMARC checks); the phrase is only a name.
    """
    angle = _ANGLE_ONLY.fullmatch(entry)
    parsed = _registry_addresses(name, f"<{angle[2]}>") if angle else None
    if angle is None or parsed is None or len(parsed) != 1:
        return None
    phrase = angle[1].strip()
    if phrase.startswith('"'):
        phrase = re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return (Address(_unstructured(phrase)[0], parsed[0].address),)


def _registry_addresses(name: str, entry: str) -> list[Address] | None:
    """The complete mailboxes the registry reads in `entry`; None if it reports the entry invalid."""
    addresses = cached_mailboxes(entry)
    if addresses is None:
        addresses = _checked_registry_read(name, entry)
    if addresses is None:
        return None
    result = []
    for address in addresses:
        if not address.username or not address.domain:
            return None
        local = address.addr_spec.rpartition("@")[0]
        result.append(
            Address(_clean_header(address.display_name), _clean_header(f"{local}@{address.domain.lower()}"))
        )
    return result


def _checked_registry_read(name: str, entry: str) -> tuple[headerregistry.Address, ...] | None:
    """The registry's mailboxes of `entry`; None if it fails or reports the entry invalid."""
    try:
        header = policy.default.header_factory(name, entry)
        addresses = header.addresses
    except _STDLIB_FAILURES:
        return None
    if any(isinstance(d, errors.InvalidHeaderDefect) for d in header.defects):
        return None
    return addresses


def _split_address_list(text: str) -> list[str]:
    """Split at top-level commas (RFC 5322 §3.4), not inside quotes, comments, <...> or groups."""
    if "," not in text:
        return [text.strip()] if text.strip() else []  # one entry: what the walk below finds, without it
    entries: list[str] = []
    start = depth = 0
    quoted = angle = group = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == "(":
            depth += 1
        elif depth:
            depth -= char == ")"
        elif char == '"':
            quoted = True
        elif char in "<>":
            angle = char == "<"
        elif angle:
            continue
        elif char in ":;":
            group = char == ":"
        elif char == "," and not group:
            entries.append(text[start:index])
            start = index + 1
    entries.append(text[start:])
    return [entry.strip() for entry in entries if entry.strip()]


_MSG_ID = re.compile(r"<([^<>]*)>")
_ID_SEPARATORS = re.compile(r"[\s,]+")


def _message_ids(value: str) -> list[str]:
    """Message-IDs in `<...>` form, in order, without duplicates; bare `x@y` tokens are wrapped."""
    if not value:
        return []
    found = ["".join(inner.split()) for inner in _MSG_ID.findall(value)]
    if not found:
        found = [token.strip("<>") for token in _ID_SEPARATORS.split(value) if "@" in token]
    cleaned = (_clean_header(i) for i in found if i)
    return list(dict.fromkeys(f"<{i}>" for i in cleaned if i))


def _message_id(value: str) -> str | None:
    ids = _message_ids(value)
    if ids:
        return ids[0]
    token = _clean_header(value).strip("<>")
    return f"<{token}>" if token and not any(c.isspace() for c in token) else None


def _date(value: str, defects: list[str]) -> datetime | None:
    """The Date field; a date without a zone (-0000, RFC 5322 §3.3) is read as UTC."""
    if not value.strip():
        return None
    try:
        date = _read_date(value.strip())
    except (ValueError, TypeError, IndexError, OverflowError):
        defects.append(f"date: cannot read {_clean_header(value)[:80]!r}")
        return None
    return date if date.tzinfo else date.replace(tzinfo=UTC)


# RFC 5322 §3.3's date as nearly every mailer writes it, with a zone other than -0000.
_COMMON_DATE = re.compile(
    r"(?:[A-Za-z]{3}, )?([0-9]{1,2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([1-9][0-9]{3}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"
)
_MONTHS = {"Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "May": 5, "Jun": 6, "Jul": 7, "Aug": 8, "Sep": 9, "Oct": 10, "Nov": 11, "Dec": 12}


def _read_date(value: str) -> datetime:
    """parsedate_to_datetime(value): the same datetime, or the same exception. The common form is read here
    (the standard function's general reading costs more than the rest of a short message's fields); any
    other goes to it (tests/test_parse.py compares the two)."""
    found = _COMMON_DATE.fullmatch(value)
    if found is None or value.endswith("-0000"):
        return parsedate_to_datetime(value)
    day, month, year, hour, minute, second, sign, hours, minutes = found.groups()
    offset = (-1 if sign == "-" else 1) * (int(hours) * 3600 + int(minutes) * 60)
    return datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=_zone(offset))


@functools.lru_cache(maxsize=64)
def _zone(offset: int) -> timezone:
    """The fixed zone `offset` seconds east of UTC; a few dozen are in use, and they are immutable."""
    return timezone(timedelta(seconds=offset))


class _Charsets(dict[EmailMessage, str | None]):
    """The charset each part declares, read once: the header hint and the body's text both ask, and each
    reading parses the Content-Type's parameters again. Keyed by the part itself (parts compare by
    identity), so a part dropped during the walk (a recovery's) never lends its entry to another."""

    def __missing__(self, part: EmailMessage) -> str | None:
        types = [value for name, value in part.raw_items() if name.lower() == "content-type"]
        charset = None
        if _may_name(types, "charset"):
            charset = (_recent_charsets if len(types[0]) <= _SHORT_VALUE else _declared_charset)(types[0])
        self[part] = charset
        return charset


def _declared_charset(content_type: str) -> str | None:
    """What get_content_charset reads in a part whose (first) Content-Type field is `content_type`: it reads
    nothing else."""
    probe = EmailMessage(policy=policy.default)
    probe.set_raw("Content-Type", content_type)
    return probe.get_content_charset()


# Short Content-Type values repeat from message to message (`text/plain; charset="utf-8"`); see _HeaderCache.
_recent_charsets = functools.lru_cache(maxsize=512)(_declared_charset)


def _charset_hint(msg: EmailMessage, charsets: _Charsets) -> str | None:
    """The first charset any part declares: the best guess for raw 8-bit bytes in headers."""
    for part in msg.walk():
        charset = charsets[part]
        if charset:
            return charset
    return None


def _stdlib_defects(msg: EmailMessage) -> list[str]:
    """The standard parser's own defect notes, in words."""
    notes = []
    for part in msg.walk():
        for defect in part.defects:
            doc = (type(defect).__doc__ or type(defect).__name__).strip().splitlines()[0]
            notes.append(f"{doc} {defect}".strip() if str(defect) else doc)
    return notes


# --- Flags ---------------------------------------------------------------------------------------------


def _bounce(msg: EmailMessage, defects: list[str]) -> Bounce | None:
    """The delivery failure report it is (mailbot.bounces), if any."""
    try:
        return read_bounce(msg)
    except _STDLIB_FAILURES as exc:
        defects.append(f"bounce check failed ({type(exc).__name__})")
        return None


# --- Body: text, HTML and attachments ----------------------------------------------------------------


@dataclass
class _Body:
    """What a walk over the parts collects."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    hidden_text: list[str] = field(default_factory=list)  # bodies found in winmail.dat (mailbot.tnef)
    hidden_html: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Result:
    """The body of a message: its text (rendered from HTML when it has none), HTML and attachments."""

    text: str
    html: str | None
    attachments: list[Attachment]


class _Walker:
    """Walks a parsed message collecting body text, HTML and attachments; recovers broken multiparts."""

    def __init__(
        self,
        limits: ParseLimits,
        message_policy: EmailPolicy[EmailMessage],
        hint: str | None,
        charsets: _Charsets,
        defects: list[str],
        parts_used: int,
    ) -> None:
        self.limits = limits
        self.policy = message_policy
        self.hint = hint
        self.charsets = charsets
        self.defects = defects
        self.parts_used = parts_used

    def body(self, msg: EmailMessage) -> _Result:
        collected = _Body()
        self.collect(msg, collected, 0)
        html = "\n".join(collected.html or collected.hidden_html) or None
        text = "\n".join(collected.plain)
        if not text.strip() and collected.html:
            text = self.render("\n".join(collected.html))
        if not text.strip():  # Outlook's rich text: the only body is inside winmail.dat
            text = "\n".join(collected.hidden_text)
        text = "\n".join(t for t in [text.strip("\n"), *collected.forwarded] if t.strip())
        return _Result(text, html, collected.attachments)

    def collect(self, part: EmailMessage, body: _Body, depth: int) -> None:
        content_type = part.get_content_type()
        subparts = _subparts(part)
        if content_type.startswith("message/"):
            self.message_part(part, body, depth)
        elif content_type == "multipart/alternative" and subparts is not None:
            self.alternative(subparts, body, depth)
        elif content_type.startswith("multipart/") and subparts is not None:
            for sub in subparts:
                self.collect(sub, body, depth + 1)
        elif content_type.startswith("multipart/"):
            self.recover(part, body, depth)
        elif content_type in ("text/plain", "text/html") and not _is_attachment(part):
            text = self.text(part, content_type)
            (body.plain if content_type == "text/plain" else body.html).append(text)
        else:
            data = _payload_bytes(part)
            if not (is_tnef(content_type, _raw_filename(part, self.hint)) and self.winmail(data, body)):
                body.attachments.append(self.attachment(part, content_type, data))

    def winmail(self, data: bytes, body: _Body) -> bool:
        """Unpack a winmail.dat into `body` (its text, HTML and files); False when it holds nothing readable."""
        unpacked = unpack_tnef(data, max_files=max(0, self.limits.max_parts - self.parts_used))
        if unpacked is None or not (unpacked.text or unpacked.html or unpacked.files):
            return False
        self.defects.append("winmail.dat (TNEF) unpacked")
        self.parts_used += len(unpacked.files)
        if unpacked.html:
            body.hidden_html.append(unpacked.html)
        text = unpacked.text or (self.render(unpacked.html) if unpacked.html else "")
        if text:
            body.hidden_text.append(_clean(text))
        for name, content in unpacked.files:
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
            body.attachments.append(
                Attachment(
                    filename=_safe_filename(name, content_type),
                    content_type=content_type,
                    size=len(content),
                    sha256=hashlib.sha256(content).hexdigest(),
                    inline=False,
                    data=content,
                )
            )
        return True

    def alternative(self, payload: list[EmailMessage], body: _Body, depth: int) -> None:
        """RFC 2046 §5.1.4: text from the first alternative with plain text, HTML from the last with HTML."""
        choices = []
        for sub in payload:
            choice = _Body()
            self.collect(sub, choice, depth + 1)
            choices.append(choice)
        plain = next((c for c in choices if "".join(c.plain).strip()), None)
        html = next((c for c in reversed(choices) if c.html), None)
        for chosen in _unique(plain, html):
            body.attachments.extend(chosen.attachments)
            body.forwarded.extend(chosen.forwarded)
        if plain:
            body.plain.extend(plain.plain)
        if html:
            body.html.extend(html.html)

    def message_part(self, part: EmailMessage, body: _Body, depth: int) -> None:
        """A message/* part is an attachment; a forwarded message not marked as attachment adds its text."""
        subparts = _subparts(part)
        inner = subparts[0] if subparts else None
        data = _message_body(part, self.defects) if subparts is not None else _payload_bytes(part)
        body.attachments.append(self.attachment(part, part.get_content_type(), data))
        if (
            isinstance(inner, EmailMessage)
            and part.get_content_type() == "message/rfc822"
            and _disposition(part) != "attachment"
        ):
            body.forwarded.append(self.forwarded_text(inner, depth))

    def forwarded_text(self, inner: EmailMessage, depth: int) -> str:
        headers = _Headers(inner, self.hint, [])
        collected = _Body()
        self.collect(inner, collected, depth + 1)
        html = "\n".join(collected.html)
        text = "\n".join(collected.plain)
        if not text.strip() and html:
            text = self.render(html)
        lines = ["---------- Forwarded message ----------"]
        lines += [
            f"{label}: {headers.unstructured(name)}"
            for label, name in (("From", "from"), ("Date", "date"), ("Subject", "subject"), ("To", "to"))
            if name in headers.raw
        ]
        return "\n".join(lines) + "\n\n" + text.strip("\n")

    def recover(self, part: EmailMessage, body: _Body, depth: int) -> None:
        """A multipart whose boundary never matched: find the delimiter really used, else keep it as text."""
        raw = _payload_bytes(part)
        self.defects.append("a multipart part has no usable boundary; its content was recovered")
        found = _GUESSED_DELIMITER.search(raw)
        if found is None:
            body.plain.append(self.decode(raw, self.charsets[part]))
            return
        wrapper = b'Content-Type: multipart/mixed; boundary="' + found[1] + b'"\r\n\r\n' + raw
        try:
            shape = _prescan(wrapper, self.limits, self.policy)
        except UnparseableMessage as exc:
            self.defects.append(f"recovery abandoned: {exc}")
            return
        if (
            self.parts_used + shape.parts > self.limits.max_parts
            or depth + shape.depth > self.limits.max_depth
        ):
            self.defects.append("recovery abandoned: the recovered parts exceed the limits")
            return
        self.parts_used += shape.parts
        try:
            recovered = _parse_bytes(wrapper, self.policy)
        except UnparseableMessage as exc:
            self.defects.append(f"recovery abandoned: {exc}")
            return
        if _subparts(recovered) is not None:
            self.collect(recovered, body, depth)
        else:
            body.plain.append(self.decode(raw, self.charsets[part]))

    def text(self, part: EmailMessage, content_type: str) -> str:
        text = self.decode(_payload_bytes(part), self.charsets[part])
        if content_type == "text/plain" and _param(part, "format") == "flowed":
            return unflow(text, delsp=_param(part, "delsp") == "yes")
        return text

    def decode(self, data: bytes, charset: str | None) -> str:
        text, defect = decode_text(data, charset)
        if defect:
            self.defects.append(defect)
        return _clean(text)

    def render(self, html: str) -> str:
        """Plain text for HTML-only mail (mailbot.htmltext: inscriptis's layout, quotes and signature marked
        as in plain-text mail)."""
        if len(html) > self.limits.max_html_chars:
            self.defects.append(
                f"HTML over {self.limits.max_html_chars} characters; text rendered from its start"
            )
            html = html[: self.limits.max_html_chars]
        try:
            return _clean(html_to_text(html))
        except (ValueError, LxmlError, RecursionError) as exc:  # lxml refuses some documents
            self.defects.append(f"HTML could not be rendered to text: {exc}")
            return ""

    def attachment(self, part: EmailMessage, content_type: str, data: bytes) -> Attachment:
        disposition = _disposition(part)
        has_id = any(name.lower() == "content-id" and value.strip() for name, value in part.raw_items())
        # Shown in the body: a part referenced by Content-ID (RFC 2392), or an image marked inline.
        inline = disposition != "attachment" and (
            has_id or (content_type.startswith("image/") and disposition == "inline")
        )
        return Attachment(
            filename=_filename(part, content_type, self.hint),
            content_type=content_type,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            inline=inline,
            data=data,
        )


def _unique(*bodies: _Body | None) -> Iterator[_Body]:
    seen: list[_Body] = []
    for body in bodies:
        if body is not None and all(body is not s for s in seen):
            seen.append(body)
            yield body


# A line that looks like a MIME delimiter and is followed by a Content-* field.
_GUESSED_DELIMITER = re.compile(
    rb"^--([0-9A-Za-z'()+_,./:=?-]{1,70})[ \t]*\r?\n(?=content-)", re.MULTILINE | re.IGNORECASE
)


def _subparts(part: EmailMessage) -> list[EmailMessage] | None:
    """The parsed subparts of a multipart or message/* part; None for a leaf (or a broken multipart)."""
    # Only ever get_payload() a list: on a leaf with 8-bit bytes it decodes them with the charset
    # label, and a label like "utf-8\0" raises ValueError there.
    return cast(list[EmailMessage], part.get_payload()) if part.is_multipart() else None


def _payload_bytes(part: EmailMessage) -> bytes:
    """A leaf part's body with its Content-Transfer-Encoding undone."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


# Writes header fields as they were received, never refolded.
_AS_RECEIVED = policy.default.clone(refold_source="none", linesep="\n")


def _message_body(part: EmailMessage, defects: list[str]) -> bytes:
    """The body of a message/* part (the nested message, or a report's blocks), headers as received.

    The standard library keeps no raw bytes for parsed entities, so the part is serialized again;
    the pre-scan bounds its depth far below where the generator's recursion fails.
    """
    buffer = BytesIO()
    try:
        BytesGenerator(buffer, mangle_from_=False, policy=_AS_RECEIVED).flatten(part)
    except _STDLIB_FAILURES as exc:
        defects.append(f"an attached message could not be serialized: {exc}")
        return b""
    flat = buffer.getvalue()
    return flat[1:] if flat.startswith(b"\n") else flat.partition(b"\n\n")[2]


def _param(part: EmailMessage, name: str) -> str:
    """A Content-Type parameter, lowercased; "" when absent or unreadable."""
    if not _may_name([value for key, value in part.raw_items() if key.lower() == "content-type"], name):
        return ""
    try:
        value = part.get_param(name)
    except _STDLIB_FAILURES:
        return ""
    return value.strip().lower() if isinstance(value, str) else ""


def _disposition(part: EmailMessage) -> str | None:
    try:
        return part.get_content_disposition()
    except _STDLIB_FAILURES:
        return None


def _is_attachment(part: EmailMessage) -> bool:
    """A text part is body text unless it is marked as an attachment or carries a filename."""
    return _disposition(part) == "attachment" or _raw_filename(part, None) is not None


def _raw_filename(part: EmailMessage, hint: str | None) -> str | None:
    """The filename parameter (RFC 2231 decoded), from Content-Disposition or Content-Type's name."""
    raw = [(name, value) for name, value in part.raw_items() if name.lower() in ("content-disposition", "content-type")]
    if all(_as_is(value) for _, value in raw) and not _may_name([value for _, value in raw], "name"):
        return None  # neither `filename` nor `name`, nor anything that decodes to them
    fields = [(name, _header_text(value, hint)) for name, value in raw]
    if not _may_name([value for _, value in fields], "name"):
        return None
    probe = EmailMessage(policy=part.policy)  # the message's policy, which caches parsed fields
    for name, value in fields:
        probe.set_raw(name, value)
    try:
        return probe.get_filename()
    except _STDLIB_FAILURES:
        return None


def _may_name(values: list[str], parameter: str) -> bool:
    """Whether any of these field values may carry `parameter`: a parameter's name is spelled out in its
    field (RFC 2231 only appends `*` and a section number), unless an encoded word or a quoted pair hides
    it; those take the standard parser's full reading. Most parts carry neither, and that reading costs
    more than the rest of a small part's."""
    return any(parameter in value.lower() or "=?" in value or "\\" in value for value in values)


_DEFAULT_NAMES = {"message/rfc822": "message.eml"}
_MAX_FILENAME = 200


def _filename(part: EmailMessage, content_type: str, hint: str | None) -> str:
    """A filename safe to show and to store: no path, no control or format characters, not hidden."""
    return _safe_filename(_raw_filename(part, hint) or "", content_type)


def _safe_filename(name: str, content_type: str) -> str:
    if "=?" in name:  # RFC 2047 words in a parameter are not standard but Outlook writes them
        name = _unstructured(name)[0]
    name = _clean(name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    name = name.strip().lstrip(".").strip()
    if len(name) > _MAX_FILENAME:
        stem, dot, extension = name.rpartition(".")
        name = (
            (stem[: _MAX_FILENAME - len(extension) - 1] + dot + extension)
            if dot and len(extension) < 16
            else name[:_MAX_FILENAME]
        )
    return name or _DEFAULT_NAMES.get(content_type, "attachment")
