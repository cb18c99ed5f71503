"""Outgoing messages from templates: identity, threading headers, loop marks. Pure: values in, bytes out.

Every message gets its Message-ID here, when it is planned, so a retried send is the same message and a reply
to it threads even before it went out. Headers are built with the stdlib's policy.default, which refuses CR
and LF in a header value; customer text is also flattened to one line first, so nothing a customer writes
(subject, name) can add a header or a recipient.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

LOOP_HEADER = "X-Mailbot-Loop"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|antw|tr)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def one_line(text: str, limit: int = 200) -> str:
    """Customer-controlled text made safe for a header: no control characters, bounded length."""
    return _CONTROL.sub(" ", text).strip()[:limit]


def base_subject(subject: str) -> str:
    """The subject without Re:/Fwd: prefixes (RFC 5256 "base subject", simplified)."""
    return _REPLY_PREFIX.sub("", subject).strip()


def mint_message_id(domain: str) -> str:
    """An unguessable Message-ID (RFC 5322 3.6.4): 144 random bits, so nobody can predict ours."""
    return f"<{secrets.token_urlsafe(18)}@{domain}>"


@dataclass(frozen=True)
class Identity:
    """Who mailbot writes as: the [support] from address."""

    name: str
    address: str

    @classmethod
    def parse(cls, header: str) -> Identity:
        [(name, address)] = getaddresses([header])
        return cls(name=name, address=address.lower())

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def header(self, name: str | None = None) -> Address:
        username, _, domain = self.address.rpartition("@")
        return Address(display_name=one_line(name if name is not None else self.name), username=username, domain=domain)


@dataclass(frozen=True)
class Outgoing:
    """A rendered message ready for the outbox."""

    kind: str
    message_id: str
    envelope_from: str
    recipients: list[str]
    subject: str
    text: str
    body: bytes  # RFC 5322 bytes without Date and DKIM-Signature (added when sent)


@dataclass(frozen=True)
class Thread:
    """Where a message sits in its conversation (RFC 5322 3.6.4)."""

    in_reply_to: str | None = None
    references: Sequence[str] = field(default_factory=tuple)

    def followed_by(self, message_id: str) -> Thread:
        """The thread position of a reply to `message_id`."""
        refs = [r for r in self.references if r != message_id][-20:]  # keep References bounded
        return Thread(in_reply_to=message_id, references=(*refs, message_id))


def ticket_reference(ticket_id: int) -> str:
    """The readable ticket reference carried in subjects."""
    return f"[Ticket #{ticket_id}]"


def ticket_subject(ticket_id: int, subject: str) -> str:
    reference = ticket_reference(ticket_id)
    base = one_line(base_subject(subject).replace(reference, "")) or "Your support request"
    return f"Re: {base} {reference}"


class Composer:
    def __init__(self, templates: Path, identity: Identity, *, loop_token: str) -> None:
        self.identity = identity
        self.loop_token = loop_token
        self._env = Environment(
            loader=FileSystemLoader(templates),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )

    def compose(
        self,
        kind: str,
        *,
        to: Sequence[Address],
        subject: str,
        thread: Thread,
        context: Mapping[str, Any],
        reply_to: Address | None = None,
        from_name: str | None = None,
        auto_submitted: str = "auto-replied",
        cc: Sequence[Address] = (),
    ) -> Outgoing:
        """Render templates/<kind>.txt (and <kind>.html when present) into a threaded, loop-marked message."""
        values = {"support_name": self.identity.name, "support_address": self.identity.address, **context}
        text = self._env.get_template(f"{kind}.txt").render(values)
        message = EmailMessage()
        message["From"] = self.identity.header(from_name)
        message["To"] = list(to)
        if cc:
            message["Cc"] = list(cc)
        if reply_to is not None:
            message["Reply-To"] = reply_to
        message["Subject"] = one_line(subject, 300)
        message_id = mint_message_id(self.identity.domain)
        message["Message-ID"] = message_id
        if thread.in_reply_to:
            message["In-Reply-To"] = thread.in_reply_to
        if thread.references:
            message["References"] = " ".join(thread.references)
        # RFC 3834 5: mark what we send as automatic; our own mark lets us recognise it if it comes back.
        message["Auto-Submitted"] = auto_submitted
        message[LOOP_HEADER] = self.loop_token
        message.set_content(text, cte="quoted-printable")
        html_name = f"{kind}.html"
        if html_name in self._env.list_templates(extensions=["html"]):
            message.add_alternative(self._env.get_template(html_name).render(values), subtype="html")
        return Outgoing(
            kind=kind,
            message_id=message_id,
            envelope_from=self.identity.address,
            recipients=[a.addr_spec for a in (*to, *cc)],
            subject=str(message["Subject"]),
            text=text,
            body=message.as_bytes(policy=SMTP),
        )
