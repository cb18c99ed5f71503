"""SMTP and LMTP in (aiosmtpd): accept mail for the support addresses, answer 250 only once it is stored.

The handler follows aiosmtpd's design: plain `handle_*` methods that return reply lines. DATA holding a
bare CR or a bare LF is refused with 550 5.5.2 (mailbot.newlines). Every unexpected error answers 451 (try again later) instead of aiosmtpd's default `500 (ExcType) message`, which would make
the sending server bounce the mail and would leak internals.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, cast

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from mailbot.clock import Clock
from mailbot.config import SmtpConfig
from mailbot.door import Door
from mailbot.errors import TransientError
from mailbot.newlines import bare_newline
from mailbot.smtpdata import Section, read_piece

if TYPE_CHECKING:
    from mailbot.metrics import Metrics

log = logging.getLogger("mailbot.listener")
aiosmtpd_log = logging.getLogger("mail.log")


def is_support_address(address: str, addresses: Sequence[str]) -> bool:
    """An address of ours, or its plus form (herosupport+anything@domain); domains compare case-insensitively."""
    local, _, domain = address.rpartition("@")
    base = local.split("+", 1)[0]
    return f"{base}@{domain}".lower() in addresses or address.lower() in addresses


class SessionLimits:
    """Caps on concurrent sessions, in total and per client address, shared by every connection."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.active: Counter[str] = Counter()

    def admit(self, client: str) -> str | None:
        """None when the client may go on, else the 421 reply to give it."""
        if sum(self.active.values()) >= self.total:
            return "421 4.3.2 Too many connections, try again later"
        if self.active[client] >= self.per_client:
            return "421 4.7.0 Too many connections from your address, try again later"
        return None


