"""Trust under attack, the policy half (issue 12): each attack against a running daemon, over real SMTP, with
real DKIM signatures verified against fixed DNS records, and the mail that crossed the wire to the relay.

A Message-ID proves nothing; only a specialist's reply to their own reply address speaks as the support team;
one loop governor stops machines, not people; our own addresses get no automatic reply; a stranger's bytes
cannot drive an operator's terminal; what mailbot writes is private; explanations need authenticated senders.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbot.cli import main
from mailbot.dns import FixedResolver
from mailbot.store import outbox, registry
from mailbot.store.schema import Ticket
from tests.mailers import message
from tests.test_entitlement_flow import (  # noqa: F401  (fixtures: key, boot)
    DOMAINS,
    STRANGER,
    Start,
    add_contact,
    add_org,
    boot,
    from_stranger,
    key,
    signed,
)
from tests.test_schedule_flow import queued
from tests.world import CUSTOMER, SUPPORT, World, relay, world  # noqa: F401  (fixtures)

SAM = "sam@schoolmint.com"
TEAM_DOMAIN = "schoolmint.com"


@pytest.fixture
def dns(key: tuple[bytes, bytes]) -> FixedResolver:  # noqa: F811
    """The test key published for the customers' domains and for the support domain (a platform the
    support domain delegated DKIM to signs with it as well as our own specialists' mail system does)."""
    return FixedResolver({f"sel._domainkey.{domain}": [key[1]] for domain in (*DOMAINS, TEAM_DOMAIN)})


async def open_desk(boot: Start, db: str | None = None) -> World:  # noqa: F811
    """A daemon requiring DKIM: Lincoln High with its named contact Ana, and specialist Sam Lee."""
    service = await boot(db=db)
    add_org(service.app, "Lincoln High")
    add_contact(service.app, CUSTOMER)
    service.app.db.call(registry.add_specialist, SAM, "Sam Lee", service.app.clock.now())
    return service


@pytest.fixture
async def desk(boot: Start) -> World:  # noqa: F811
    return await open_desk(boot)


def parsed(data: bytes) -> EmailMessage:
    mail = message_from_bytes(data, policy=policy.default)
    assert isinstance(mail, EmailMessage)
    return mail


def to_ana(service: World) -> list[EmailMessage]:
    return [parsed(m.data) for m in service.wire if m.rcpt_tos == [CUSTOMER]]


def to_sam(service: World, kind: str = "notification") -> list[EmailMessage]:
    """What reached Sam of one kind (his assignment mail comes before the notifications)."""
    sent = {o.message_id: o.kind for o in service.outbox()}
    mails = [parsed(m.data) for m in service.wire if m.rcpt_tos == [SAM]]
    return [m for m in mails if sent.get(str(m["Message-ID"])) == kind]


def tickets(service: World) -> list[Ticket]:
    return service.app.db.call(lambda s: list(s.scalars(select(Ticket).order_by(Ticket.id))))


