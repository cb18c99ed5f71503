"""DATA read in pieces (mailbot.smtpdata): the same answers and the same message as aiosmtpd's own reading,
byte for byte, over real connections, for ordinary, stuffed, overlong and oversized sections cut anywhere."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbot.listener import LimitedSMTP, SessionLimits

SIZE_LIMIT = 4000


class Echo:
    """Answers with what it was handed, so a transcript shows the message itself."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        assert envelope.content == content
        return f"250 {len(content)} {hashlib.sha256(content).hexdigest()}"


def plain() -> SMTP:
    return SMTP(Echo(), data_size_limit=SIZE_LIMIT, hostname="mx.test", enable_SMTPUTF8=True)


def ours() -> SMTP:
    protocol = LimitedSMTP(Echo(), data_size_limit=SIZE_LIMIT, hostname="mx.test", enable_SMTPUTF8=True)
    protocol.limits = SessionLimits(10, 10)
    return protocol


async def transcript(factory: Callable[[], SMTP], section: bytes, chunk: int | None) -> bytes:
    """Everything the server answered to one session that sends `section` after DATA, in pieces of `chunk`
    bytes (larger for long sections), then another message and QUIT."""
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n")
        step = len(section) if chunk is None else max(chunk, len(section) // 200)  # 200 writes at most
        pieces = [section[i : i + step] for i in range(0, len(section), step)]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.0005)
        writer.write(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nagain\r\n.\r\nQUIT\r\n")
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


LINE = b"Some words of a message, as a person writes them.\r\n"
SECTIONS = {
    "ordinary": b"Subject: x\r\n\r\n" + LINE * 30 + b".\r\n",
    "empty": b".\r\n",
    "one line": b"hello\r\n.\r\n",
    "stuffed dots": b"..\r\n..leading\r\nmid.dle\r\nend.\r\n.\r\n...\r\n.\r\n",
    "dot lines before the end": b"a.\r\n.a\r\n. \r\n.\r\n",
    "bare line ends": b"a\nb\rc\r\r\n\n.\n\r\n.\r\n",
    "lines at the limits": b"".join(b"x" * n + b"\r\n" for n in (997, 998, 999)) + b".\r\n",
    "a line of 1000": b"a\r\n" + b"x" * 1000 + b"\r\n.\r\n",
    "a line of 1001": b"x" * 1001 + b"\r\nafter\r\n.\r\n",
    "a line of 1002": b"x" * 1002 + b"\r\n.\r\n",
    "a line of 5000": b"x" * 5000 + b"\r\n.\r\n",
    "a long line ending with a dot": b"x" * 1500 + b".\r\n.\r\n",
    "at the size limit": b"x" * 98 + b"\r\n" + (b"y" * 98 + b"\r\n") * 39 + b".\r\n",
    "one byte over": b"x" * 99 + b"\r\n" + (b"y" * 98 + b"\r\n") * 39 + b".\r\n",
    "far over": LINE * 400 + b".\r\n",
    "too long, then too much": b"x" * 1200 + b"\r\n" + LINE * 200 + b".\r\n",
    "too much, then too long": LINE * 200 + b"x" * 1200 + b"\r\n.\r\n",
    "an unfinished overlong line past the limit": LINE * 60 + b"z" * 9000 + b"\r\n.\r\n",
    "a huge line": b"q" * 30000 + b"\r\n.\r\n",
}


@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
@pytest.mark.parametrize("name", list(SECTIONS))
async def test_the_same_answers_as_aiosmtpd(name: str, chunk: int | None) -> None:
    section = SECTIONS[name]
    expected = await transcript(plain, section, chunk)
    assert b"221" in expected  # the session went to its end
    assert await transcript(ours, section, chunk) == expected