class Handler:
    def __init__(
        self,
        door: Door,
        config: SmtpConfig,
        addresses: Sequence[str],
        clock: Clock,
        hostname: str,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.door = door
        self.metrics = metrics
        self.config = config
        self.addresses = [a.lower() for a in addresses]
        self.clock = clock
        self.hostname = hostname
        self.lmtp = config.protocol == "lmtp"
        self.in_flight = 0  # DATA commands being stored right now: shutdown waits for them

    async def drained(self, timeout: float) -> bool:
        """Wait until no message is being stored; False if that took longer than `timeout` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not is_support_address(address, self.addresses):
            return "550 5.1.1 No such user here (this server only accepts mail for the support address)"
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    def _received(self, session: Session, envelope: Envelope) -> bytes:
        """A Received trace header (RFC 5321 4.4), so the stored message shows how it came in."""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        protocol = "LMTP" if self.lmtp else ("ESMTPS" if session.ssl else "ESMTP")
        helo = (session.host_name or "unknown").replace("\r", "").replace("\n", "")[:100]
        now = self.clock.now().replace(microsecond=0)
        stamp = _stamp(now, now.utcoffset())
        return f"Received: from {helo} ([{peer}])\r\n\tby {self.hostname} (mailbot) with {protocol}; {stamp}\r\n".encode()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()  # aiosmtpd calls this once the final "." has been read
        raw = envelope.original_content or b""
        bare = bare_newline(raw)
        if bare is not None:
            # One reading for everyone (mailbot.newlines): a line end other than CRLF splits the header
            # fields differently for the DKIM verifier and the parser. Refused as Postfix's
            # smtpd_forbid_bare_newline = reject does; an MTA in front normalises or refuses it first.
            log.warning("message from %s refused: bare <%s> in DATA", envelope.mail_from, bare)
            return self._per_recipient(envelope, f"550 5.5.2 Error: bare <{bare}> received")
        self.in_flight += 1
        try:
            inbound_id = await self.door.accept(
                self._received(session, envelope) + raw,
                source="lmtp" if self.lmtp else "smtp",
                envelope_from=envelope.mail_from or "",
                envelope_to=envelope.rcpt_tos,
                peer=session.peer[0] if isinstance(session.peer, tuple) else None,
            )
        except TransientError as exc:
            log.error("message from %s not stored: %s", envelope.mail_from, exc)
            reply = "451 4.3.0 Temporary failure storing the message, please try again later"
            return self._per_recipient(envelope, reply)
        finally:
            self.in_flight -= 1
        if self.metrics:
            self.metrics.accept_seconds.observe(time.perf_counter() - started)
        return self._per_recipient(envelope, f"250 2.0.0 OK: queued as {inbound_id}")

    def _per_recipient(self, envelope: Envelope, reply: str) -> str:
        # LMTP (RFC 2033 4.2) wants one reply per accepted recipient after DATA; aiosmtpd sends our lines as is.
        if self.lmtp:
            return "\r\n".join(reply for _ in envelope.rcpt_tos)
        return reply

    async def handle_exception(self, error: Exception) -> str:
        log.exception("SMTP session error", exc_info=error)
        return "451 4.3.0 Temporary local problem, please try again later"


@functools.lru_cache(maxsize=4)
def _stamp(second: datetime, offset: timedelta | None) -> str:
    """RFC 5322's date of a Received field: to the second, so each second's is worked out once (formatting
    it was 7% of the doors' CPU under load). `offset` too: the same instant in another zone is equal."""
    return format_datetime(second)


@functools.lru_cache(maxsize=1024)
def _address(arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd's reading of a MAIL FROM or RCPT TO argument (SMTP._getaddr): (address, the parameters
    after it), ("", "") for none, (None, None) when it does not parse. The same few addresses come back all
    day (ours in every RCPT, each customer's in MAIL): a parse costs 40 µs, a look-up here 0.1."""
    if not arg:
        return "", ""
    try:
        address, rest = get_angle_addr(arg) if arg.lstrip().startswith("<") else get_addr_spec(arg)
    except HeaderParseError:
        return None, None
    return address.addr_spec, rest


BUFFERED = 64 * 1024  # bytes a session's reader takes in before it stops reading the socket


class _Limited:
    """Mixed into aiosmtpd's protocol class: admits a connection only within the session limits, and reads
    addresses and DATA as aiosmtpd does, with its answers, without its cost per command and per line."""

    limits: SessionLimits
    _client: str | None = None
    _idle_deadline = 0.0  # loop time: the session times out if no command comes before
    _timeout_handle: asyncio.TimerHandle | None  # aiosmtpd's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if getattr(self, "_original_transport", None) is None and self._client is None:
            peer = transport.get_extra_info("peername")
            self._client = peer[0] if isinstance(peer, tuple) else str(peer)
            self._refusal = self.limits.admit(self._client)
            self.limits.active[self._client] += 1
        super().connection_made(transport)  # type: ignore[misc]

    def connection_lost(self, error: Exception | None) -> None:
        if self._client is not None:
            self.limits.active[self._client] -= 1
            if self.limits.active[self._client] <= 0:
                del self.limits.active[self._client]
            self._client = None
        super().connection_lost(error)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        # aiosmtpd's stream reader stops reading the socket once it buffers twice its limit, the line length
        # limit (2 KB): every message of 2 KB or more then cost a pause and a resume, two epoll_ctl calls and
        # a tenth of the doors' CPU. The limit stays as it is for reading lines; only that threshold moves.
        reader = self._stream_reader  # type: ignore[attr-defined]
        if reader is None:
            return
        limit = reader._limit
        reader._limit = max(limit, BUFFERED // 2)
        try:
            super().data_received(data)  # type: ignore[misc]
        finally:
            reader._limit = limit

    async def _handle_client(self) -> None:
        if self._refusal:
            await self.push(self._refusal)  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]
            return
        await super()._handle_client()  # type: ignore[misc]

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd 1.4.6 defines a typing.Protocol class on every call (ABCMeta, __init_subclass__) and
        # parses again what it parsed a moment ago: a quarter of the doors' CPU under load (issue 13).
        address, rest = _address(arg)
        limit = self.local_part_limit  # type: ignore[attr-defined]
        if address and limit and len(address.rpartition("@")[0]) > limit:
            return None, None
        return address, rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd 1.4.6's smtp_DATA (same checks, same answers, the same message handed over), its section
        # read by mailbot.smtpdata instead of line by line. Our protocols always give the handler bytes.
        smtp = cast(SMTP, self)
        if await smtp.check_helo_needed() or await smtp.check_auth_needed("DATA"):
            return
        assert smtp.envelope is not None
        if not smtp.envelope.rcpt_tos:
            await smtp.push("503 Error: need RCPT command")
            return
        if arg:
            await smtp.push("501 Syntax: DATA")
            return
        await smtp.push("354 End data with <CR><LF>.<CR><LF>")
        section = Section(smtp.data_size_limit, smtp.line_length_limit)
        while smtp.transport is not None:
            try:
                piece = await read_piece(smtp._reader)
            except asyncio.CancelledError:
                aiosmtpd_log.info("Connection lost during DATA")
                smtp._writer.close()
                raise
            if section.add(piece):
                break
        else:
            return  # the connection is gone: nothing to store, nobody to answer
        answer, content = section.result()
        if answer is None:
            smtp.envelope.content = smtp.envelope.original_content = content
            status = await smtp._call_handler_hook("DATA")
            answer = "250 OK" if status is MISSING else status
        smtp._set_post_data_state()
        await smtp.push(answer)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # One timer a session, moved on only when it fires before the deadline: aiosmtpd cancelled it and made
        # a new one for every command (5% of the doors' CPU under load, for a deadline that seldom comes).
        loop = self.loop  # type: ignore[attr-defined]
        self._idle_deadline = loop.time() + (duration or self._timeout_duration)  # type: ignore[attr-defined]
        timer = self._timeout_handle
        if timer is not None and not timer.cancelled() and timer.when() <= self._idle_deadline:
            return  # it fires first, and finds the deadline moved (_idle)
        if timer is not None:
            timer.cancel()
        self._timeout_handle = loop.call_at(self._idle_deadline, self._idle)

    def _idle(self) -> None:
        loop = self.loop  # type: ignore[attr-defined]
        if loop.time() < self._idle_deadline:
            self._timeout_handle = loop.call_at(self._idle_deadline, self._idle)
        else:
            self._timeout_cb()

    def _timeout_cb(self) -> None:
        # RFC 5321 4.5.3.2: a server may close an idle session; a 421 tells the client why (aiosmtpd
        # would hang up silently). Its timer restarts on each command, not on each DATA line.
        transport = self.transport  # type: ignore[attr-defined]
        if transport is not None and not transport.is_closing():
            transport.write(b"421 4.4.2 Idle too long, closing connection\r\n")
        super()._timeout_cb()  # type: ignore[misc]


class LimitedSMTP(_Limited, SMTP):
    pass


class LimitedLMTP(_Limited, LMTP):
    pass


def command_budget(per_session: int) -> dict[str, int]:
    """How often each command may be used in one session: small budgets for the chatter a client never
    needs much of (a session spinning on NOOP or VRFY is an attack), `per_session` for the mail commands."""
    chatter = {"EHLO": 10, "HELO": 10, "LHLO": 10, "NOOP": 50, "VRFY": 10, "EXPN": 10, "HELP": 10, "STARTTLS": 2}
    return {**chatter, "*": per_session}


def tls_context(config: SmtpConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def start(
    handler: Handler, config: SmtpConfig, *, host: str | None = None, port: int | None = None
) -> asyncio.Server:
    """Listen with loop.create_server (works with port 0, unlike aiosmtpd's threaded Controller)."""
    protocol_class = LimitedLMTP if config.protocol == "lmtp" else LimitedSMTP
    limits = SessionLimits(config.max_sessions, config.max_sessions_per_client)
    context = tls_context(config)

    def factory() -> Any:
        protocol = protocol_class(
            handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=handler.hostname,  # never socket.getfqdn(): a blocking DNS query per connection
            ident="mailbot",
            tls_context=context,
            require_starttls=config.require_starttls,
            timeout=config.timeout.total_seconds(),
            command_call_limit=command_budget(config.max_commands),
        )
        protocol.limits = limits
        return protocol

    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host=host or config.host, port=config.port if port is None else port)
