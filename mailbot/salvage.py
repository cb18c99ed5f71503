"""A degraded reading of a message the parser refuses: every customer who writes still gets a ticket.

`read(raw, limits)` is `parse(raw, limits)`, or, when the message is over ParseLimits (2,000 header
fields, MIME nested 200 deep, 100,000 parts, a 64 KiB Content-Type) or the standard parser cannot read it,
what can still be read: the top header fields mailbot uses, the first text part found, and the raw message
itself kept as an attachment (`original.eml`), so nothing is lost and the specialist sees everything.
`ParsedMessage.degraded` says why.

The salvage is one linear pass over the bytes that builds a small, well-formed message of those fields and
that text, which the ordinary parser then reads: decoding, addresses and flags follow the same rules as
for any message. Trust is not widened by it: the author is kept only when the salvaged From fields are all
of the original's, unrepaired (mailbot.senders).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

from mailbot.headerblock import HEADER_LINE, repair
from mailbot.newlines import normalise
from mailbot.parse import Attachment, ParsedMessage, ParseLimits, UnparseableMessage, parse

# The top-level fields mailbot reads (addresses, threading, automatic-mail and loop marks).
_KEPT = re.compile(
    rb"(from|sender|reply-to|to|cc|subject|date|message-id|in-reply-to|references|return-path|mime-version|"
    rb"thread-index|auto-submitted|precedence|list-[a-z-]+|x-auto[a-z-]*|x-mail-autoreply|x-mailbot-loop)[ \t]*:",
    re.IGNORECASE,
)
_MAX_SAME_NAME = 50  # fields of one name kept (a long Received chain is not read; To and Cc rarely repeat)
_MAX_TEXT = 1024 * 1024  # bytes of the first text part kept
_CONTENT_TYPE = re.compile(rb"content-type[ \t]*:[ \t]*([a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+)", re.IGNORECASE)
_BOUNDARY = re.compile(rb'boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)
_ATTACHMENT = re.compile(rb"content-disposition[ \t]*:[ \t]*attachment", re.IGNORECASE)
_TEXT_FIELDS = re.compile(rb"content-(type|transfer-encoding)[ \t]*:", re.IGNORECASE)
_BLANK = (b"\r\n", b"\n", b"\r")


def read(raw: bytes, limits: ParseLimits | None = None) -> ParsedMessage:
    """The message as `parse` reads it, or its degraded reading when `parse` refuses it."""
    limits = limits or ParseLimits()
    try:
        return parse(raw, limits)
    except UnparseableMessage as exc:
        return salvage(raw, limits, str(exc))


def salvage(raw: bytes, limits: ParseLimits, reason: str) -> ParsedMessage:
    """The degraded reading (see the module docstring); `reason` is why the full reading was refused."""
    block = repair(normalise(raw[: limits.max_bytes]))  # one reading: the line ends parse and DKIM use
    fields, body_start, all_from = _top_fields(block.raw, limits)
    text_fields, text = _first_text(block.raw, body_start)
    small = b"".join(fields) + b"".join(text_fields) + b"\r\n" + text
    try:
        parsed = parse(small, limits)
    except UnparseableMessage:
        parsed = parse(b"MIME-Version: 1.0\r\n\r\n", limits)
    kept_from = sum(1 for field in fields if field[:5].lower() == b"from:")
    author = parsed.author if kept_from == all_from and not block.repairs else None
    original = Attachment(
        filename="original.eml",
        content_type="message/rfc822",
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        inline=False,
        data=raw,
    )
    return replace(
        parsed,
        author=author,
        attachments=[*parsed.attachments, original],
        defects=[f"degraded reading: {reason}", *block.repairs, *parsed.defects],
        degraded=reason,
    )


def _top_fields(raw: bytes, limits: ParseLimits) -> tuple[list[bytes], int, int]:
    """The kept top-level fields (each with its continuation lines), where the body starts, and how many
    From fields the block holds in all. A field longer than max_header_bytes is left out whole, never cut
    (a From cut short could read as another address)."""
    kept: list[list[bytes]] = []
    counts: dict[bytes, int] = {}
    current: list[bytes] | None = None
    size = all_from = position = 0
    for line in raw.splitlines(keepends=True):
        if line in _BLANK:
            position += len(line)
            break
        if not HEADER_LINE.match(line):
            break  # no blank separator: this line is already body
        position += len(line)
        if line[:1] in (b" ", b"\t"):
            size += len(line)
            if current is not None and size > limits.max_header_bytes:
                kept.remove(current)
                current = None
            elif current is not None:
                current.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        all_from += name == b"from"
        counts[name] = counts.get(name, 0) + 1
        size = len(line)
        current = [line] if _KEPT.match(line) and counts[name] <= _MAX_SAME_NAME else None
        if current is not None:
            kept.append(current)
    return [_ended(b"".join(field)) for field in kept], position, all_from


def _ended(field: bytes) -> bytes:
    return field if field.endswith((b"\n", b"\r")) else field + b"\r\n"


def _first_text(raw: bytes, start: int) -> tuple[list[bytes], bytes]:
    """The Content-Type and -Transfer-Encoding fields and the body of the first text part, read linearly:
    entities are told apart by the boundaries declared so far, as a person scrolling the source would."""
    boundaries: set[bytes] = set()
    top = _entity_fields(raw[:start])
    _note_boundary(top, boundaries)
    if not boundaries:  # a single part: its body is the text, whatever its type claims
        return [f for f in top if _TEXT_FIELDS.match(f)], raw[start : start + _MAX_TEXT]
    html: tuple[list[bytes], bytes] | None = None
    lines = raw[start:].splitlines(keepends=True)
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not _is_delimiter(line, boundaries):
            continue
        header, index = _header_lines(lines, index)
        entity = _entity_fields(b"".join(header))
        _note_boundary(entity, boundaries)
        kind = _type_of(entity)
        if kind not in (b"text/plain", b"text/html") or any(_ATTACHMENT.match(f) for f in entity):
            continue
        body = bytearray()
        while index < len(lines) and not _is_delimiter(lines[index], boundaries):
            if len(body) < _MAX_TEXT:
                body += lines[index]
            index += 1
        found = ([f for f in entity if _TEXT_FIELDS.match(f)], bytes(body))
        if kind == b"text/plain":
            return found
        html = html or found
    return html or ([], b"")


def _header_lines(lines: list[bytes], index: int) -> tuple[list[bytes], int]:
    """A part's header lines from `index` to its blank line, and the index after it."""
    header = []
    while index < len(lines) and lines[index] not in _BLANK and HEADER_LINE.match(lines[index]):
        header.append(lines[index])
        index += 1
    if index < len(lines) and lines[index] in _BLANK:
        index += 1
    return header, index


def _entity_fields(block: bytes) -> list[bytes]:
    """A header block's fields, continuation lines joined to their field."""
    fields: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif HEADER_LINE.match(line):
            fields.append(line)
    return [_ended(field) for field in fields]


def _type_of(fields: list[bytes]) -> bytes:
    for field in fields:
        found = _CONTENT_TYPE.match(field)
        if found:
            return found[1].lower()
    return b"text/plain"


def _note_boundary(fields: list[bytes], boundaries: set[bytes]) -> None:
    for field in fields:
        if _type_of([field]).startswith(b"multipart/"):
            found = _BOUNDARY.search(field)
            if found:
                boundaries.add(found[1] or found[2])


def _is_delimiter(line: bytes, boundaries: set[bytes]) -> bool:
    """`--boundary` or `--boundary--` (RFC 2046 §5.1.1) of any boundary seen: one look-up, however many."""
    if not line.startswith(b"--"):
        return False
    token = line[2:].rstrip(b" \t\r\n")
    return token in boundaries or (token.endswith(b"--") and token[:-2] in boundaries)
