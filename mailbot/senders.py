"""Two readings of who wrote a message, kept apart: whom it shows and whom it trusts.

*Whom it trusts* (`trusted_author`) is strict: the one From field of a header block that needed no repair,
read by the strict address parser into exactly one well-formed mailbox. Entitlement, sender
authentication and threading use it and nothing else: DKIM and DMARC judge the From header alone
(RFC 7489 section 3.1), a DKIM verifier refuses a header block we had to mend (mailbot.headerblock), and
two From fields or a malformed one leave it unclear which address a receiver checked. Reply-To, Sender and
Return-Path are never read here: anyone may write them.

*Whom it shows* (`lenient_mailbox`) is what a person reading the From field would take as the sender:
`Claudia.Shu@yahoo.com.` is Claudia.Shu@yahoo.com, `Smith, John <john@x.org>` is John Smith at john@x.org,
a bare `MAILER-DAEMON` is MAILER-DAEMON. It names the ticket's requester and is shown; it never entitles.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailbot.addresses import normalize


@dataclass(frozen=True)
class Address:
    """One mailbox: display name ("" when none) and address (domain lowercased, local part as written)."""

    name: str
    address: str


def trusted_author(
    fields: Sequence[Sequence[Address] | None], registry: Sequence[str], *, block_repaired: bool
) -> tuple[Address | None, str]:
    """The one author a message can be trusted to claim, or None and why not.

    `fields`: each From field's mailboxes as the strict parser read them (None when it could not).
    `registry`: the addr-specs the standard header registry reads in all From fields, defects or not: what
    mailbot.automatic and the authentication step read. Both readings must name the same one mailbox.
    """
    if block_repaired:
        return None, "the header block needed repairs"
    if len(fields) != 1:
        return None, f"the message has {len(fields)} From fields, not one"
    [mailboxes] = fields
    if mailboxes is None or len(mailboxes) != 1:
        return None, "the From field does not hold exactly one readable mailbox"
    try:
        normalize(mailboxes[0].address)
    except ValueError as exc:
        return None, f"the From address is malformed: {exc}"
    if len(registry) != 1 or _tidy(registry[0]) != mailboxes[0].address:
        return None, f"the From field reads two ways: {mailboxes[0].address!r} or {', '.join(registry)!r}"
    return mailboxes[0], ""


# `<local@domain>`, the domain's trailing dots left out; an empty `<>` (a null path) does not match.
_ANGLE = re.compile(r"<\s*([^<>\s@]+@[^<>\s]+?)\.*\s*>")
_BARE = re.compile(r'("[^"]*"|[^\s<>()",;:@]+)@([^\s<>()",;:@]+?)\.*(?=$|[\s<>()",;:])')
# A bare system mailbox such as MAILER-DAEMON, with an optional (comment) for a name: mail systems write
# these without a domain; any other bare word is junk, not a sender.
_WORD = re.compile(r"\s*(mailer-daemon|postmaster|root|daemon|nobody)\s*(?:\((.*)\))?\s*", re.IGNORECASE)
_COMMENT = re.compile(r"\(([^()]*)\)")
_QUOTED_OR_COMMENT = re.compile(r'"[^"]*"|\([^()]*\)')


def lenient_mailbox(text: str) -> tuple[str, str] | None:
    """(name, address) a person would read from a From field the strict parser refuses; None if none.

    The name is left as written (encoded words and quotes included) for the caller to decode. Anything
    that reads two ways (an `@` after the angle address, two `@` in a bare address: the shapes of
    CVE-2023-27043) gives None rather than a guess.
    """
    angles = list(_ANGLE.finditer(text))
    if angles:
        chosen = angles[0]
        if len({angle[1] for angle in angles}) > 1 or "@" in _COMMENT.sub("", text[chosen.end() :]):
            return None
        before = text[: chosen.start()]
        name = before[before.rfind(">") + 1 :].strip().lstrip(",").strip()
        return _unquote(name), _tidy(chosen[1])
    bare = _BARE.search(text)
    if bare and _QUOTED_OR_COMMENT.sub("", text).count("@") == 1:
        comment = _COMMENT.search(text[bare.end() :]) or _COMMENT.search(text[: bare.start()])
        name = comment[1] if comment else text[: bare.start()].strip(" \t,;<>")
        return _unquote(name.strip()), _tidy(f"{bare[1]}@{bare[2]}")
    word = _WORD.fullmatch(text)
    if word and not bare:
        return (word[2] or "").strip(), word[1]
    return None


def _tidy(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.rstrip('.').lower()}"


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return name.strip()
