"""Bounces: reports that mail mailbot sent could not be delivered (or is late), and what they say.

`read_bounce(message)` gives a `Bounce` or None. Two shapes are recognised, and only at the top level of
the message (a person who forwards a bounce as an attachment wrote a human message):

1. **Delivery status notifications** (RFC 3464): a `multipart/report` (RFC 6522) with a
   `message/delivery-status` part, whatever its sender. Its per-recipient blocks decide: recipients with
   `Action: failed` make the bounce; without any, `Action: delayed` ones make a delay warning; a report
   of only `delivered`, `relayed` or `expanded` recipients is a success notice, not a bounce.
   `Original-Recipient` (the address we sent to, before the receiver rewrote it) is preferred to
   `Final-Recipient` (RFC 3464 section 2.3.1).
2. **Older plain-text bounces** (qmail, classic Exim and sendmail, Gmail before 2015...): the From
   address is `MAILER-DAEMON` or `postmaster` (the names MTAs send their notices from), and either
   the subject is a known bounce subject or flufl.bounce's detectors (GNU Mailman's, one per MTA format)
   find failed recipients. Recipients come from those detectors; the status and diagnostic from the
   first SMTP reply in the notice, the text before the returned copy of our message.

Auto-replies are not bounces: an out-of-office reply comes from a person's address, not from a mail
system, and has no delivery-status part, even when it carries `Auto-Submitted: auto-replied` (as every
bounce from Postfix, Exim and Gmail does too, so that header decides nothing here).

`delayed` marks a warning that delivery is late (a DSN with only `delayed` recipients, or a plain-text
notice whose subject says so and that reports no permanent failure): the message may still arrive.

`permanent` is a hard failure of the address: a status of class 5 (RFC 3463). A class-4 status, a delay
warning, or a failure whose MTA gave up after temporary errors is not permanent. Without any status, a
failed DSN recipient is permanent and a plain-text bounce is permanent unless its subject says delayed.

`original_message_id` is the Message-ID of the returned message: from the `message/rfc822` or
`text/rfc822-headers` part, else from a `Message-ID:` header line quoted in the text of the bounce.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message, MIMEPart

from flufl.bounce import all_failures

from mailbot.automatic import header_addresses

_MAIL_SYSTEM_SENDERS = frozenset({"mailer-daemon", "postmaster"})
_BOUNCE_SUBJECT = re.compile(
    r"\s*(undeliver|non-?deliver|mail delivery fail|delivery fail|delivery has failed|failure notice"
    r"|returned mail|mail system error|delivery status notification|delayed mail|delivery delayed"
    r"|warning: could not send)",
    re.IGNORECASE,
)
_DELAY_SUBJECT = re.compile(
    r"\s*(delayed mail|delivery delayed|warning: could not send|.*\(delay\))", re.IGNORECASE
)
_STATUS = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})\b")  # RFC 3463 section 2: class.subject.detail
# An SMTP reply with an enhanced status ("550 5.1.1", "550-5.1.1"), a lone enhanced status ("(#5.1.1)"),
# or a bare reply code followed by text ("550 No such user"); never digits inside an IP address.
_REPLY_WITH_STATUS = re.compile(r"(?<![\d.])[45]\d\d[ -]#?([45]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_LONE_STATUS = re.compile(r"(?<![\d.])#?([45]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_REPLY_CODE = re.compile(r"(?<![\d.])([45][0-5]\d)(?=[ -][A-Za-z<])")
# Where a plain-text bounce starts quoting the returned message.
_RETURNED_COPY = re.compile(
    r"^(-{2,}.*(copy of|original message|returned message|below this line|message headers).*"
    r"|original message headers:.*|return-path:.*|received:.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_REPLY_START = re.compile(r"([2-5]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3}) +)?")
# A Message-ID is printable US-ASCII (RFC 5322 section 3.6.4), as every one mailbot mints is: a raw 8-bit byte
# in a returned copy (read as a surrogate) names no message of ours, and no database takes it as text.
_ID = r"<[\x21-\x3b\x3d\x3f-\x7e]+>"
_MESSAGE_ID_LINE = re.compile(rf"^Message-ID:[ \t]*(?:\r?\n[ \t]+)?({_ID})", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID = re.compile(_ID)


@dataclass(frozen=True)
class Bounce:
    """What a bounce says about one message mailbot sent."""

    recipients: list[str]  # the addresses that failed (or are delayed); empty when the bounce names none
    permanent: bool  # a 5.x.x hard failure, not a 4.x.x soft one or a delay
    status: str | None  # RFC 3463 enhanced status code, e.g. "5.1.1"
    diagnostic: str | None  # the remote server's words, e.g. "550 5.1.1 <x@y>: User unknown"
    original_message_id: str | None  # "<...>" of the message that bounced
    delayed: bool = False  # a delay warning: the message is still queued, nothing has failed yet


def read_bounce(message: EmailMessage) -> Bounce | None:
    """The bounce `message` is (a failure or delay report about mail we sent), or None when it is not one."""
    blocks = _recipient_blocks(message)
    if blocks:
        return _from_dsn(message, blocks)
    return _from_text(message)


def _recipient_blocks(message: EmailMessage) -> list[Message]:
    """The per-recipient field blocks of a top-level RFC 3464 report; empty when it is not one."""
    if message.get_content_type() != "multipart/report":
        return []
    for part in message.iter_parts():
        # policy.default parses message/delivery-status into a list of header blocks (RFC 3464 section 2.1):
        # the per-message block first, then one per recipient.
        payload = part.get_payload()
        if part.get_content_type() == "message/delivery-status" and isinstance(payload, list):
            return [block for block in payload if isinstance(block, Message) and "Action" in block]
    return []


def _from_dsn(message: EmailMessage, blocks: list[Message]) -> Bounce | None:
    # "error" is OpenSMTPD's non-standard word for "failed".
    failed = [block for block in blocks if _action(block).startswith(("failed", "error"))]
    delayed = [block for block in blocks if _action(block).startswith("delayed")]
    chosen = failed or delayed
    if not chosen:
        return None
    first = chosen[0]
    status = _status(first)
    return Bounce(
        recipients=sorted({address for block in chosen if (address := _recipient(block))}),
        permanent=status.startswith("5") if status else bool(failed),
        status=status,
        diagnostic=_diagnostic(first),
        original_message_id=_original_message_id(message),
        delayed=not failed,
    )


def _action(block: Message) -> str:
    return str(block.get("Action", "")).strip().lower()


def _status(block: Message) -> str | None:
    match = _STATUS.match(str(block.get("Status", "")))
    return match.group(1) if match else None


def _recipient(block: Message) -> str | None:
    """The address of `Original-Recipient` or else `Final-Recipient` ("rfc822; ana@school.org")."""
    for name in ("Original-Recipient", "Final-Recipient"):
        value = block.get(name)
        if value is not None:
            # RFC 3464 section 2.3.2: address-type ";" generic-address; some MTAs leave the type out.
            address = str(value).rpartition(";")[2].strip().removeprefix("<").removesuffix(">").strip()
            if "@" in address:
                return address
    return None


def _diagnostic(block: Message) -> str | None:
    value = block.get("Diagnostic-Code")
    if value is None:
        return None
    # RFC 3464 section 2.3.6: diagnostic-type ";" text. The type ("smtp", "X-Postfix") says little.
    return _one_line_reply(" ".join(str(value).partition(";")[2].split())) or None


def _one_line_reply(text: str) -> str:
    """A multi-line SMTP reply joined into one (RFC 5321 section 4.2.1): its code and status said once."""
    first = _REPLY_START.match(text)
    if first is None:
        return text
    code, status = first.group(1), first.group(2)
    repeated = rf" {code}[ -]{re.escape(status)} +" if status else rf" {code}-"
    rest = re.sub(repeated, " ", text[first.end() :])
    return " ".join(filter(None, (code, status, rest)))


def _from_text(message: EmailMessage) -> Bounce | None:
    if _sender_local_part(message) not in _MAIL_SYSTEM_SENDERS:
        return None
    subject = str(message.get("Subject", ""))
    found_temporary, found_permanent = all_failures(message)
    temporary, permanent = _clean_addresses(found_temporary), _clean_addresses(found_permanent)
    says_bounce = _BOUNCE_SUBJECT.match(subject) is not None
    if not (says_bounce or temporary or permanent):
        return None
    notice = _notice(message)
    status, code, diagnostic = _reply_in(notice)
    if status:
        hard = status.startswith("5")
    elif code:
        hard = code.startswith("5")
    elif temporary or permanent:
        hard = bool(permanent)
    else:
        hard = _DELAY_SUBJECT.match(subject) is None
    return Bounce(
        recipients=permanent or temporary,
        permanent=hard,
        status=status,
        diagnostic=diagnostic,
        original_message_id=_original_message_id(message),
        delayed=not hard and _DELAY_SUBJECT.match(subject) is not None,
    )


def _sender_local_part(message: EmailMessage) -> str:
    authors = header_addresses(message, "From")
    return authors[0].username.lower() if len(authors) == 1 else ""


def _clean_addresses(found: frozenset[bytes]) -> list[str]:
    """flufl.bounce's addresses (bytes, sometimes in angle brackets) as sorted, distinct text."""
    cleaned = (
        raw.decode("utf-8", "replace").strip().removeprefix("<").removesuffix(">").strip() for raw in found
    )
    return sorted({address for address in cleaned if address})


