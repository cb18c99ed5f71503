"""mailbot.identity: when a repeated Message-ID is the same message, and how a collision is told."""

from __future__ import annotations

from mailbot.identity import Use, collision, identity, same_message
from mailbot.parse import parse
from tests.mailers import message

KEY = "<x@lincoln.example>"


def ident(raw: bytes, *, authenticated: bool = True) -> str:
    return identity(KEY, parse(raw), authenticated=authenticated)


class TestIdentity:
    def test_the_same_message_through_another_path_is_the_same(self) -> None:
        """Trace fields added on the way (Received, Return-Path, Delivered-To) do not change what it says."""
        raw = message(message_id=KEY)
        relayed = b"Received: from mx.example by mx.schoolmint.com; Tue, 1 Dec 2026 10:00:01 -0500\r\n"
        relayed += b"Return-Path: <ana@lincoln.example>\r\nDelivered-To: help@herok12.com\r\n" + raw
        assert ident(raw) == ident(relayed)

    def test_another_sender_or_text_or_proof_is_another_message(self) -> None:
        genuine = ident(message(message_id=KEY))
        assert ident(message(message_id=KEY, sender="Zoe <zoe@elsewhere.example>")) != genuine
        assert ident(message(message_id=KEY, body="Send me the grades.\n")) != genuine
        assert ident(message(message_id=KEY), authenticated=False) != genuine

    def test_the_message_id_is_part_of_it(self) -> None:
        """Two issues written alike are two messages."""
        raw = message(message_id=KEY)
        assert identity("<y@lincoln.example>", parse(raw), authenticated=True) != ident(raw)


class TestSameMessage:
    def test_found_by_identity(self) -> None:
        mine = ident(message(message_id=KEY))
        uses = [
            Use("sha256:other", 1, "zoe@elsewhere.example", "in"),
            Use(mine, 2, "ana@lincoln.example", "in"),
        ]
        assert same_message(mine, KEY, uses) == uses[1]
        assert same_message(mine, KEY, uses[:1]) is None

    def test_a_row_stored_before_identities_is_the_same_message(self) -> None:
        """Migration 0002 gave received rows their Message-ID as identity: a redelivery is still a duplicate;
        our own mail's Message-ID used by someone else is not."""
        mine = ident(message(message_id=KEY))
        assert same_message(mine, KEY, [Use(KEY, 1, "ana@lincoln.example", "in")]) is not None
        assert same_message(mine, KEY, [Use(KEY, 1, "herosupport@schoolmint.com", "out")]) is None

    def test_the_collision_names_the_first_use(self) -> None:
        uses = [Use("a", 1, "zoe@elsewhere.example", "in"), Use("b", 3, "bo@lincoln.example", "in")]
        assert collision(KEY, uses) == (
            "Message-ID <x@lincoln.example> was already used by a different message (from zoe@elsewhere.example, "
            "ticket #1 and 1 more); processed as a new message"
        )
        assert "from mailbot, ticket #4" in collision(KEY, [Use(KEY, 4, "herosupport@schoolmint.com", "out")])
