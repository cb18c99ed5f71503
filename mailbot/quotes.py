"""A follow-up's text -> what the person wrote now, and the quoted history and signature below it.

The lines that introduce quoted history ("On Tue, ... wrote:", Outlook's "From: ... Sent: ..." block,
"-----Original Message-----", and their German, French and Spanish forms) are found with the
patterns of mail-parser-reply. Its `read()` is not used: measured here, it is quadratic in blank lines
and line length (4,000 blank lines take 0.9 s), its salutation rule reads "Thanks," in mid-message as
the start of a signature and drops what follows, and it strips every line's indentation. So the
patterns run on a bounded view, the text is cut at original line boundaries, and these small rules
cover the rest: the "-- " signature delimiter (RFC 3676 §4.3), "Sent from my ..." footers, trailing
">" quoting without an attribution line, Spanish Gmail attributions (which the library misses), and
interleaved replies (answers between quoted lines are new text, so nothing is cut).

The text comes from mailbot.parse, which writes every form of a reply alike: an HTML-only reply is rendered
with `> ` quote marks and the `-- ` delimiter (mailbot.htmltext), flowed text is rejoined (mailbot.flowed).
"""

from __future__ import annotations

import re

from mailparser_reply.constants import MAIL_LANGUAGES
from mailparser_reply.parser import EmailMessage as _ReplyPatterns

_LANGUAGES = ["en", "de", "fr", "es"]
# The library's header patterns backtrack heavily on long lines (a 32 KB "On ..." line takes 16 s), so
# they see only the first lines, each cut to a length no real attribution line reaches.
_SCAN_LINES = 300
_SCAN_LINE_CHARS = 256

_HISTORY_HEADER = _ReplyPatterns(text="", languages=list(_LANGUAGES)).HEADER_REGEX
# A header block must open with the sender field, so that "To: ...\nSubject: ..." typed in a message
# is not taken for one.
_HEADER_OPENING = re.compile(
    r"[>* ]*(?:(?:On|Am|Le|El)\s.*|-{5,} ?Original Message ?-{5,}|(?:From|Von|De)\s?:.*)", re.IGNORECASE
)
_ATTRIBUTION_END = re.compile(r"(?:wrote|escribió|a écrit|schrieb)\s*:\s*$", re.IGNORECASE)
_SENT_FROM = re.compile(
    "(?:" + "|".join(str(MAIL_LANGUAGES[language]["sent_from"]) for language in _LANGUAGES) + ")",
    re.IGNORECASE,
)
_RULE = re.compile(r"[_\-=*]{8,}")
# A "-- " line followed by more than this many lines is a separator in the text, not a signature.
MAX_SIGNATURE_LINES = 20


def split_reply(text: str) -> tuple[str, str]:
    """(new text, quoted history + signature) of a reply; history is "" when there is none."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    end = _trailing_quote_start(lines, _history_start(lines))
    end = min(end, _signature_start(lines, end))
    while end > 0 and (not lines[end - 1].strip() or _RULE.fullmatch(lines[end - 1].strip())):
        end -= 1  # blank lines and Outlook's "____" rule above the history belong to it
    return "\n".join(lines[:end]).strip("\n").rstrip(), "\n".join(lines[end:]).strip("\n").rstrip()


def _history_start(lines: list[str]) -> int:
    """The line where quoted history begins (at the first history header), or len(lines)."""
    headers = _history_headers(lines)
    if not headers:
        return len(lines)
    start, end = headers[0]
    following = next((line for line in lines[end + 1 :] if line.strip()), "")
    if not _quoted(following):
        return start  # Outlook style: everything below the header block is history
    if not _answers_below_quote(lines, end + 1):
        return start  # Gmail style: the quoted lines run to the end (or a signature)
    return len(lines)  # interleaved or bottom-posted: the answers are below the quotes


def _history_headers(lines: list[str]) -> list[tuple[int, int]]:
    """(first line, last line) of each history header in the scanned lines, in order."""
    view_lines = [line.strip() if len(line) <= _SCAN_LINE_CHARS else "" for line in lines[:_SCAN_LINES]]
    view = "\n".join(view_lines)
    found = []
    for match in _HISTORY_HEADER.finditer(view):
        matched = match.group(0)
        offset = match.start() + len(matched) - len(matched.lstrip("\n"))
        start = view.count("\n", 0, offset)
        if _HEADER_OPENING.fullmatch(view_lines[start]):
            found.append((start, start + matched.strip("\n").count("\n")))
    for index, line in enumerate(view_lines):
        following = next((later for later in view_lines[index + 1 :] if later), "")
        if _ATTRIBUTION_END.search(line) and not _quoted(line) and _quoted(following):
            wrapped = (
                index > 0
                and not _HEADER_OPENING.fullmatch(line)
                and _HEADER_OPENING.fullmatch(view_lines[index - 1])
            )
            found.append((index - 1 if wrapped else index, index))
    return sorted(found)


def _answers_below_quote(lines: list[str], start: int) -> bool:
    """Whether unquoted text (other than a signature) follows the quoted block that begins at `start`."""
    signature = _signature_start(lines, len(lines))
    return any(line.strip() and not _quoted(line) for line in lines[start:signature])


def _trailing_quote_start(lines: list[str], end: int) -> int:
    """Where a ">" quoted block that closes lines[:end] begins (with a "... wrote:" line above it)."""
    index = end
    while index > 0 and (not lines[index - 1].strip() or _quoted(lines[index - 1])):
        index -= 1
    while index < end and not lines[index].strip():
        index += 1
    if index == end or not any(_quoted(line) for line in lines[index:end]):
        return end
    if index > 0 and lines[index - 1].rstrip().endswith(":"):
        index -= 1  # an attribution in a form no pattern knows ("Sam wrote:", "Quoting Sam:")
    return index


def _signature_start(lines: list[str], end: int) -> int:
    """Where the signature of lines[:end] begins: the last "-- " line, or a "Sent from my ..." footer."""
    for index in range(end - 1, max(end - 1 - MAX_SIGNATURE_LINES, -1), -1):
        if lines[index].rstrip() == "--":
            return index
    last = next((i for i in range(end - 1, -1, -1) if lines[i].strip()), None)
    if last is not None and _SENT_FROM.match(lines[last].strip()):
        return last
    return end


def _quoted(line: str) -> bool:
    return line.lstrip().startswith(">")
