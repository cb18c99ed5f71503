"""A message's top header block, repaired where one broken line would end it early.

The standard parser (email.feedparser) ends the header block at the first line that is neither a field nor
a continuation: a line that lost its folding white space, a stray line of text, `Subject : x` with a space
before the colon. Everything after it, From and Subject included, becomes body. `repair(raw)` mends such a
line when real header fields (names mailbot knows) follow it, and says what it did; with nothing to mend it
gives the bytes back unchanged.

A repaired block is no longer the block a DKIM verifier reads (dkimpy refuses it outright), so the caller
trusts no sender of a repaired message (mailbot.senders): recovery is for reading, never for trust.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# email.feedparser.headerRE, on bytes: what the standard parser accepts as a header or continuation line.
HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")

# Lines that each match HEADER_LINE, split where bytes.splitlines splits; one pass, as each line can match
# only one way.
_WHOLE_BLOCK = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\r\n]*+(?:\r\n|\r|\n)?)*+")
# Fields worth rescuing when a stray line splits the header block.
_KNOWN_FIELDS = re.compile(
    rb"(from|to|cc|bcc|subject|date|message-id|in-reply-to|references|reply-to|sender|mime-version|"
    rb"content-[a-z-]+|received|return-path|delivered-to|list-[a-z-]+|auto-submitted|precedence|"
    rb"x-[a-z0-9-]+|dkim-signature|authentication-results|arc-[a-z-]+|thread-[a-z-]+)[ \t]*:",
    re.IGNORECASE,
)
# `Subject : x`: white space before the colon (RFC 822's obsolete syntax, RFC 5322 §4.5.3).
_SPACE_BEFORE_COLON = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]+:")
# Stray lines mended in one run at most: more is a body that began without its blank line.
_MAX_STRAY_RUN = 3


@dataclass(frozen=True)
class HeaderBlock:
    """The message with its header block mended, and what was mended, in words (empty: nothing)."""

    raw: bytes
    repairs: tuple[str, ...]


def repair(raw: bytes) -> HeaderBlock:
    """Drop blank lines before the header block; mend stray lines that real header fields follow."""
    repairs = []
    stripped = raw.lstrip(b"\r\n")
    if len(stripped) < len(raw) and HEADER_LINE.match(stripped) and stripped[:1] not in (b" ", b"\t"):
        repairs.append("blank lines before the header block were dropped")
        raw = stripped
    end = _block_end(raw)
    if _WHOLE_BLOCK.fullmatch(raw, 0, end):
        return HeaderBlock(raw, tuple(repairs))  # every line a field or a continuation: nothing to mend
    lines = raw[:end].splitlines(keepends=True)
    folded = renamed = 0
    for index, line in enumerate(lines):
        if HEADER_LINE.match(line):
            continue
        spaced = _SPACE_BEFORE_COLON.match(line)
        if spaced and _KNOWN_FIELDS.match(spaced[1] + b":"):
            lines[index] = spaced[1] + line[spaced.end() - 1 :]
            renamed += 1
        elif _known_field_follows(lines, index + 1):
            lines[index] = b" " + line  # RFC 5322 §2.2.3: a folded line starts with white space
            folded += 1
        else:
            break  # the header block really ends here: what follows is body
    if folded:
        repairs.append(f"{folded} header line(s) without a field name were read as folded continuations")
    if renamed:
        repairs.append(f"{renamed} header field name(s) with white space before the colon were mended")
    if folded or renamed:
        raw = b"".join(lines) + raw[end:]
    return HeaderBlock(raw, tuple(repairs))


def _block_end(raw: bytes) -> int:
    """Where the first blank line starts (`\r?\n\r?\n` first matches), else len(raw). Found with two
    searches for the line end before it, in C: a pattern's scan costs more here than mending does."""
    lf_crlf = raw.find(b"\n\r\n")
    lf_lf = raw.find(b"\n\n", 0, len(raw) if lf_crlf < 0 else lf_crlf + 1)
    at = min(found) if (found := [at for at in (lf_crlf, lf_lf) if at >= 0]) else -1
    if at < 0:
        return len(raw)
    return at - 1 if raw[at - 1 : at] == b"\r" else at


def _known_field_follows(lines: list[bytes], start: int) -> bool:
    """Whether a field mailbot knows starts within a short run of stray lines from `start`."""
    for line in lines[start : start + _MAX_STRAY_RUN]:
        spaced = _SPACE_BEFORE_COLON.match(line)
        if _KNOWN_FIELDS.match(spaced[1] + b":" if spaced else line):
            return True
        if HEADER_LINE.match(line):
            return False  # an unknown field: not enough to say the block goes on
    return False