class TestMessageIdProvesNothing:
    async def test_a_strangers_message_id_does_not_swallow_the_genuine_message(
        self, boot: Start, db_url: str, key: tuple[bytes, bytes], caplog: pytest.LogCaptureFixture  # noqa: F811
    ) -> None:
        """Zoe sends Message-ID <x@lincoln.example> first; Ana's genuine signed message with that id is still
        a ticket with its confirmation, and the collision is on its inbound row and in the log."""
        desk = await open_desk(boot, db_url)
        caplog.set_level(logging.WARNING, logger="mailbot.intake")
        await desk.send(from_stranger(message_id="<x@lincoln.example>", subject="hello"), mail_from=STRANGER)
        await desk.send(signed(message(message_id="<x@lincoln.example>"), key, "lincoln.example"))
        await desk.settle()
        first, genuine = tickets(desk)
        assert (first.status, genuine.status, genuine.entitlement) == ("held", "new", "entitled")
        [confirmation] = to_ana(desk)
        assert str(confirmation["In-Reply-To"]) == "<x@lincoln.example>"
        rows = desk.inbound()
        assert [r.action for r in rows] == ["held", "created"] and rows[0].collision is None
        assert rows[1].collision and "<x@lincoln.example> was already used by a different message" in rows[1].collision
        assert f"from {STRANGER}, ticket #1" in rows[1].collision
        assert any(rows[1].collision in r.getMessage() for r in caplog.records)

    async def test_a_forged_copy_sent_first_does_not_make_the_genuine_one_a_duplicate(
        self, desk: World, key: tuple[bytes, bytes]  # noqa: F811
    ) -> None:
        """The very words and Message-ID of Ana's message, unsigned, raced ahead of it: not the same message
        (its sender is not proven), so the genuine one is processed and confirmed."""
        genuine = signed(message(message_id="<race@lincoln.example>"), key, "lincoln.example")
        forged = genuine[genuine.index(b"From: "):]  # the signature left off
        await desk.send(forged)
        await desk.send(genuine)
        await desk.settle()
        assert [t.entitlement for t in tickets(desk)] == ["not-authenticated", "entitled"]
        assert len(to_ana(desk)) == 1

    async def test_the_same_message_again_is_a_duplicate(
        self, desk: World, key: tuple[bytes, bytes]  # noqa: F811
    ) -> None:
        """An MTA's redelivery (the same bytes through the same door) is the same message: one ticket, one
        confirmation, and no collision recorded."""
        raw = signed(message(message_id="<again@lincoln.example>"), key, "lincoln.example")
        await desk.send(raw)
        await desk.send(raw)
        await desk.settle()
        assert [r.action for r in desk.inbound()] == ["created", "duplicate"]
        assert len(tickets(desk)) == 1 and len(to_ana(desk)) == 1
        assert all(r.collision is None for r in desk.inbound())

    async def test_a_colliding_message_id_does_not_capture_the_thread(
        self, desk: World, key: tuple[bytes, bytes]  # noqa: F811
    ) -> None:
        """Zoe used <x@lincoln.example> first; Ana's later reply that names only her own first message (a
        client that keeps References and nothing else) joins Ana's ticket, not Zoe's."""
        await desk.send(from_stranger(message_id="<x@lincoln.example>", subject="hello"), mail_from=STRANGER)
        await desk.send(signed(message(message_id="<x@lincoln.example>"), key, "lincoln.example"))
        follow_up = message(
            message_id="<x2@lincoln.example>", subject="Re: Login broken", headers={"References": "<x@lincoln.example>"}
        )
        await desk.send(signed(follow_up, key, "lincoln.example"))
        await desk.settle()
        assert [r.action for r in desk.inbound()] == ["held", "created", "threaded"]
        assert desk.inbound()[2].ticket_id == 2 and len(tickets(desk)) == 2


