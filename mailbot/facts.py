"""The batch's facts: what the intake's rules look up in the database, loaded once per batch and kept up to
date in memory as the batch's decisions are made.

A batch is decided in one transaction and written at its end (mailbot.store.batch), so what
an earlier message of the batch wrote is not in the database yet when a later one is decided. Every
look-up that could see it goes through these facts instead of the session:

- the messages stored under a Message-ID: the message keys of the batch (is it a duplicate?) and the
  Message-IDs its thread clues name (which ticket does it continue?);
- which tickets exist, of those named by a reply token or a subject reference, and the tickets opened
  in this batch themselves;
- the named contacts among the batch's senders and requesters (entitlement, the registered name a
  confirmation greets, whether the address bounces);
- the mail planned recently to each requester and on each ticket named: the loop governor's counts
  (mailbot.governor);
- which attachments' bytes are stored, so each is stored once;
- the tickets the batch's messages may join, with their messages, and who may write on them (their
  participants: the specialist's address and the requester's colleagues, read when first asked) and the
  specialists who may take one;
- the outgoing messages our own mail coming back and the bounces name (mailbot.loops rules 1 and 2);
- where new tickets' ids come from (mailbot.store.tickets.TicketIds), and the last one allocated;
- the batch's instant, `now`.

`load` reads all of it for the batch's readings in a few set-based statements. Each key is read from the
store once, in `load` or on the first question about a key it did not foresee, and from then on kept
here: every decision tells the facts what it writes (`opened`, `recorded`, `queued`, `bounced`), and an
update about a key not read yet reads it first, so nothing is counted twice or missed, flushed or not.
A rule therefore never needs to know whether it runs inside a batch, and never holds a session: the
intake's rules (mailbot.intake.rules) are pure functions of a reading and these facts. One message
decided alone is a batch of one. Facts belong to one transaction: after a rollback they are thrown away, never reused.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Generic, TypeVar, cast

from sqlalchemy.orm import Session

from mailbot import threads
from mailbot.addresses import key_of
from mailbot.identity import Use
from mailbot.reading import Reading
from mailbot.store import conversations, deliveries, registry
from mailbot.store import tickets as ticket_store
from mailbot.store.deliveries import Sent
from mailbot.store.registry import ContactRecord
from mailbot.store.schema import OutboxItem, Specialist, Ticket, TicketMessage

K = TypeVar("K")
V = TypeVar("V")


class _Cache(Generic[K, V]):
    """Values by key, each read from the store once (`read` takes the missing keys, returns what it found;
    a key it found nothing for gets `empty()`), then kept and updated in memory.

    Read without flushing the session: what it holds unwritten is what the facts were told of, and a flush
    here would make the store count it a second time."""

    def __init__(self, session: Session, read: Callable[[list[K]], dict[K, V]], empty: Callable[[], V]) -> None:
        self._session = session
        self._read = read
        self._empty = empty
        self.values: dict[K, V] = {}
        self._complete = False  # `only`: the values are all there is

    def only(self, values: Mapping[K, V]) -> None:
        """`values` are all there is: nothing else is read (`Facts.given`)."""
        self.values.update(values)
        self._complete = True

    def fill(self, keys: Iterable[K]) -> None:
        missing = [key for key in dict.fromkeys(keys) if key not in self.values]
        if not missing:
            return
        found: dict[K, V] = {}
        if not self._complete:
            with self._session.no_autoflush:
                found = self._read(missing)
        self.values.update({key: found[key] if key in found else self._empty() for key in missing})

    def get(self, key: K) -> V:
        if key not in self.values:  # most questions are about a key read already: no list made for them
            self.fill([key])
        return self.values[key]


def _each(read: Callable[[K], V | None]) -> Callable[[list[K]], dict[K, V]]:
    """A `_Cache` reader from a look-up of one key (for the rare keys: a bounce's message, a ticket's people)."""
    return lambda keys: {key: value for key in keys if (value := read(key)) is not None}


class Facts:
    def __init__(
        self,
        session: Session,
        *,
        counts_from: Collection[datetime] = (),
        now: datetime | None = None,
        ticket_ids: ticket_store.TicketIds | None = None,
    ) -> None:
        """`counts_from`: the instants a count of planned mail may start at (the batch's `now` less each of the
        loop governor's windows, mailbot.governor); none for a caller that counts none. `now`: the batch's
        instant, for the rules that ask it (None for a caller outside the intake). `ticket_ids`: the process's
        source of ticket ids; else one of its own."""
        self.session = session
        self.counts_from = tuple(sorted(set(counts_from)))
        self._now = now
        self._uses = _Cache[str, list[Use]](session, lambda ids: conversations.uses(session, ids), list)
        self._exists = _Cache[int, bool](
            session, lambda ids: dict.fromkeys(conversations.existing(session, ids), True), bool
        )
        self._contacts = _Cache[str, ContactRecord | None](
            session, lambda keys: dict(registry.contact_records(session, keys)), lambda: None
        )
        self._to = _Cache[str, list[Sent]](session, lambda keys: deliveries.sent_to(session, keys, self._cuts()), list)
        self._on = _Cache[int, list[Sent]](session, lambda ids: deliveries.sent_on(session, ids, self._cuts()), list)
        self._opened: dict[int, Ticket] = {}
        self._planned: list[OutboxItem] = []  # the mail this batch queued, in order
        self._tickets: dict[int, Ticket] = {}  # as stored, read in `load`
        self._ticket_ids = ticket_ids or ticket_store.TicketIds()
        self._openers = 1  # how many tickets the batch may open (`load`): how many ids to draw at once
        self._last_ticket_id: int | None = None
        self._stored_blobs = _Cache[str, bool](
            session, lambda hashes: dict.fromkeys(ticket_store.stored_blobs(session, hashes), True), bool
        )
        self._new_blobs: dict[str, bytes] = {}  # attachments this batch stores, by hash
        self._outgoing = _Cache[str, OutboxItem | None](
            session, _each(lambda message_id: deliveries.by_message_id(session, message_id)), lambda: None
        )
        self._specialist_addresses = _Cache[int, str | None](
            session, _each(lambda id_: ticket_store.specialist_address(session, id_)), lambda: None
        )
        self._specialists = _Cache[str, Specialist | None](
            session, _each(lambda address: registry.find_specialist(session, address)), lambda: None
        )
        self._colleagues: dict[int, list[str]] = {}  # by ticket

    @classmethod
    def load(
        cls,
        session: Session,
        readings: Iterable[Reading],
        *,
        now: datetime,
        counts_from: Collection[datetime],
        ticket_ids: ticket_store.TicketIds | None = None,
    ) -> Facts:
        """The facts a batch of `readings` decided at `now` needs, in a few statements."""
        readings = list(readings)
        facts = cls(session, counts_from=counts_from, now=now, ticket_ids=ticket_ids)
        facts._outgoing.fill(
            m for r in readings for m in (
                r.parsed.message_id if r.own else None, r.bounce.original_message_id if r.bounce else None
            ) if m
        )
        facts._uses.fill(m for r in readings for m in (r.key, *r.clues.message_ids))
        named = {t for r in readings for t in r.clues.ticket_ids()}
        facts._exists.fill(named)
        facts._contacts.fill(key for r in readings for a in (r.sender, r.requester) if (key := registry.sender_key(a)))
        facts._to.fill(key_of(r.requester) for r in readings if r.requester)
        threaded = {u.ticket_id for uses in facts._uses.values.values() for u in uses}
        candidates = threaded | {t for t in named if facts._exists.values[t]}
        facts._on.fill(candidates)
        if candidates:  # the tickets the batch may join, with their messages (who may write on them)
            with session.no_autoflush:
                facts._tickets.update({t.id: t for t in ticket_store.many(session, candidates)})
        facts._stored_blobs.fill(a.sha256 for r in readings for a in r.parsed.attachments)
        facts._openers = sum(map(facts._may_open, readings))
        return facts

    def _may_open(self, reading: Reading) -> bool:
        """Whether a message may open a ticket, as far as the facts loaded tell: neither our own mail nor a
        bounce, not stored already, naming no stored message or ticket. Only how many ticket ids to draw at
        once: too few costs a round trip more, too many leaves ids a later batch uses, or skips."""
        if reading.own or reading.bounce is not None or self._uses.values.get(reading.key):
            return False
        clues = reading.clues
        named = any(self._uses.values.get(m) for m in clues.message_ids)
        return not named and not any(self._exists.values.get(t) for t in clues.ticket_ids())

    @classmethod
    def given(
        cls,
        now: datetime,
        *,
        uses: Mapping[str, list[Use]] | None = None,
        tickets: Iterable[Ticket] = (),
        colleagues: Mapping[int, list[str]] | None = None,
        contacts: Mapping[str, ContactRecord] | None = None,
        specialists: Mapping[str, Specialist] | None = None,
        outgoing: Mapping[str, OutboxItem] | None = None,
    ) -> Facts:
        """Facts known in advance, with no store behind them: what is not given does not exist (the
        intake's rules decided in memory, in their unit tests). `contacts` by their address as stored."""
        facts = cls(cast(Session, None), now=now)
        for ticket in tickets:
            facts.opened(ticket)
        facts._exists.only({})
        facts._uses.only(uses or {})
        facts._colleagues.update(colleagues or {})
        facts._contacts.only({key: c for a, c in (contacts or {}).items() if (key := registry.sender_key(a))})
        facts._specialists.only(specialists or {})
        facts._outgoing.only(outgoing or {})
        return facts

    # --- questions -----------------------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        if self._now is None:
            raise ValueError("these facts belong to no batch's instant")
        return self._now

    def uses(self, message_id: str) -> list[Use]:
        """The messages stored (or recorded in this batch) under `message_id`, first use first."""
        return self._uses.get(message_id)

    def owners(self, message_ids: Collection[str]) -> dict[str, list[int]]:
        """The tickets of each of `message_ids` that belongs to conversations, in the order of first use."""
        self._uses.fill(message_ids)
        found = {}
        for message_id in message_ids:
            if tickets := list(dict.fromkeys(u.ticket_id for u in self.uses(message_id))):
                found[message_id] = tickets
        return found

    def existing(self, ticket_ids: Collection[int]) -> set[int]:
        self._exists.fill(ticket_ids)
        return {ticket_id for ticket_id in ticket_ids if self._exists.values[ticket_id]}

    def ticket(self, ticket_id: int) -> Ticket | None:
        """The ticket with its messages: opened in this batch, else as stored."""
        return self._opened.get(ticket_id) or self._tickets.get(ticket_id) or ticket_store.get(self.session, ticket_id)

    def participants(self, ticket: Ticket) -> threads.Participants:
        """Who may write on `ticket` (mailbot.threads), read from the ticket as it stands in this batch."""
        if ticket.id not in self._colleagues:
            with self.session.no_autoflush:
                self._colleagues[ticket.id] = conversations.colleagues(self.session, ticket)
        specialist = self._specialist_addresses.get(ticket.specialist_id) if ticket.specialist_id else None
        return threads.participants(
            requester=ticket.requester,
            specialist=specialist,
            messages=[(m.from_address, [*m.to, *m.cc]) for m in ticket.messages if m.direction == "in"],
            colleagues=self._colleagues[ticket.id],
        )

    def match(self, clues: threads.Clues, sender: str) -> threads.Match | None:
        """The ticket the thread clues name (mailbot.threads.match), for `sender`, whom the message trusts."""

        def joins(ticket_id: int) -> bool:  # asked only of a Message-ID that several tickets use
            ticket = self.ticket(ticket_id)
            return ticket is not None and self.participants(ticket).role_of(sender) is not None

        return threads.match(
            clues, owners=self.owners(clues.message_ids), existing=self.existing(clues.ticket_ids()), joins=joins
        )

    def specialist(self, address: str) -> Specialist | None:
        """The specialist of the team with this address, active or not."""
        return self._specialists.get(address)

    def outgoing(self, message_id: str) -> OutboxItem | None:
        """The message mailbot sent (or planned) with this Message-ID."""
        return self._outgoing.get(message_id)

    def contact(self, address: str) -> ContactRecord | None:
        """The named contact `address` belongs to (any case or plus form), if any."""
        key = registry.sender_key(address)
        return self._contacts.get(key) if key is not None else None

    def sent_to(self, address: str, kinds: Collection[str], since: datetime) -> int:
        """Mail of `kinds` planned (withheld mail aside) to `address` (any case or plus form) since `since`,
        one of `counts_from`."""
        since = self._checked(since)
        sent = self._to.get(key_of(address))
        return sum(s.count for s in sent if s.kind in kinds and s.at >= since and not s.withheld)

    def sent_on(self, ticket_id: int, kinds: Collection[str], since: datetime) -> int:
        """Mail of `kinds` planned on one ticket since `since`, one of `counts_from`."""
        since = self._checked(since)
        return sum(s.count for s in self._on.get(ticket_id) if s.kind in kinds and s.at >= since)

    def known(self, sha256: str) -> bool:
        """Whether an attachment's bytes are stored, or being stored by this batch (ticket_store.Blobs)."""
        return sha256 in self._new_blobs or self._stored_blobs.get(sha256)

    def blob_data(self, sha256s: Collection[str]) -> dict[str, bytes]:
        """Attachment bytes by hash: stored by this batch, else as stored before."""
        found = {sha256: data for sha256 in sha256s if (data := self._new_blobs.get(sha256)) is not None}
        with self.session.no_autoflush:
            return found | ticket_store.blobs(self.session, set(sha256s) - found.keys())

    def next_ticket_id(self) -> int:
        wanted = self._openers - len(self._opened)  # the tickets the batch may still open, this one included
        self._last_ticket_id = self._ticket_ids.next(self.session, self._last_ticket_id, wanted)
        return self._last_ticket_id

    # --- what the batch's decisions write ------------------------------------------------------------------

    @property
    def opened_tickets(self) -> list[Ticket]:
        """The tickets opened in this batch, in order, with their messages: the session does not hold them,
        the batch's write writes them at its end (mailbot.store.batch)."""
        return list(self._opened.values())

    def opened(self, ticket: Ticket) -> None:
        """A ticket opened in this batch: it exists, with no mail yet."""
        self._opened[ticket.id] = ticket
        self._exists.values[ticket.id] = True
        self._on.values[ticket.id] = []

    def recorded(self, message: TicketMessage, ticket_id: int) -> None:
        """A message stored on a ticket: its Message-ID is in use. One of ours was minted just now, at
        random (mailbot.compose.mint_message_id): nothing stored carries it, so the store is not asked."""
        use = Use(message.identity, ticket_id, message.from_address, message.direction)
        if message.direction == "out" and message.message_id not in self._uses.values:
            self._uses.values[message.message_id] = [use]
        else:
            self.uses(message.message_id).append(use)

    @property
    def planned_mail(self) -> list[OutboxItem]:
        """The outbox items this batch queued, in order: no session holds them, the batch's write writes
        them at its end (mailbot.store.batch)."""
        return list(self._planned)

    def queued(self, item: OutboxItem) -> None:
        """Mail planned in this batch (`planned_mail`): it counts against its recipient and its ticket."""
        self._planned.append(item)
        sent = Sent(item.kind, item.created_at, item.status == "withheld")
        if item.recipient is not None:
            self._to.get(item.recipient).append(sent)
        if item.ticket_id is not None:
            self._on.get(item.ticket_id).append(sent)

    def adding(self, sha256: str, data: bytes) -> None:
        """An attachment's bytes stored by this batch (ticket_store.Blobs)."""
        self._new_blobs[sha256] = data

    def bounced(self, address: str) -> None:
        """The named contact at `address` is marked bouncing now."""
        if (record := self.contact(address)) is not None:
            self._contacts.values[record.facts.address] = replace(record, bouncing=True)

    def _cuts(self) -> tuple[datetime, ...]:
        if not self.counts_from:
            raise ValueError("these facts count no planned mail")
        return self.counts_from

    def _checked(self, since: datetime) -> datetime:
        """The store counted by the instants in `counts_from` (mailbot.store.deliveries): a count from any
        other would be silently wrong, so it raises."""
        if since not in self._cuts():
            raise ValueError(f"the facts count planned mail since {self.counts_from}, not since {since}")
        return since
