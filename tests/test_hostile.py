"""Deliberately broken and malicious mail over real SMTP: each message is refused with a clear code or accepted
and stored (then a ticket, or a failed ingest), the daemon keeps serving, and sessions stay within limits.

The small nasty messages live in tests/data/hostile_*.eml; the big ones are built here (deep nesting,
100,000 parts, 20,000 header fields, a 1 MB line), as they would be in an attack.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from mailbot.automatic import automatic_reason, may_auto_reply_to
from mailbot.bounces import read_bounce
from mailbot.intake import reading as intake_module
from mailbot.loops import Opening
from mailbot.parse import UnparseableMessage, parse
from mailbot.store.schema import Attachment, Blob, InboundMessage, Ticket, TicketMessage
from tests.mailers import message
from tests.realworld import CASES
from tests.world import CUSTOMER, SUPPORT, World, raw_session, until

DATA = Path(__file__).parent / "data"
HEAD = b"From: Ana Diaz <ana@lincoln.example>\r\nTo: herosupport@schoolmint.com\r\nSubject: hostile\r\n"


def deep_nesting(levels: int = 5000) -> bytes:
    part = b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    return HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + part * levels


def many_parts(count: int = 100_000) -> bytes:
    return HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * count + b"--b--\r\n"


def many_headers(count: int = 20_000) -> bytes:
    return HEAD + b"".join(b"X-Filler-%d: v\r\n" % i for i in range(count)) + b"\r\nbody\r\n"


def long_line(size: int = 1_000_000) -> bytes:
    return HEAD + b"\r\n" + b"a" * size + b"\r\n"


# name -> (raw message, what must become of it): "ticket" (read in full, or degraded past the parse limits) or an
# SMTP code.
HOSTILE: dict[str, tuple[Callable[[], bytes], str | int]] = {
    "5,000 levels of nesting": (deep_nesting, "ticket"),
    "100,000 parts": (many_parts, "ticket"),
    "20,000 header fields": (many_headers, "ticket"),
    "a 1 MB line": (long_line, 500),
    "NUL bytes": (lambda: (DATA / "hostile_nul_bytes.eml").read_bytes(), "ticket"),
    "invalid UTF-8": (lambda: (DATA / "hostile_invalid_utf8.eml").read_bytes(), "ticket"),
    "unknown charsets": (lambda: (DATA / "hostile_unknown_charset.eml").read_bytes(), "ticket"),
    "broken MIME": (lambda: (DATA / "hostile_broken_mime.eml").read_bytes(), "ticket"),
    "attachment names with paths": (lambda: (DATA / "hostile_path_attachment.eml").read_bytes(), "ticket"),
    "a zip attachment": (lambda: (DATA / "hostile_zip_attachment.eml").read_bytes(), "ticket"),
}


def deliver(port: int, raw: bytes) -> int:
    """The final SMTP code of one delivery (250 when accepted)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        try:
            client.sendmail(CUSTOMER, [SUPPORT], raw)
        except smtplib.SMTPDataError as refused:
            return refused.smtp_code
    return 250


async def still_serving(service: World) -> None:
    """A normal message right after: accepted and made into a ticket."""
    tickets = service.count(Ticket)
    await service.send(message(subject="Normal question"))
    await until(lambda: service.count(Ticket) == tickets + 1, "the normal message's ticket")