def _notice(message: EmailMessage) -> str:
    """The human-readable notice: the first text/plain part, up to where it quotes the returned message."""
    for part in _top_parts(message):
        if part.get_content_type() == "text/plain":
            text = _text(part)
            cut = _RETURNED_COPY.search(text)
            return text[: cut.start()] if cut else text
    return ""


def _reply_in(notice: str) -> tuple[str | None, str | None, str | None]:
    """The enhanced status, the bare SMTP reply code, and the line holding the first one found."""
    for pattern in (_REPLY_WITH_STATUS, _LONE_STATUS, _REPLY_CODE):
        match = pattern.search(notice)
        if match:
            line_start = notice.rfind("\n", 0, match.start()) + 1
            line_end = notice.find("\n", match.end())
            line = " ".join(notice[line_start : None if line_end < 0 else line_end].split())
            if pattern is _REPLY_CODE:
                return None, match.group(1), line
            return match.group(1), None, line
    return None, None, None


def _original_message_id(message: EmailMessage) -> str | None:
    """The Message-ID of the returned message: its attached copy or headers, else a quoted header line."""
    texts: list[str] = []
    for part in _top_parts(message):
        content_type = part.get_content_type()
        found = None
        if content_type == "message/rfc822":
            found = _attached_message_id(part)
        elif content_type in ("text/rfc822-headers", "message/rfc822-headers"):
            found = _message_id_line(_text(part))
        elif content_type == "text/plain":
            texts.append(_text(part))
        if found:
            return found
    return next((found for text in texts if (found := _message_id_line(text))), None)


