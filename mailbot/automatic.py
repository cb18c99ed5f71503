"""Whether a message was written by a machine, so that mailbot must never answer it automatically.

`automatic_reason(message, envelope_sender)` names the first sign found, or gives None for mail a person
wrote. A message is automatic when it has (RFC 3834 section 2, and the practice of the big responders):

- our loop mark, `X-Mailbot-Loop` (any value: ours coming back, or another mailbot's);
- a null return path: the envelope sender is `<>`, as for every bounce and well-behaved auto-reply
  (RFC 5321 section 4.5.5; RFC 3834 section 3). Without an envelope (a message read from a file or
  from IMAP), the topmost `Return-Path` header stands for it: the final delivery wrote it (RFC 5321
  section 4.4). A forged one can only make mailbot more cautious;
- `Auto-Submitted` with any value but `no` (RFC 3834 section 5), comments and parameters ignored;
- `Precedence: bulk`, `junk` or `list` (RFC 3834 section 2), or `auto_reply`, which some responders use;
- a mailing-list header (RFC 2369, RFC 2919): a list post goes to the whole list;
- `X-Auto-Response-Suppress` asking for no `All`, `OOF` or `AutoReply` responses ([MS-OXCMAIL];
  Exchange puts it on its own out-of-office replies). `DR`, `NDR`, `RN` and `NRN` concern receipts only;
- `X-Autoreply` or `X-Autorespond` (and their `-From` and `X-Mail-Autoreply` variants), written by
  autoresponders that predate RFC 3834;
- a `multipart/report` body (RFC 6522): delivery, read and abuse reports are made by machines;
- a From, Sender or return path whose local part names a mail system or list manager: the list of
  RFC 3834 (`MAILER-DAEMON`, `LISTSERV`, `majordomo`, `owner-*`, `*-request`), plus `postmaster`, which
  sends non-delivery reports, and the no-reply family (`noreply`, `no-reply`, `donotreply`, ...), whose
  owners tell us in the name that nobody reads a reply. A `+tag` is ignored (`noreply+x` is `noreply`).

**Subjects are not evidence.** "Automatic reply:", "Out of Office:" and the rest come in dozens of
languages, and people quote them ("Re: Out of office...") or write them ("Out of office coverage?"). A
false positive costs a customer the confirmation promised within the hour; a false negative is cheap,
because every responder worth the name sets one of the headers above, and a header-less one answers
our confirmation *in reply to it*: that threads onto the ticket as a follow-up, and only a new ticket
is confirmed (DOMAIN.md), so no loop starts.

`is_own_mail(message, loop_token)` recognises mail that mailbot itself sent: everything it sends carries
`X-Mailbot-Loop: <loop_token>`, where the token is `loop_mark(secret, its Message-ID)`.

`may_auto_reply_to(message, envelope_sender)` says where an automatic reply may go, if anywhere (see its
docstring). None of this authenticates anyone: intake still answers only authenticated senders.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterator, Sequence
from email.errors import HeaderParseError
from email.headerregistry import Address, AddressHeader, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy

from mailbot.authn import aligned
from mailbot.mailboxes import simple_mailboxes

LOOP_HEADER = "X-Mailbot-Loop"
_LOOP_CONTEXT = b"mailbot loop mark v1\x00"  # domain separation from other uses of the secret

# RFC 3834 section 2 names the list-manager and mail-system addresses; postmaster and the no-reply family
# are this project's additions (see the module docstring).
_SYSTEM_LOCAL_PARTS = frozenset(
    {
        "mailer-daemon",
        "postmaster",
        "listserv",
        "majordomo",
        "noreply",
        "no-reply",
        "no_reply",
        "donotreply",
        "do-not-reply",
        "do_not_reply",
    }
)
_SYSTEM_PREFIXES = ("owner-",)
_SYSTEM_SUFFIXES = ("-request",)
_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
_LIST_HEADERS = (
    "List-Id",
    "List-Post",
    "List-Unsubscribe",
    "List-Help",
    "List-Subscribe",
    "List-Owner",
    "List-Archive",
)
_SUPPRESSED_RESPONSES = frozenset({"all", "oof", "autoreply"})
_AUTORESPONDER_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoreply-From", "X-Mail-Autoreply")
# Python 3.11's RFC 5322 address parser raises these, not just HeaderParseError, on some malformed
# headers (a lone "<", ":;<", ".<>"): hostile mail must read as "no address", never crash intake.
_PARSER_FAILURES = (HeaderParseError, IndexError, ValueError, AttributeError, TypeError)
# The stdlib's address parser is quadratic in a field's length: a 40 KB From of "x(y)" pairs costs it 2 s per
# read. One mailbox, even with a long encoded name, fits in far less; a longer field names nobody we answer.
MAX_ADDRESS_FIELD = 2000
_COMMENT = re.compile(r"\([^()]*\)")  # RFC 5322 section 3.2.2; nested comments are peeled one level a pass
# simple_mailboxes, remembered: one message's From is read three or four times (its authors, the bounce and
# automatic-mail verdicts), and a customer's From repeats from message to message. Its answers are tuples of
# immutable Addresses, so they can be shared.
cached_mailboxes = functools.lru_cache(maxsize=1024)(simple_mailboxes)


def automatic_reason(message: EmailMessage, envelope_sender: str | None) -> str | None:
    """Why `message` is automatic and must never be auto-answered, or None when a person wrote it.

    `envelope_sender` is the SMTP MAIL FROM (`""` or `"<>"` for a bounce), or None when unknown; then the
    message's Return-Path header stands for it.
    """
    # The field names present, read once: `name in message` lowercases every name of the message again.
    names = frozenset(name.lower() for name in message)
    return_path = _return_path(message, envelope_sender)
    return (
        _loop_mark(names)
        or ("null return path (a bounce or an auto-reply)" if return_path == "" else None)
        or _auto_submitted(message, names)
        or _precedence(message, names)
        or _list_header(names)
        or _responses_suppressed(message, names)
        or _autoresponder_header(names)
        or _report(message)
        or _system_address(message, names, return_path)
    )


def is_own_mail(message: EmailMessage, loop_token: str) -> bool:
    """Whether `message` is one mailbot sent: it carries `X-Mailbot-Loop: <loop_token>`."""
    if not loop_token:
        raise ValueError("loop_token must not be empty")
    token = loop_token.encode()
    # Constant time, so the token cannot be guessed byte by byte from how fast mail is dropped.
    return any(
        hmac.compare_digest(str(value).strip().encode("utf-8", "replace"), token)
        for value in message.get_all(LOOP_HEADER, [])
    )


def loop_mark(secret: bytes, message_id: str) -> str:
    """The `X-Mailbot-Loop` value of the message whose Message-ID is `message_id`.

    An HMAC-SHA256 (RFC 2104) of the Message-ID keyed with the site's secret, truncated to 128 bits: mailbot
    recognises its own message coming back by recomputing it, and nobody without the secret can make a
    customer's message look like ours (a copied mark does not match another Message-ID).
    """
    if not secret:
        raise ValueError("the loop-mark secret is empty")
    return hmac.new(secret, _LOOP_CONTEXT + message_id.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:32]


def may_auto_reply_to(message: EmailMessage, envelope_sender: str | None) -> str | None:
    """The address an automatic reply (a confirmation, an explanation) may be sent to, or None.

    The rule: the From address, and only when all of these hold:

    - the message is not automatic (`automatic_reason` is None), which also rules out lists and bounces;
    - there is exactly one From header, naming exactly one mailbox (RFC 5322 section 3.6.2);
    - the return path (the envelope sender, else the Return-Path header) is known, and its domain is
      aligned with the From domain: the same organizational domain, DMARC's relaxed alignment
      (RFC 7489 section 3.1.2), so `ana@school.org` sent through `mail.school.org` qualifies.

    Why: RFC 3834 section 4 sends automatic responses to the return path, because that is the party
    responsible for the message, while From can name anyone. mailbot's confirmation is addressed to a
    person, so it goes to From, but only when the envelope agrees that the writer's own domain sent it:
    otherwise From may be a stranger's address put on someone else's mail, and "no mail to someone who
    did not write" wins over answering. The return path itself is never used: it is a bounce-processing
    mailbox (VERP, SRS, a bulk sender's) more often than a person. Reply-To is never used either: anyone
    may set it, to a list or to a third party to be bombarded with our replies.
    """
    if automatic_reason(message, envelope_sender) is not None:
        return None
    return aligned_author(message, envelope_sender)


def aligned_author(message: EmailMessage, envelope_sender: str | None) -> str | None:
    """The one From mailbox when the return path's domain is aligned with it, else None: the rule of
    `may_auto_reply_to` without its check that a person wrote the message (for callers that made it)."""
    return_path = _return_path(message, envelope_sender)
    if not return_path or [name.lower() for name in message].count("from") != 1:
        return None
    authors = header_addresses(message, "From")
    if len(authors) != 1 or not authors[0].username or not authors[0].domain:
        return None
    author = authors[0]
    if not aligned(return_path.rpartition("@")[2], author.domain):
        return None
    return author.addr_spec


def _return_path(message: EmailMessage, envelope_sender: str | None) -> str | None:
    """The reverse-path without angle brackets ("" for a null one), or None when it is not known."""
    path = envelope_sender if envelope_sender is not None else message.get("Return-Path")
    if path is None:
        return None
    return _without_comments(str(path)).strip().removeprefix("<").removesuffix(">").strip()


def _loop_mark(names: frozenset[str]) -> str | None:
    return f"{LOOP_HEADER} header (sent by a mailbot)" if LOOP_HEADER.lower() in names else None


def _auto_submitted(message: EmailMessage, names: frozenset[str]) -> str | None:
    for keyword in _keywords(message, names, "Auto-Submitted"):
        if keyword and keyword != "no":
            return f"Auto-Submitted: {keyword}"
    return None


def _precedence(message: EmailMessage, names: frozenset[str]) -> str | None:
    keywords = _keywords(message, names, "Precedence")
    return next((f"Precedence: {k}" for k in keywords if k in _BULK_PRECEDENCE), None)


def _list_header(names: frozenset[str]) -> str | None:
    return next((f"mailing list ({name} header)" for name in _LIST_HEADERS if name.lower() in names), None)


def _responses_suppressed(message: EmailMessage, names: frozenset[str]) -> str | None:
    if "x-auto-response-suppress" not in names:
        return None
    for value in message.get_all("X-Auto-Response-Suppress", []):
        if {item.strip().lower() for item in str(value).split(",")} & _SUPPRESSED_RESPONSES:
            return f"X-Auto-Response-Suppress: {str(value).strip()}"
    return None


def _autoresponder_header(names: frozenset[str]) -> str | None:
    return next(
        (f"autoresponder ({name} header)" for name in _AUTORESPONDER_HEADERS if name.lower() in names), None
    )


def _report(message: EmailMessage) -> str | None:
    if message.get_content_type() != "multipart/report":
        return None
    return "multipart/report (a machine-made report)"


def _system_address(message: EmailMessage, names: frozenset[str], return_path: str | None) -> str | None:
    candidates = [
        address.addr_spec
        for name in ("From", "Sender")
        if name.lower() in names
        for address in header_addresses(message, name)
    ]
    if return_path:
        candidates.append(return_path)
    for address in candidates:
        head, at, tail = address.rpartition("@")
        # A bare local part happens: sendmail writes "Return-Path: <MAILER-DAEMON>" for a null sender.
        local = (head if at else tail).strip('"').lower().partition("+")[0]
        if (
            local in _SYSTEM_LOCAL_PARTS
            or local.startswith(_SYSTEM_PREFIXES)
            or local.endswith(_SYSTEM_SUFFIXES)
        ):
            return f"sent by a mail system or list manager ({address})"
    return None


def _keywords(message: EmailMessage, names: frozenset[str], name: str) -> Iterator[str]:
    """The leading keyword of each `name` header, lowercased, without comments or `;` parameters."""
    if name.lower() not in names:
        return
    for value in message.get_all(name, []):
        yield _without_comments(str(value)).partition(";")[0].strip().lower()


def _without_comments(text: str) -> str:
    """`text` without RFC 5322 comments; nested ones are peeled from the inside out."""
    count = 1
    while count:
        text, count = _COMMENT.subn(" ", text)
    return text


def header_addresses(message: EmailMessage, name: str) -> list[Address]:
    """The mailboxes of every `name` header (groups flattened); none for a header too broken or too long
    to parse (over MAX_ADDRESS_FIELD characters)."""
    wanted = name.lower()
    fields = [(key, value) for key, value in message.raw_items() if key.lower() == wanted]
    if any(len(value) > MAX_ADDRESS_FIELD for _, value in fields):
        return []
    fast = _reads_as_registry(message, wanted)
    try:
        return [address for key, value in fields for address in _field_addresses(message, key, value, fast)]
    except _PARSER_FAILURES:
        return []


def _reads_as_registry(message: EmailMessage, name: str) -> bool:
    """Whether the message's policy reads a `name` field with the stdlib registry's address header, which is
    what simple_mailboxes reproduces (compat32 gives plain strings, with no addresses at all)."""
    factory = getattr(message.policy, "header_factory", None)
    return (
        isinstance(message.policy, EmailPolicy)
        and isinstance(factory, HeaderRegistry)
        and factory.base_class is BaseHeader
        and issubclass(factory.registry.get(name, factory.default_class), AddressHeader)
    )


def _field_addresses(message: EmailMessage, key: str, value: str, fast: bool) -> Sequence[Address]:
    """One field's mailboxes as message.get_all() reads them; with `fast`, a simple source value skips the
    registry (a header object, set in code, is already parsed)."""
    found = cached_mailboxes(value) if fast and type(value) is str else None
    if found is None:
        return getattr(message.policy.header_fetch_parse(key, value), "addresses", ())
    return found
