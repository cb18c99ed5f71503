"""text/plain; format=flowed (RFC 3676) -> the paragraphs its writer typed.

Thunderbird, Apple Mail and many webmails send flowed text: a line that ends in a space continues on the
next line (a soft break), quoted lines carry their depth as leading `>` marks, and a line that starts with
a space, `>` or `From ` is stuffed with one space. Read as it is, such text keeps the sender's line wrapping
and its stuffing; rejoined, it reads like the same mail's HTML part rendered (mailbot.htmltext), with
quotes marked `> ` per level and the signature delimiter `-- ` kept (RFC 3676 §4.3: never flowed).
"""

from __future__ import annotations

_SIGNATURE = "-- "


def unflow(text: str, delsp: bool) -> str:
    """Join the soft line breaks of flowed `text` (with `delsp`, drop the space before each, §4.2)."""
    lines: list[str] = []
    paragraph: str | None = None  # soft-broken lines joined so far
    paragraph_depth = 0
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))  # §4.5: the quote marks, with no spaces between them
        content = line[depth:].removeprefix(" ")  # §4.4: space-stuffing
        ends = depth != paragraph_depth or content == _SIGNATURE  # §4.5, §4.3: depth changes, a signature
        if paragraph is not None and ends:
            lines.append(_quoted(paragraph_depth, paragraph))
            paragraph = None
        if paragraph is not None:
            content = paragraph + content
        if content.endswith(" ") and content != _SIGNATURE:
            paragraph, paragraph_depth = (content[:-1] if delsp else content), depth
        else:
            lines.append(_quoted(depth, content))
            paragraph = None
    if paragraph is not None:
        lines.append(_quoted(paragraph_depth, paragraph))
    return "\n".join(lines)


def _quoted(depth: int, content: str) -> str:
    return ("> " * depth + content).rstrip(" ") if content != _SIGNATURE else "> " * depth + content
