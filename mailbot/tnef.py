"""Outlook's winmail.dat (TNEF, MS-OXTNEF) -> the body and the attachments it hides.

Outlook with rich text on sends its body and its attachments inside one `application/ms-tnef` part that
no other mail program reads. tnefparse reads the container; compressed_rtf and striprtf turn a rich-text
body into text. Pure: bytes in, a value out. A container that cannot be read gives None, and the caller
keeps winmail.dat as the attachment it arrived as.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from striprtf.striprtf import rtf_to_text
from tnefparse import TNEF

TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}
_NAME = "winmail.dat"

# tnefparse logs a warning for every checksum it finds wrong and every attribute it does not know; that
# is the sender's business, and hostile input could fill the log with it.
logging.getLogger("tnefparse").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Unpacked:
    """What a winmail.dat held: its text body, its HTML body (None when none), its files (name, bytes)."""

    text: str
    html: str | None
    files: list[tuple[str, bytes]]


def is_tnef(content_type: str, filename: str | None) -> bool:
    return content_type in TNEF_TYPES or (filename or "").lower() == _NAME


def unpack(data: bytes, max_files: int) -> Unpacked | None:
    """The body and at most `max_files` attachments of a TNEF container; None when it cannot be read."""
    try:
        container = TNEF(data, do_checksum=False)
        text = _text(container.body) or _rtf_text(container)
        html = _text(container.htmlbody) or None
        files = [(attachment.long_filename(), bytes(attachment.data)) for attachment in container.attachments]
    # tnefparse and compressed_rtf read lengths and offsets straight from untrusted bytes, and a damaged
    # container makes them raise whatever their arithmetic meets (struct.error, IndexError, ValueError,
    # UnicodeDecodeError, ...): all of it means "this winmail.dat cannot be read", none of it is our failure.
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(__name__).debug("winmail.dat cannot be read: %s", exc)
        return None
    return Unpacked(text, html, files[:max_files])


def _text(value: bytes | str | None) -> str:
    """A body property: bytes in the container's code page are cp1252 in practice; NULs end it."""
    if value is None:
        return ""
    text = value.decode("cp1252", "replace") if isinstance(value, bytes) else value
    return text.split("\x00", 1)[0].strip()


def _rtf_text(container: TNEF) -> str:
    """The rich-text body (PR_RTF_COMPRESSED, decompressed by tnefparse with compressed_rtf) as plain text."""
    rtf = container.rtfbody
    if not rtf:
        return ""
    return str(rtf_to_text(rtf.decode("cp1252", "replace"))).strip()
