"""The operator's endpoint of a running daemon (`[metrics] listen`), asked over real HTTP: /metrics in the
Prometheus text format, /healthz, /readyz."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from mailbot.app import App
from mailbot.config import from_mapping
from mailbot.daemon import Daemon
from mailbot.door import door_of
from mailbot.errors import ConfigError
from mailbot.store import inbound as inbound_store
from mailbot.store import overview
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket
from tests.mailers import lmtp_send, message
from tests.world import World

Start = Callable[..., Any]
METRICS = {"metrics": {"listen": "127.0.0.1:0"}}
# INTERFACE.md, "Operations": at least these, with these names.
REQUIRED = {
    "mailbot_inbound_accepted_total", "mailbot_intake_outcomes_total", "mailbot_inbound_pending",
    "mailbot_inbound_oldest_pending_seconds", "mailbot_outbox_sent_total", "mailbot_outbox_due",
    "mailbot_outbox_oldest_due_seconds", "mailbot_tickets", "mailbot_sla_at_risk", "mailbot_sla_breached",
    "mailbot_accept_seconds_bucket", "mailbot_accept_seconds_count", "mailbot_accept_seconds_sum",
}


def endpoint_port(daemon: Daemon) -> int:
    assert daemon.endpoint is not None
    return int(daemon.endpoint.sockets[0].getsockname()[1])


async def get(daemon: Daemon, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one real HTTP request, made off the event loop."""

    def request() -> tuple[int, str, str]:
        url = f"http://127.0.0.1:{endpoint_port(daemon)}{path}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as answer:
                return answer.status, answer.headers["Content-Type"], answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read().decode()

    return await asyncio.to_thread(request)


async def scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and labels."""
    status, content_type, body = await get(daemon, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class TestConfig:
    def test_off_unless_listen_is_set(self, make_config: Callable[..., Any]) -> None:
        assert make_config().metrics.address is None

    @pytest.mark.parametrize(("listen", "address"), [
        ("127.0.0.1:9187", ("127.0.0.1", 9187)), ("[::1]:9187", ("::1", 9187)), ("0.0.0.0:9187", ("0.0.0.0", 9187)),
        (":9187", ("127.0.0.1", 9187)), ("9187", ("127.0.0.1", 9187)),
    ])
    def test_listen(self, make_config: Callable[..., Any], listen: str, address: tuple[str, int]) -> None:
        assert make_config({"metrics": {"listen": listen}}).metrics.address == address

    @pytest.mark.parametrize("listen", ["", "127.0.0.1:http", "127.0.0.1:70000", "metrics.example:9187"])
    def test_bad_listen_is_one_line_naming_the_key(self, listen: str) -> None:
        with pytest.raises(ConfigError) as refused:
            from_mapping({"metrics": {"listen": listen}}, "config.toml")
        assert str(refused.value).startswith("config.toml: metrics.listen: ") and "\n" not in str(refused.value)

    def test_door_names(self) -> None:
        assert [door_of(s) for s in ("smtp", "lmtp", "imap:ana@127.0.0.1:143/INBOX", "cli")] == [
            "smtp", "lmtp", "imap", "ingest"]


class TestMetrics:
    async def test_each_outcome_is_counted_under_its_action(self, world: Start) -> None:
        """A reply threads, the same message again is a duplicate, a stranger's is held: one count each."""
        service: World = await world(METRICS)
        first = message(message_id="<o1@lincoln.example>")
        await service.send(first)
        await service.settle()
        await service.send(first)  # an MTA's redelivery
        await service.send(message(message_id="<o2@lincoln.example>", headers={"In-Reply-To": "<o1@lincoln.example>"}))
        await service.send(message(sender="Eve <eve@elsewhere.example>", subject="Hi"), mail_from="eve@elsewhere.example")
        await service.settle()
        samples = await scrape(service.daemon)
        counts = {a: value(samples, "mailbot_intake_outcomes_total", action=a) for a in
                  ("created", "threaded", "duplicate", "held", "failed")}
        assert counts == {"created": 1, "threaded": 1, "duplicate": 1, "held": 1, "failed": 0}

    async def test_mail_in_and_out_is_counted(self, world: Start) -> None:
        service: World = await world(METRICS)
        await service.send(message())
        await service.settle()
        samples = await scrape(service.daemon)
        assert REQUIRED <= {name for name, _ in samples}
        assert value(samples, "mailbot_inbound_accepted_total", door="smtp") == 1
        assert [value(samples, "mailbot_inbound_accepted_total", door=d) for d in ("lmtp", "imap", "ingest")] == [0] * 3
        assert value(samples, "mailbot_intake_outcomes_total", action="created") == 1
        assert value(samples, "mailbot_intake_outcomes_total", action="failed") == 0
        assert value(samples, "mailbot_outbox_sent_total", kind="confirmation") == 1
        assert value(samples, "mailbot_accept_seconds_count") == 1
        assert 0 < value(samples, "mailbot_accept_seconds_sum") < 10
        assert value(samples, "mailbot_accept_seconds_bucket", le="+Inf") == 1
        assert value(samples, "mailbot_tickets", status="new") == 1
        assert value(samples, "mailbot_tickets", status="held") == 0
        assert value(samples, "mailbot_inbound_pending") == 0 and value(samples, "mailbot_outbox_due") == 0
        now = service.app.clock.now()
        assert value(samples, "mailbot_last_received_timestamp_seconds") == now.timestamp()
        assert value(samples, "mailbot_database_up") == 1

    async def test_lmtp_is_its_own_door(self, world: Start) -> None:
        service: World = await world({**METRICS, "smtp": {"protocol": "lmtp"}})
        replies = await asyncio.to_thread(
            lmtp_send, service.port, message(), mail_from="ana@lincoln.example", rcpt=("herosupport@schoolmint.com",)
        )
        assert [code for code, _ in replies] == [250]
        samples = await scrape(service.daemon)
        assert value(samples, "mailbot_inbound_accepted_total", door="lmtp") == 1
        assert value(samples, "mailbot_inbound_accepted_total", door="smtp") == 0
        assert value(samples, "mailbot_accept_seconds_count") == 1

    async def test_gauges_read_the_database_as_status_does(self, world: Start) -> None:
        """A backlog leased by another instance, a relay failing, SLA findings: each gauge says what
        `mailbot status` says (mailbot.store.overview), with the ages taken from the injected clock."""
        service: World = await world(METRICS)
        await service.send(message(message_id="<g1@lincoln.example>"))
        await service.send(message(message_id="<g2@lincoln.example>"))
        await service.settle()
        app, now = service.app, service.app.clock.now()

        def seed(session: Any) -> None:
            [leased] = inbound_store.insert_many(
                session, [inbound_store.RawMessage(message(), "smtp", "ana@lincoln.example")], now - timedelta(minutes=10)
            )
            session.execute(update(InboundMessage).where(InboundMessage.id == leased)
                            .values(claimed_until=now + timedelta(hours=1)))
            session.execute(update(OutboxItem).where(OutboxItem.ticket_id == 1).values(
                status="pending", sent_at=None, last_error="421 try again later", due_at=now - timedelta(minutes=5),
                next_attempt_at=now - timedelta(minutes=1), claimed_until=now + timedelta(hours=1)))
            session.execute(update(Ticket).where(Ticket.id == 1).values(sla_breach="AT RISK: introduction due ..."))
            session.execute(update(Ticket).where(Ticket.id == 2).values(
                sla_breach="BREACHED: confirmation late (due ...); AT RISK: introduction due ..."))

        app.db.call(seed)
        samples = await scrape(service.daemon)
        status = app.db.call(overview.read, now).to_json()
        assert status["inbound"] == {"pending": 1, "oldest_pending_seconds": 600.0, "failed": 0}
        assert status["outbox"] == {"due": 1, "oldest_due_seconds": 300.0, "failing": 1, "refused": 0}
        assert status["sla"] == {"at_risk": 2, "breached": 1}
        assert value(samples, "mailbot_inbound_pending") == 1
        assert value(samples, "mailbot_inbound_oldest_pending_seconds") == 600
        assert value(samples, "mailbot_outbox_due") == 1
        assert value(samples, "mailbot_outbox_oldest_due_seconds") == 300
        assert value(samples, "mailbot_outbox_failing") == 1
        assert value(samples, "mailbot_sla_at_risk") == 2 and value(samples, "mailbot_sla_breached") == 1
        assert {s: value(samples, "mailbot_tickets", status=s) for s in status["tickets"]} == status["tickets"]


