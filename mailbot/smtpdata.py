"""SMTP's DATA section (RFC 5321 4.1.1.4, 4.5.2) read in pieces, with aiosmtpd 1.4.6's answers.

aiosmtpd reads a message line by line (a `readuntil` and a few list operations a line): a quarter of the
doors' CPU with 2 KB messages (issue 13). `Section` takes it in pieces up to each ".<CRLF>" instead and
checks the lines afterwards, mostly in C, for what aiosmtpd checks on each, in its order: a line longer than
its line length limit (500), more than the size limit (552), whichever comes first; then the dots are
unstuffed. Past the size limit it keeps nothing, as aiosmtpd discards it.
"""

from __future__ import annotations

import asyncio

END = b".\r\n"
CRLF = b"\r\n"
TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH = "552 Error: Too much mail data"


def problem(lines: list[bytes], size_limit: int | None, line_limit: int) -> str | None:
    """aiosmtpd's answer to these complete lines (without their CRLF), None when they are fine. Its stream
    reader's limit is the line limit: a line whose CRLF starts past it overruns the reader before it is
    counted; one that fits is counted toward the size, then its length is checked."""
    total = 0
    for line in lines:
        if len(line) > line_limit:
            return TOO_LONG
        total += len(line) + 2
        if size_limit and total > size_limit:
            return TOO_MUCH
        if len(line) + 2 > line_limit:
            return TOO_LONG
    return None


def unstuffed(data: bytes) -> bytes:
    """The message without the transparency dots (RFC 5321 4.5.2): each line's leading dot removed."""
    if not data.startswith(b".") and b"\r\n." not in data:
        return data
    return CRLF.join(line[1:] if line.startswith(b".") else line for line in data.split(CRLF))


class Section:
    """The bytes of one DATA section as they come, up to its end mark."""

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.pieces: list[bytes] = []
        self.kept = 0
        self.tail = b""  # the last two bytes taken: whether a dot starts a line
        self.answer: str | None = None  # settled before the end: too much came to keep

    def add(self, piece: bytes) -> bool:
        """Take a piece that ends with END or holds none (`read_piece`); True when it ends the section: its
        END starts a line."""
        if piece.endswith(END) and self._last_two(piece[:-3]) in (CRLF, b""):
            self._keep(piece[:-3])
            return True
        self.tail = self._last_two(piece)
        self._keep(piece)
        return False

    def _last_two(self, body: bytes) -> bytes:
        return body[-2:] if len(body) >= 2 else (self.tail + body)[-2:]

    def _keep(self, body: bytes) -> None:
        if self.answer is not None:
            return
        self.pieces.append(body)
        self.kept += len(body)
        if self.size_limit and self.kept > self.size_limit + self.line_limit + 2:
            # Past the size limit and any line aiosmtpd could still count: it has answered by now.
            lines = b"".join(self.pieces).split(CRLF)
            rest = lines.pop()  # an unfinished line, or nothing
            self.answer = problem(lines, self.size_limit, self.line_limit) or (
                TOO_LONG if len(rest) > self.line_limit + 1 else None
            )
            self.pieces, self.kept = [], 0

    def result(self) -> tuple[str | None, bytes]:
        """(aiosmtpd's answer to a problem, None when there is none; the message, unstuffed, when none)."""
        if self.answer is not None:
            return self.answer, b""
        data = b"".join(self.pieces)
        lines = data.split(CRLF)
        fits = (not self.size_limit or len(data) <= self.size_limit) and max(map(len, lines)) + 2 <= self.line_limit
        answer = None if fits else problem(lines[:-1], self.size_limit, self.line_limit)
        return (answer, b"") if answer is not None else (None, unstuffed(data))


async def read_piece(reader: asyncio.StreamReader) -> bytes:
    """Up to and with the next END; or, where that lies past the reader's limit, what certainly holds none."""
    try:
        return await reader.readuntil(END)
    except asyncio.LimitOverrunError as overrun:
        return await reader.read(overrun.consumed)