class TestHostileMessages:
    @pytest.mark.parametrize("name", list(HOSTILE))
    async def test_refused_or_stored_and_still_serving(self, world, name: str) -> None:
        service: World = await world()
        build, expected = HOSTILE[name]
        raw = build()
        code = await asyncio.to_thread(deliver, service.port, raw)
        await service.settle()
        rows = service.inbound()
        if isinstance(expected, int):
            assert code == expected and rows == []
        else:
            assert code == 250
            [row] = rows
            assert row.raw.endswith(raw)  # kept byte for byte, whatever becomes of it
            assert (row.status, row.action) == ("processed", "created")
        await still_serving(service)

    async def test_attachments_are_stored_as_sent_and_never_unpacked(self, world, tmp_path: Path) -> None:
        """A path in a file name names nothing on disk; a zip is kept as the bytes that came, one attachment."""
        service: World = await world()
        before = sorted(tmp_path.rglob("*"))
        for name in ("hostile_path_attachment.eml", "hostile_zip_attachment.eml"):
            await service.send((DATA / name).read_bytes())
        await service.settle()
        rows = service.app.db.call(
            lambda s: [(a.filename, a.content_type, a.size, s.get_one(Blob, a.sha256).data) for a in s.scalars(
                select(Attachment).order_by(Attachment.id))]
        )
        assert [(name, kind) for name, kind, _, _ in rows] == [
            ("passwd", "application/octet-stream"),
            ("bashrc.txt", "application/octet-stream"),
            ("hosts", "application/octet-stream"),
            ("logs.zip", "application/zip"),
        ]
        zipped = rows[-1][3]
        assert zipped.startswith(b"PK\x03\x04") and len(zipped) == rows[-1][2] < 2000  # still compressed
        created = [p for p in sorted(tmp_path.rglob("*")) if p not in before and "sent" not in p.parts]
        assert all(p.name.startswith("mailbot.db") for p in created), created  # nothing unpacked or written

    async def test_parsing_happens_off_the_event_loop(self, world, monkeypatch: pytest.MonkeyPatch) -> None:
        """The listener only stores bytes; the parser runs on a worker thread with no event loop."""
        threads: list[tuple[str, bool]] = []
        real_read = intake_module.read_message

        def watched(raw: bytes, limits):  # type: ignore[no-untyped-def]
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            threads.append((threading.current_thread().name, on_loop))
            return real_read(raw, limits)

        monkeypatch.setattr(intake_module, "read_message", watched)
        service: World = await world()
        await service.send(message())
        await service.settle()
        assert threads and all(not on_loop and name != threading.main_thread().name for name, on_loop in threads)


def nested_text(levels: int = 200) -> bytes:
    """MIME nested `levels` deep, each level with its own boundary, and the only text at the bottom."""
    out = HEAD + b"Message-ID: <deep.200@lincoln.example>\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for level in range(1, levels):
        out += b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (level - 1, level)
    return out + b"--b%d\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe gradebook will not open.\r\n" % (
        levels - 1
    )


def header_flood(count: int = 2000, head: bytes = HEAD) -> bytes:
    return head + b"Message-ID: <flood.2000@lincoln.example>\r\n" + b"".join(
        b"X-Filler-%d: v\r\n" % i for i in range(count)
    ) + b"\r\nThe export button does nothing.\r\n"


class TestDegradedReading:
    """Structure past the parse limits still makes a ticket from what can be read, end to end over SMTP."""

    @pytest.mark.parametrize(
        ("build", "text"),
        [(nested_text, "The gradebook will not open."), (header_flood, "The export button does nothing.")],
        ids=["MIME nested 200 deep", "2,000 header fields"],
    )
    async def test_an_entitled_sender_gets_a_ticket_and_a_confirmation(self, world, build, text: str) -> None:  # type: ignore[no-untyped-def]
        service: World = await world()
        raw = build()
        await service.send(raw)
        await service.settle()
        [row] = service.inbound()
        assert (row.status, row.action) == ("processed", "created"), service.describe()
        ticket = service.ticket(row.ticket_id)
        assert (ticket.status, ticket.requester, ticket.subject) == ("new", CUSTOMER, "hostile")
        message_text, kept = service.app.db.call(
            lambda s: (
                s.scalars(select(TicketMessage.text).where(TicketMessage.inbound_id == row.id)).one(),
                [(a.filename, s.get_one(Blob, a.sha256).data) for a in s.scalars(select(Attachment))],
            )
        )
        assert message_text == text
        assert kept == [("original.eml", row.raw)]  # the whole message, as it came, for the specialist
        confirmations = [o for o in service.outbox() if o.kind == "confirmation"]
        assert [o.status for o in confirmations] == ["sent"]
        assert any(CUSTOMER in m.rcpt_tos for m in service.wire)

    async def test_an_ambiguous_sender_is_held_and_not_answered(self, world) -> None:
        """Two From fields in a degraded message: shown, never trusted, so held and nobody is answered."""
        service: World = await world()
        head = b"From: Eve <eve@evil.example>\r\n" + HEAD
        await service.send(header_flood(head=head))
        await service.settle()
        [row] = service.inbound()
        ticket = service.ticket(row.ticket_id)
        assert ticket.status == "held" and ticket.requester == "eve@evil.example"
        assert ticket.held_reason == "unknown-sender"
        assert service.wire == []


