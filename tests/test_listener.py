"""The SMTP/LMTP door, end to end: a real aiosmtpd listener, a real SMTP client, a real database."""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from mailbot.store.schema import InboundMessage, Ticket
from tests.mailers import lmtp_send, message, smtp_send


class TestSmtp:
    async def test_message_becomes_ticket_with_confirmation(self, running, db_url: str, tmp_path: Path) -> None:
        """A customer's mail is stored before 250, becomes a ticket, and its confirmation lands in the maildir."""
        service = await running(db=db_url)
        raw = message(message_id="<first@lincoln.example>")
        refused = await asyncio.to_thread(smtp_send, service.port, raw)
        assert refused == {}
        assert service.count(InboundMessage) == 1  # durably stored by the time 250 came back
        await service.settle()
        for _ in range(200):
            sent = list((tmp_path / "sent" / "new").glob("*"))
            if sent:
                break
            await asyncio.sleep(0.05)
        assert len(sent) == 1
        confirmation = sent[0].read_bytes()
        assert b"In-Reply-To: <first@lincoln.example>" in confirmation
        assert b"[Ticket #1]" in confirmation
        assert b"To: Ana Diaz <ana@lincoln.example>" in confirmation
        stored = service.app.db.call(lambda s: s.scalars(select(InboundMessage)).one())
        assert stored.raw.startswith(b"Received: from ") and stored.raw.endswith(raw)  # the bytes as sent

    async def test_foreign_recipient_refused(self, running) -> None:
        """Never an open relay: RCPT for anyone but the support address gets 550."""
        service = await running()
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await asyncio.to_thread(smtp_send, service.port, message(), rcpt=("someone@elsewhere.example",))
        assert refused.value.recipients["someone@elsewhere.example"][0] == 550
        assert service.count(InboundMessage) == 0

    async def test_plus_form_accepted(self, running) -> None:
        service = await running()
        await asyncio.to_thread(smtp_send, service.port, message(), rcpt=("HeroSupport+billing@SchoolMint.com",))
        assert service.count(InboundMessage) == 1

    async def test_oversize_refused_with_552(self, running) -> None:
        service = await running({"smtp": {"max_message_size": 2000}})

        def session() -> tuple[str, int]:
            with smtplib.SMTP("127.0.0.1", service.port) as client:
                client.ehlo()
                advertised = client.esmtp_features["size"]
                try:
                    client.sendmail("ana@lincoln.example", ["herosupport@schoolmint.com"], message(body="x" * 5000))
                except smtplib.SMTPDataError as refused:
                    return advertised, refused.smtp_code
                except smtplib.SMTPSenderRefused as refused:  # the client checked SIZE itself
                    return advertised, refused.smtp_code
            return advertised, 250

        advertised, code = await asyncio.to_thread(session)
        assert int(advertised) == 2000
        assert code == 552
        assert service.count(InboundMessage) == 0

    async def test_oversize_refused_after_data(self, running) -> None:
        """A client that ignores SIZE still gets 552 once DATA exceeds the limit, and nothing is stored."""
        service = await running({"smtp": {"max_message_size": 2000}})

        def session() -> int:
            with smtplib.SMTP("127.0.0.1", service.port) as client:
                client.helo()  # plain HELO: the client sends no SIZE parameter
                client.mail("ana@lincoln.example")
                client.rcpt("herosupport@schoolmint.com")
                code, _ = client.data(message(body=("x" * 70 + "\n") * 80))
                return code

        assert await asyncio.to_thread(session) == 552
        assert service.count(InboundMessage) == 0

    async def test_extensions_advertised(self, running) -> None:
        service = await running()

        def features() -> dict[str, str]:
            with smtplib.SMTP("127.0.0.1", service.port) as client:
                client.ehlo()
                return dict(client.esmtp_features)

        assert {"8bitmime", "smtputf8", "size"} <= set(await asyncio.to_thread(features))

    async def test_duplicate_message_id_one_ticket(self, running, db_url: str) -> None:
        """The same Message-ID delivered twice (an MTA retry) is stored twice but makes one ticket."""
        service = await running(db=db_url)
        raw = message(message_id="<twice@lincoln.example>")
        await asyncio.to_thread(smtp_send, service.port, raw)
        await asyncio.to_thread(smtp_send, service.port, raw)
        await service.settle()
        for _ in range(100):
            actions = service.app.db.call(lambda s: sorted(s.scalars(select(InboundMessage.action)).all(), key=str))
            if None not in actions:
                break
            await asyncio.sleep(0.05)
        assert actions == ["created", "duplicate"]
        assert service.count(Ticket) == 1

    async def test_missing_message_id_deduplicated_by_content(self, running) -> None:
        service = await running()
        raw = b"From: ana@lincoln.example\r\nTo: herosupport@schoolmint.com\r\nSubject: no id\r\n\r\nhello\r\n"
        app = service.app
        first = app.processor.process_one(app.db.call(_insert, raw, app.clock.now()))
        second = app.processor.process_one(app.db.call(_insert, raw, app.clock.now()))
        assert (first.action, second.action) == ("created", "duplicate")

    async def test_mail_over_the_parse_limits_becomes_a_ticket(self, running) -> None:
        """Mail nested past the parse limits is accepted, stored, and read as far as it can be: a ticket."""
        service = await running()
        hostile = b"From: x@lincoln.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + (
            b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" * 600
        )
        await asyncio.to_thread(smtp_send, service.port, hostile)
        for _ in range(100):
            row = service.app.db.call(lambda s: s.scalars(select(InboundMessage)).one())
            if row.status != "pending":
                break
            await asyncio.sleep(0.05)
        assert (row.status, row.error) == ("processed", None) and row.ticket_id is not None  # held: no contact
        assert row.raw.endswith(hostile)

    async def test_storage_failure_answers_451(self, running, sqlite_url: str) -> None:
        """When the database cannot commit, the client is told to retry (451), never 250, never 5xx."""
        service = await running({"database": {"lock_timeout": "200ms"}})
        path = sqlite_url.split(":///", 1)[1]
        blocker = sqlite3.connect(path, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        try:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                await asyncio.to_thread(smtp_send, service.port, message())
            assert refused.value.smtp_code == 451
        finally:
            blocker.rollback()
            blocker.close()
        await asyncio.to_thread(smtp_send, service.port, message())  # and it recovers
        assert service.count(InboundMessage) == 1


class TestLmtp:
    async def test_the_socket_is_paused_only_past_a_large_buffer(self, running, monkeypatch) -> None:
        """Flow control stays (a sender that outruns us is paused), but not for every message over twice
        the line length limit: that pause and resume cost the doors a tenth of their CPU (issue 13)."""
        from asyncio.selector_events import _SelectorSocketTransport

        pauses: list[int] = []
        pause = _SelectorSocketTransport.pause_reading

        def counted(transport: _SelectorSocketTransport) -> None:
            pauses.append(len(transport._protocol._stream_reader._buffer))  # type: ignore[attr-defined]
            pause(transport)

        monkeypatch.setattr(_SelectorSocketTransport, "pause_reading", counted)
        service = await running()
        await asyncio.to_thread(smtp_send, service.port, message(body="question " * 1000))  # 10 KB
        assert pauses == []
        await asyncio.to_thread(smtp_send, service.port, message(body="question\r\n" * 100_000))  # 1 MB
        assert pauses and min(pauses) > 64 * 1024
        assert service.count(InboundMessage) == 2

    async def test_one_reply_per_recipient(self, running) -> None:
        """RFC 2033: after DATA, one reply for each accepted recipient."""
        service = await running({"smtp": {"protocol": "lmtp"}})
        replies = await asyncio.to_thread(
            lmtp_send,
            service.port,
            message(),
            mail_from="ana@lincoln.example",
            rcpt=("herosupport@schoolmint.com", "herosupport+urgent@schoolmint.com", "stranger@elsewhere.example"),
        )
        assert [code for code, _ in replies] == [250, 250]
        assert service.count(InboundMessage) == 1


def _insert(session, raw: bytes, now: datetime) -> int:  # type: ignore[no-untyped-def]
    from mailbot.store.inbound import RawMessage, insert_many

    return insert_many(session, [RawMessage(raw, "test")], now)[0]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


class TestStarttls:
    async def test_starttls_offered_and_required(self, running, certificate: tuple[Path, Path]) -> None:
        """With require_starttls, MAIL before STARTTLS gets 530; after it, mail is accepted over TLS."""
        import ssl

        cert, key = certificate
        service = await running({"smtp": {"tls_cert": str(cert), "tls_key": str(key), "require_starttls": True}})

        def session() -> tuple[int, bool]:
            with smtplib.SMTP("127.0.0.1", service.port) as client:
                client.ehlo()
                offered = client.has_extn("starttls")
                code, _ = client.mail("ana@lincoln.example")
                context = ssl.create_default_context(cafile=str(cert))
                context.check_hostname = False
                client.starttls(context=context)
                client.ehlo()
                client.sendmail("ana@lincoln.example", ["herosupport@schoolmint.com"], message())
                return code, offered

        code, offered = await asyncio.to_thread(session)
        assert offered and code == 530
        stored = service.app.db.call(lambda s: s.scalars(select(InboundMessage)).one())
        assert b"with ESMTPS" in stored.raw.split(b"\r\n\r\n", 1)[0]
