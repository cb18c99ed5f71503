"""The numbers of /metrics (Prometheus text format, with prometheus_client), in a registry of their own.

Counters count what this process did since it started (each instance its own: Prometheus sums them).
Gauges are set from mailbot.store.overview at each scrape, so every instance on one database reports the
same backlog, tickets and SLA, and `mailbot status` says the same. Built only by a daemon with
`[metrics] listen` set: prometheus_client is not imported by the CLI's commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mailbot.door import DOORS, door_of
from mailbot.store.overview import STATUSES, Overview

ACTIONS = ("created", "threaded", "held", "duplicate", "ignored", "deferred", "failed")
# DATA's end to the 250: a group commit (an fsync) on an idle server, longer when the disk or the database
# is slow or contended. A sending MTA gives up after minutes (RFC 5321 4.5.3.2.6: 10 minutes for DATA).
ACCEPT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Tally(Protocol):
    """What the workers count (the intake's decisions, the sender's deliveries): the metrics themselves,
    or in a worker process the messages that carry them to the parent's (mailbot.workers)."""

    def decided(self, actions: Iterable[str]) -> None: ...

    def delivered(self, kind: str) -> None: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.accepted = Counter(
            "mailbot_inbound_accepted", "Messages stored by a door (250 given)", ["door"], registry=registry
        )
        self.outcomes = Counter(
            "mailbot_intake_outcomes", "What the intake did with stored messages", ["action"], registry=registry
        )
        self.sent = Counter("mailbot_outbox_sent", "Outgoing messages the relay accepted", ["kind"], registry=registry)
        self.accept_seconds = Histogram(
            "mailbot_accept_seconds", "From the end of DATA to the 250 (stored durably)",
            buckets=ACCEPT_BUCKETS, registry=registry,
        )
        for door in DOORS:
            self.accepted.labels(door)
        for action in ACTIONS:
            self.outcomes.labels(action)
        gauge = self._gauge
        self.database_up = gauge("mailbot_database_up", "1 when the last scrape could read the database")
        self.inbound_pending = gauge("mailbot_inbound_pending", "Stored messages the intake has not decided yet")
        self.inbound_oldest = gauge(
            "mailbot_inbound_oldest_pending_seconds", "Age of the oldest undecided message (0: none)"
        )
        self.inbound_failed = gauge("mailbot_inbound_failed", "Messages whose intake failed (mailbot inbound failed)")
        self.outbox_due = gauge("mailbot_outbox_due", "Outgoing messages due now and not sent yet")
        self.outbox_oldest = gauge("mailbot_outbox_oldest_due_seconds", "How long the oldest due message has waited")
        self.outbox_failing = gauge("mailbot_outbox_failing", "Outgoing messages whose last attempt failed")
        self.outbox_refused = gauge("mailbot_outbox_refused", "Outgoing messages the relay refused for good (5xx)")
        self.tickets = Gauge("mailbot_tickets", "Tickets by status", ["status"], registry=registry)
        self.sla_at_risk = gauge("mailbot_sla_at_risk", "Running tickets with a deadline at risk")
        self.sla_breached = gauge("mailbot_sla_breached", "Running tickets with a missed deadline")
        self.last_received = gauge(
            "mailbot_last_received_timestamp_seconds", "When the newest stored message came in (Unix time)"
        )

    def _gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, registry=self.registry)

    def stored(self, sources: Iterable[str]) -> None:
        for source in sources:
            self.accepted.labels(door_of(source)).inc()

    def decided(self, actions: Iterable[str]) -> None:
        for action in actions:
            self.outcomes.labels(action).inc()

    def delivered(self, kind: str) -> None:
        self.sent.labels(kind).inc()

    def add(self, decided: Mapping[str, int], delivered: Mapping[str, int]) -> None:
        """Counts a worker process made (mailbot.workers.Counts)."""
        for action, count in decided.items():
            self.outcomes.labels(action).inc(count)
        for kind, count in delivered.items():
            self.sent.labels(kind).inc(count)

    def observe(self, overview: Overview | None) -> None:
        """Set the gauges from the database's state (None: it could not be read; the gauges keep their values)."""
        self.database_up.set(0 if overview is None else 1)
        if overview is None:
            return
        self.inbound_pending.set(overview.inbound_pending)
        self.inbound_oldest.set(overview.inbound_oldest_pending_seconds or 0)
        self.inbound_failed.set(overview.inbound_failed)
        self.outbox_due.set(overview.outbox_due)
        self.outbox_oldest.set(overview.outbox_oldest_due_seconds or 0)
        self.outbox_failing.set(overview.outbox_failing)
        self.outbox_refused.set(overview.outbox_refused)
        for status in STATUSES:
            self.tickets.labels(status).set(overview.tickets[status])
        self.sla_at_risk.set(overview.sla_at_risk)
        self.sla_breached.set(overview.sla_breached)
        if overview.last_received is not None:
            self.last_received.set(overview.last_received.timestamp())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