def _attached_message_id(part: MIMEPart) -> str | None:
    payload = part.get_payload()
    returned = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(returned, Message):
        return None
    # The raw value: the stdlib's Message-ID parser raises IndexError on a value as small as "<".
    raw = next((str(value) for name, value in returned.raw_items() if name.lower() == "message-id"), "")
    match = _MESSAGE_ID.search(raw)
    return match.group(0) if match else None


def _message_id_line(text: str) -> str | None:
    match = _MESSAGE_ID_LINE.search(text)
    return match.group(1) if match else None


def _top_parts(message: EmailMessage) -> Iterator[MIMEPart]:
    """Every part of `message`, depth first, without entering attached messages (message/*)."""
    stack: list[MIMEPart] = [message]
    while stack:  # a loop, not recursion: hostile mail nests parts deeper than Python's recursion limit
        part = stack.pop()
        yield part
        if part.is_multipart() and part.get_content_maintype() != "message":
            stack.extend(reversed(list(part.iter_parts())))


def _text(part: MIMEPart) -> str:
    """The decoded text of a text part; undecodable bytes replaced rather than failing on a bad charset."""
    try:
        content = part.get_content()
    except LookupError:
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def delivery_after(current: str | None, bounce: Bounce) -> str:
    """An outgoing message's delivery once `bounce` is recorded against it (`current`: before): a late
    warning says nothing new about a message that already failed."""
    if current == "bounced" and bounce.delayed:
        return current
    return "delayed" if bounce.delayed else "bounced"
