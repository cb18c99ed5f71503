"""Real mail traffic for tests: an SMTP sink that records what crossed the wire, and client helpers."""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class SinkHandler:
    """A relay stand-in: records every message; `refuse` makes it answer that code to DATA, `refuse_rcpt` that
    reply to RCPT for the address given."""

    messages: list[Received] = field(default_factory=list)
    refuse: str | None = None
    refuse_rcpt: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse:
            return self.refuse
        self.messages.append(
            Received(envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        return "250 OK"


class SmtpSink:
    def __init__(self, **options: Any) -> None:
        """`options`: more of aiosmtpd's SMTP settings (an authenticator, for a relay that wants a login)."""
        self.options = options
        self.handler = SinkHandler()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0  # how many SMTP sessions clients opened

    def _session(self) -> SMTP:
        self.connections += 1
        return SMTP(self.handler, hostname="sink.test", enable_SMTPUTF8=True, **self.options)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._session,
            host="127.0.0.1",
            port=self.port,  # the same port again after a stop: a relay coming back
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages


def message(
    *,
    sender: str = "Ana Diaz <ana@lincoln.example>",
    to: str = "herosupport@schoolmint.com",
    subject: str = "Login broken",
    body: str = "I cannot log in since this morning.\n",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Tue, 01 Dec 2026 10:00:00 -0500"
    msg["Message-ID"] = message_id or make_msgid(domain="lincoln.example")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP_POLICY)  # CRLF line ends, as on the wire


def smtp_send(
    port: int,
    raw: bytes,
    *,
    mail_from: str = "ana@lincoln.example",
    rcpt: tuple[str, ...] = ("herosupport@schoolmint.com",),
) -> dict[str, Any]:
    """Send with the standard library's client (blocking: run it with asyncio.to_thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(mail_from, list(rcpt), raw)


def lmtp_send(port: int, raw: bytes, *, mail_from: str, rcpt: tuple[str, ...]) -> list[tuple[int, bytes]]:
    """LMTP with one reply read per accepted recipient after DATA (smtplib.LMTP reads only one)."""
    client = smtplib.LMTP("127.0.0.1", port)
    try:
        client.ehlo_or_helo_if_needed()
        client.mail(mail_from)
        accepted = [r for r in rcpt if client.rcpt(r)[0] == 250]
        first = client.data(raw)
        replies = [first] + [client.getreply() for _ in accepted[1:]]
        return replies
    finally:
        client.close()
