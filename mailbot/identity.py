"""When is a message one we already have? A Message-ID proves nothing; the same message does.

Anyone can write any Message-ID. Were a repeated one a duplicate, a stranger who sends `Message-ID:
<x@lincoln.example>` first would make a named contact's genuine message with that id vanish: no ticket,
no confirmation, nothing for anyone to see. So a repeated Message-ID marks a duplicate only when the
message is the same too: the same sender, proven the same way, saying the same thing to the same people
(what an MTA's redelivery, a second door or a second recipient address brings again). Anything else is a
new message, processed like any other, and the collision is recorded on its inbound row and logged.

`identity` is that sameness as one string, unique in the store (`ticket_messages.identity`). Only what the
message says counts, not how it travelled: trace fields (Received, Return-Path, Delivered-To, signatures and
Authentication-Results added on the way) differ between two deliveries of one message; the parsed text does
not change when a relay re-encodes the body. Pure.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from mailbot.addresses import key_of
from mailbot.parse import ParsedMessage

PREFIX = "sha256:"
# key_of, remembered: pure, and the same senders and support addresses come in message after message.
_key_of = functools.lru_cache(maxsize=1024)(key_of)


def identity(key: str, parsed: ParsedMessage, *, authenticated: bool) -> str:
    """The identity of a received message whose Message-ID (or content key) is `key`.

    `authenticated`: whether its From was proven. A forged copy sent ahead of the genuine message (the
    same words, stripped of their signature) must not make the genuine one its duplicate.
    """
    fields = [
        key,
        _key_of(parsed.author.address) if parsed.author else "",  # whom it trusts (mailbot.senders)
        "authenticated" if authenticated else "unproven",
        " ".join(_key_of(a.address) for a in parsed.to),
        " ".join(_key_of(a.address) for a in parsed.cc),
        parsed.subject,
        parsed.date.isoformat() if parsed.date else "",
        parsed.in_reply_to or "",
        " ".join(parsed.references),
        parsed.text,
        parsed.html or "",
        " ".join(a.sha256 for a in parsed.attachments),
    ]
    digest = hashlib.sha256("\x00".join(fields).encode("utf-8", "surrogatepass"))
    return PREFIX + digest.hexdigest()


@dataclass(frozen=True)
class Use:
    """An earlier message stored under the same Message-ID: its identity, ticket and sender."""

    identity: str
    ticket_id: int
    from_address: str
    direction: str  # in | out


def same_message(mine: str, key: str, uses: list[Use]) -> Use | None:
    """The earlier use that is this very message, or None.

    A received row stored before identities existed has its Message-ID as identity (migration 0003_trust_policy): it
    counts as the same message, as it did when it was stored.
    """
    return next((u for u in uses if u.identity == mine or (u.direction == "in" and u.identity == key)), None)


def collision(key: str, uses: list[Use]) -> str:
    """The record of a Message-ID that other messages used before, for the inbound row and the log."""
    first = uses[0]
    who = "mailbot" if first.direction == "out" else (first.from_address or "(no sender)")
    others = f" and {len(uses) - 1} more" if len(uses) > 1 else ""
    return (
        f"Message-ID {key} was already used by a different message (from {who}, ticket #{first.ticket_id}"
        f"{others}); processed as a new message"
    )