class TestSpeakingAsTheSupportTeam:
    async def _assigned(self, desk: World, key: tuple[bytes, bytes]) -> EmailMessage:  # noqa: F811
        """Ana's ticket, claimed by Sam, and Ana's follow-up: Sam's notification as his client got it."""
        await desk.send(signed(message(message_id="<t1@lincoln.example>"), key, "lincoln.example"))
        await desk.settle()
        desk.app.sla.claim(1, SAM)
        await desk.settle()
        introduction = to_ana(desk)[-1]
        reply = message(
            message_id="<t2@lincoln.example>",
            to=introduction["Reply-To"].addresses[0].addr_spec,
            subject="Re: Login broken [Ticket #1]",
            body="It also fails on the iPad.\n",
            headers={"In-Reply-To": str(introduction["Message-ID"])},
        )
        await desk.send(signed(reply, key, "lincoln.example"))
        await desk.settle()
        [notification] = to_sam(desk)
        return notification

    def _from_sam(self, to: str, *, in_reply_to: str, body: str, message_id: str) -> bytes:
        return message(
            sender=f"Sam Lee <{SAM}>",
            to=to,
            subject="Re: Login broken [Ticket #1]",
            body=body,
            message_id=message_id,
            headers={"In-Reply-To": in_reply_to},
        )

    async def test_the_specialists_reply_to_their_reply_address_is_relayed(
        self, desk: World, key: tuple[bytes, bytes]  # noqa: F811
    ) -> None:
        notification = await self._assigned(desk, key)
        reply_to = notification["Reply-To"].addresses[0].addr_spec
        assert reply_to.startswith("herosupport+s1-") and reply_to not in {
            m["Reply-To"].addresses[0].addr_spec for m in to_ana(desk)
        }
        raw = self._from_sam(
            reply_to,
            in_reply_to=str(notification["Message-ID"]),
            body=f"Please clear the cache. (Reply to {reply_to} if not.)\n",
            message_id="<sam-1@mail.schoolmint.com>",
        )
        await desk.send(signed(raw, key, TEAM_DOMAIN), mail_from=SAM, rcpt=(reply_to,))
        await desk.settle()
        relayed = to_ana(desk)[-1]
        text = str(relayed.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        assert "Please clear the cache" in text and "+s1-" not in text  # the token never reaches the customer
        assert relayed["From"].addresses[0].display_name == "Sam Lee (Hero Support)"

    async def test_an_aligned_signature_as_the_specialist_is_not_enough(
        self, desk: World, key: tuple[bytes, bytes]  # noqa: F811
    ) -> None:
        """Mail From Sam, signed by the support domain (a marketing platform with delegated DKIM has such a
        key), naming the ticket by its subject, the customer's reply address (from mail any stranger can
        obtain) and the introduction's Message-ID: held, and nothing reaches Ana."""
        await self._assigned(desk, key)
        introduction = to_ana(desk)[-1]
        customer_token = introduction["Reply-To"].addresses[0].addr_spec
        before = len(desk.wire)
        raw = self._from_sam(
            customer_token,
            in_reply_to=str(introduction["Message-ID"]),
            body="Your account is locked: pay at https://evil.example/unlock\n",
            message_id="<phish@mail.schoolmint.com>",
        )
        await desk.send(signed(raw, key, TEAM_DOMAIN), mail_from=SAM, rcpt=(customer_token,))
        await desk.settle()
        held = tickets(desk)[-1]
        assert (held.id, held.status, held.held_reason) == (2, "held", "no-specialist-token")
        assert "specialist reply address" in (held.held_detail or "")
        assert len(desk.wire) == before

    async def test_a_forged_specialist_token_is_refused(
        self, desk: World, key: tuple[bytes, bytes]  # noqa: F811
    ) -> None:
        """The customer token's mac under the specialist's tag: it does not verify."""
        await self._assigned(desk, key)
        customer_token = to_ana(desk)[-1]["Reply-To"].addresses[0].addr_spec
        forged = customer_token.replace("+t1-", "+s1-")
        before = len(desk.wire)
        raw = self._from_sam(forged, in_reply_to="<none@x>", body="pay here\n", message_id="<f@mail.schoolmint.com>")
        raw = raw.replace(b" [Ticket #1]", b"")  # nothing but the forged address names the ticket
        await desk.send(signed(raw, key, TEAM_DOMAIN), mail_from=SAM, rcpt=(forged,))
        await desk.settle()
        assert tickets(desk)[-1].held_reason == "forged-reply-token" and len(desk.wire) == before


class TestLoopGovernor:
    async def test_a_named_contacts_eleven_genuine_issues_are_all_confirmed(
        self, desk: World, key: tuple[bytes, bytes]  # noqa: F811
    ) -> None:
        """The cap that stops a stranger's machine at 10 is not a person's: Ana's 11th issue is confirmed."""
        for number in range(11):
            raw = message(message_id=f"<issue-{number}@lincoln.example>", subject=f"Issue {number}")
            await desk.send(signed(raw, key, "lincoln.example"))
        await desk.settle()
        assert len(to_ana(desk)) == 11 and all(t.auto_reply_refused is None for t in tickets(desk))

    async def test_a_cap_ever_met_by_a_person_is_a_recorded_breach(
        self, boot: Start, key: tuple[bytes, bytes], caplog: pytest.LogCaptureFixture  # noqa: F811
    ) -> None:
        """Past `contact_mail_limit` a named contact's confirmation is withheld, logged with its reason,
        reported at risk, and breached at its deadline: never a silence."""
        service = await boot({"security": {"contact_mail_limit": 2}})
        add_org(service.app, "Lincoln High")
        add_contact(service.app, CUSTOMER)
        caplog.set_level(logging.WARNING)
        for number in range(3):
            raw = message(message_id=f"<cap-{number}@lincoln.example>", subject=f"Issue {number}")
            await service.send(signed(raw, key, "lincoln.example"))
        await service.settle()
        assert len(to_ana(service)) == 2
        third = tickets(service)[2]
        assert third.confirmation_due_at is not None and "the limit is 2" in (third.auto_reply_refused or "")
        governor = [r.getMessage() for r in caplog.records if r.name == "mailbot.governor"]
        assert governor == [f"ticket 3: confirmation to {CUSTOMER} withheld (its deadline stands): {third.auto_reply_refused}"]
        service.app.sla.sweep_once()
        assert "AT RISK: confirmation" in (service.ticket(3).sla_breach or "")
        service.app.clock.set(service.app.clock.now() + timedelta(hours=1))  # type: ignore[attr-defined]
        service.app.sla.sweep_once()
        assert (service.ticket(3).sla_breach or "").startswith("BREACHED: confirmation late")
        assert any(r.name == "mailbot.sla" and "BREACHED" in r.getMessage() for r in caplog.records)

    async def test_mail_from_our_own_address_gets_no_automatic_reply(
        self, desk: World, key: tuple[bytes, bytes]  # noqa: F811
    ) -> None:
        """Signed by the support domain, From a plus form of the support address: kept, never answered."""
        raw = message(sender=f"Hero Support <herosupport+loop@{TEAM_DOMAIN}>", message_id="<own@schoolmint.com>")
        await desk.send(signed(raw, key, TEAM_DOMAIN), mail_from=f"herosupport+loop@{TEAM_DOMAIN}")
        await desk.settle()
        [ticket] = tickets(desk)
        assert desk.wire == [] and "one of our own support addresses" in (ticket.auto_reply_refused or "")

    async def test_no_explanation_when_senders_are_not_authenticated(self, world: Any) -> None:  # noqa: F811
        """require_sender_auth = false believes every From: a stranger's held ticket explains nothing."""
        service = await world({"security": {"require_sender_auth": False}})
        await service.send(from_stranger(), mail_from=STRANGER)
        await service.settle()
        [ticket] = tickets(service)
        assert (ticket.status, ticket.held_reason, service.wire) == ("held", "unknown-sender", [])


class TestOperatorsSide:
    async def test_a_strangers_escape_sequences_never_reach_the_terminal(
        self, world: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
    ) -> None:
        """ESC sequences in a name and a body, and a C1 CSI: `ticket show` and `ticket list` print them
        escaped; `--json` stays valid JSON holding the very same text."""
        service = await world()
        body = "clear \x1b[2J\x1b]0;owned\x07 and \u009b31m red\n"
        await service.send(message(sender="Eve \x1b[31mRed <eve@elsewhere.example>", body=body), mail_from="eve@elsewhere.example")
        await service.settle()
        config = tmp_path / "cli.toml"
        config.write_text(f'[database]\nurl = "{service.app.config.database.url}"\n')
        capsys.readouterr()
        shown = {}
        for command in ("show 1", "list", "show 1 --json"):
            assert main(["--config", str(config), "ticket", *command.split()]) == 0
            shown[command] = capsys.readouterr().out
            assert not any(c in shown[command] for c in "\x1b\x07\u009b")
        assert "\\u001b[2J\\u001b]0;owned\\u0007" in shown["show 1"] and "\\u009b31m" in shown["show 1"]
        text = json.loads(shown["show 1 --json"])["messages"][0]["text"]
        assert "\x1b[2J\x1b]0;owned\x07" in text and "\u009b31m" in text  # the same text, escaped as JSON

    async def test_files_mailbot_creates_are_private(self, make_app: Any, tmp_path: Path) -> None:
        """The database (raw mail, the secret) and the sent maildir: the owner's alone."""
        app = make_app()
        app.db.call(lambda s: None)
        assert stat.S_IMODE(os.stat(tmp_path / "mailbot.db").st_mode) == 0o600
        app.db.call(lambda s: outbox.plan(s, outbox.item(queued(0), ticket_id=None, now=app.clock.now())))
        assert await app.sender.drain() == 1
        [sent] = (tmp_path / "sent" / "new").iterdir()
        assert stat.S_IMODE(sent.stat().st_mode) == 0o600
        assert {stat.S_IMODE((tmp_path / "sent" / d).stat().st_mode) for d in ("", "new", "tmp", "cur")} == {0o700}

    def test_trust_local_submission_is_refused_off_loopback(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = tmp_path / "config.toml"
        config.write_text('[smtp]\nhost = "0.0.0.0"\n[security]\ntrust_local_submission = true\n')
        assert main(["--config", str(config), "check-config"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"mailbot: {config}: security.trust_local_submission: allowed only when the listener is on loopback ([smtp] host is '0.0.0.0')"]
        config.write_text('[smtp]\nhost = "::1"\n[security]\ntrust_local_submission = true\n')
        assert main(["--config", str(config), "check-config"]) == 0