SMUGGLE_ENDINGS = [b"\n.\r\n", b"\n.\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r"]


class TestSmuggling:
    @pytest.mark.parametrize("ending", SMUGGLE_ENDINGS, ids=[repr(e) for e in SMUGGLE_ENDINGS])
    async def test_a_false_end_of_data_never_splits_a_message(self, world, ending: bytes) -> None:
        """RFC 5321 4.1.1.4: only CRLF.CRLF ends DATA. A smuggled second transaction stays inside the first,
        which is refused whole for its bare line end (issue 12), with one reply and nothing stored."""
        service: World = await world()
        smuggled = (
            b"MAIL FROM:<evil@evil.example>\r\nRCPT TO:<herosupport@schoolmint.com>\r\nDATA\r\n"
            b"From: evil@evil.example\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
        )
        session = (
            b"EHLO client.example\r\nMAIL FROM:<ana@lincoln.example>\r\nRCPT TO:<herosupport@schoolmint.com>\r\nDATA\r\n"
            + HEAD + b"\r\nfirst body" + ending + smuggled + b".\r\nQUIT\r\n"
        )
        replies = await asyncio.to_thread(raw_session, service.port, session)
        assert replies.count(b"\r\n550 5.5.2 Error: bare <") == 1 and b"221" in replies
        assert b"queued as" not in replies
        await service.settle()
        assert service.inbound() == [] and service.count(Ticket) == 0


class TestSessionLimits:
    async def test_too_many_recipients_get_452(self, world) -> None:
        service: World = await world({"smtp": {"max_recipients": 3}})

        def session() -> list[int]:
            with smtplib.SMTP("127.0.0.1", service.port, timeout=10) as client:
                client.ehlo()
                client.mail(CUSTOMER)
                return [client.rcpt(f"herosupport+{i}@schoolmint.com")[0] for i in range(5)]

        assert await asyncio.to_thread(session) == [250, 250, 250, 452, 452]

    @pytest.mark.parametrize(
        ("limits", "reply"),
        [({"max_sessions": 2}, b"421 4.3.2"), ({"max_sessions_per_client": 2}, b"421 4.7.0")],
        ids=["total", "per-client"],
    )
    async def test_one_session_too_many_gets_421(self, world, limits: dict[str, int], reply: bytes) -> None:
        service: World = await world({"smtp": limits})

        def welcomed() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
            assert sock.recv(1024).startswith(b"220")
            return sock

        held = [await asyncio.to_thread(welcomed) for _ in range(2)]
        try:
            refused = await asyncio.to_thread(raw_session, service.port, b"")
            assert refused.startswith(reply)
        finally:
            for sock in held:
                sock.close()
        for _ in range(100):  # the daemon counts the closed sessions out as it notices them
            if await asyncio.to_thread(greets, service.port):
                break
            await asyncio.sleep(0.02)
        await still_serving(service)

    async def test_command_flood_gets_421(self, world) -> None:
        """1,000 NOOPs in one session: answered 50 times, then 421 and the connection closes."""
        service: World = await world()
        replies = await asyncio.to_thread(raw_session, service.port, b"EHLO flood.example\r\n" + b"NOOP\r\n" * 1000)
        lines = replies.split(b"\r\n")
        assert lines.count(b"250 OK") == 50
        assert b"421 4.7.0 NOOP sent too many times" in lines
        await still_serving(service)

    async def test_unknown_commands_end_the_session(self, world) -> None:
        service: World = await world()
        replies = await asyncio.to_thread(raw_session, service.port, b"HELO x\r\n" + b"XYZZY\r\n" * 20)
        assert b"502 5.5.1 Too many unrecognized commands" in replies

    async def test_overlong_command_line_gets_500(self, world) -> None:
        service: World = await world()
        replies = await asyncio.to_thread(raw_session, service.port, b"HELO " + b"x" * 5000 + b"\r\nQUIT\r\n")
        assert b"500 Command line too long" in replies and b"221" in replies

    async def test_idle_session_is_closed_with_421(self, world) -> None:
        """An idle client is told 421 and disconnected after smtp.timeout; it is not left hanging."""
        service: World = await world({"smtp": {"timeout": "300ms"}})

        def idle() -> bytes:
            with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
                chunks = []
                while chunk := sock.recv(1024):
                    chunks.append(chunk)
                return b"".join(chunks)

        replies = await asyncio.to_thread(idle)
        assert replies.startswith(b"220") and replies.endswith(b"421 4.4.2 Idle too long, closing connection\r\n")
        await still_serving(service)

    async def test_each_command_moves_the_idle_deadline(self, world) -> None:
        """A client that keeps talking is served past the timeout; once it stops, it gets the 421 no sooner
        than the timeout after its last command."""
        service: World = await world({"smtp": {"timeout": "1s"}})

        def talking() -> tuple[list[bytes], float]:
            with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
                reader = sock.makefile("rb")
                answers = [reader.readline()]
                for _ in range(6):  # 1.8 s in all: past the timeout, never idle for as long
                    time.sleep(0.3)
                    sock.sendall(b"NOOP\r\n")
                    answers.append(reader.readline())
                last = time.monotonic()
                answers.append(reader.readline())
                return answers, time.monotonic() - last

        answers, idle = await asyncio.to_thread(talking)
        assert answers[0].startswith(b"220") and all(a.startswith(b"250") for a in answers[1:-1])
        assert answers[-1] == b"421 4.4.2 Idle too long, closing connection\r\n" and idle >= 0.9