class TestProbes:
    async def test_healthy_and_ready(self, world: Start) -> None:
        service: World = await world(METRICS)
        assert await get(service.daemon, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert await get(service.daemon, "/readyz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert (await get(service.daemon, "/readyz", method="HEAD"))[0] == 200

    async def test_not_ready_while_the_database_does_not_answer(self, world: Start, sqlite_url: str) -> None:
        service: World = await world({**METRICS, "database": {"lock_timeout": "200ms"}})
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holding the database
        try:
            status, _, body = await get(service.daemon, "/readyz")
            assert status == 503 and body.startswith("the database is unreachable: ") and body.count("\n") == 1
            assert (await get(service.daemon, "/healthz"))[0] == 200  # alive all the same
            metrics = (await get(service.daemon, "/metrics"))[2]
            assert "mailbot_database_up 0.0" in metrics and "mailbot_inbound_accepted_total" in metrics
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (await get(service.daemon, "/readyz"))[0] == 200

    async def test_a_dead_loop_is_unhealthy(self, world: Start) -> None:
        service: World = await world(METRICS)
        [intake] = [t for t in service.daemon.work.tasks if t.get_name() == "intake"]
        intake.cancel()
        await asyncio.gather(intake, return_exceptions=True)
        assert await get(service.daemon, "/healthz") == (503, "text/plain; charset=utf-8", "intake stopped\n")
        assert (await get(service.daemon, "/readyz"))[2] == "intake stopped\n"

    async def test_not_ready_while_stopping(self, world: Start) -> None:
        service: World = await world(METRICS)
        service.daemon.stopping.set()
        assert await get(service.daemon, "/readyz") == (503, "text/plain; charset=utf-8", "stopping\n")

    async def test_a_silent_client_blocks_nobody(self, world: Start) -> None:
        service: World = await world(METRICS)
        with socket.create_connection(("127.0.0.1", endpoint_port(service.daemon))):  # says nothing
            assert (await get(service.daemon, "/healthz"))[0] == 200

    async def test_other_paths_and_methods(self, world: Start) -> None:
        service: World = await world(METRICS)
        assert (await get(service.daemon, "/"))[0] == 404
        assert (await get(service.daemon, "/metrics", method="POST"))[0] == 405


class TestStart:
    async def test_off_by_default(self, world: Start) -> None:
        service: World = await world()
        assert service.daemon.endpoint is None and service.daemon.metrics is None

    async def test_a_port_in_use_is_one_line(self, make_app: Callable[..., App]) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            daemon = Daemon(make_app({"metrics": {"listen": f"127.0.0.1:{port}"}}))
            with pytest.raises(ConfigError) as refused:
                await daemon.start()
        assert str(refused.value) == f"metrics.listen: cannot listen on 127.0.0.1:{port}: Address already in use"
        assert daemon.servers == [] and daemon.tasks == []  # refused before any mail was taken