def greets(port: int) -> bool:
    """Whether a new connection is welcomed (220) rather than turned away."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(1024).startswith(b"220")


# Messages to mutate: tests/data's real-world shapes (bounces, auto-replies, people) and hostile ones, and the
# real-world classes tests/realworld.py builds (CJK charsets, broken header blocks and From fields, winmail.dat).
CORPUS = [p.read_bytes() for p in sorted(DATA.glob("*.eml"))] + [case.raw for case in CASES]
HOSTILE_FILES = [p for p in DATA.glob("hostile_*.eml")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A corpus message with random damage: bytes flipped, inserted, cut, or header lines repeated."""
    raw = bytearray(CORPUS[draw(st.integers(0, len(CORPUS) - 1))])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        action = draw(st.sampled_from(["flip", "insert", "cut", "repeat"]))
        if action == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = draw(st.binary(max_size=64) | st.sampled_from([b"\r\n", b"=?", b"?=", b"--", b"\x00", b"("]))
        elif action == "cut":
            del raw[at : at + draw(st.integers(1, 200))]
        else:
            line_end = raw.find(b"\n", at)
            line_start = raw.rfind(b"\n", 0, at) + 1
            if line_end > line_start:
                raw[line_start:line_start] = bytes(raw[line_start : line_end + 1]) * draw(st.integers(1, 50))
    return bytes(raw)


class TestParserFuzz:
    """Property: damaged mail is parsed or refused with UnparseableMessage, and every automatic-mail rule reads
    whatever comes out without an exception (the intake's own code, not the runner's catch-all, copes)."""

    def test_corpus_is_there(self) -> None:
        assert len(HOSTILE_FILES) >= 6 and len(CORPUS) >= 60

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw=mutated())
    def test_damaged_mail_never_raises(self, raw: bytes) -> None:
        try:
            parsed = parse(raw)
        except UnparseableMessage:
            return
        for envelope in (None, "", CUSTOMER):
            automatic_reason(parsed.message, envelope)
            may_auto_reply_to(parsed.message, envelope)
            Opening.read(parsed.message, envelope, bouncing=False)
        read_bounce(parsed.message)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(raw=mutated())
    def test_intake_decides_damaged_mail(self, app, raw: bytes) -> None:
        """The whole intake (loops, threading, entitlement, tickets) on damaged mail: an outcome, never an error."""
        from mailbot.store.inbound import RawMessage, insert_many

        [inbound_id] = app.db.call(insert_many, [RawMessage(raw, "fuzz", CUSTOMER, (SUPPORT,))], app.clock.now())

        def process(session):  # type: ignore[no-untyped-def]
            return app.intake.process(session, session.get_one(InboundMessage, inbound_id), app.clock.now())

        outcome = app.db.call(process)
        assert outcome.action in {"created", "threaded", "held", "duplicate", "ignored"}
        kept = app.db.call(lambda s: s.scalar(select(TicketMessage.id).where(TicketMessage.inbound_id == inbound_id)))
        assert kept is not None or outcome.action in {"duplicate", "ignored"}
