"""What the CLI writes is safe to show on a terminal: no character a stranger put in their mail can drive it.

Subjects, names, addresses and bodies are customer text. A terminal obeys the escape sequences in it (ESC
`[`..., the C1 control CSI, OSC 8 links, title changes, a cursor moved back over a line to hide what it said),
and bidirectional overrides make text read differently from what it holds. Every such character leaves as
the six characters of its JSON escape, `\\u001b`: visible to a person, and, inside a JSON string (the only
place JSON output can hold one, as `json.dumps` escapes C0 itself), the very same character to a program, so
`--json` output stays valid and means what it meant. Line feeds and tabs are layout, and kept.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO

# C0 but tab and line feed, DEL, C1, and the bidirectional embeddings, overrides and isolates (Unicode TR 9).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every character that could drive a terminal written as its JSON escape."""
    return _UNSAFE.sub(lambda found: f"\\u{ord(found[0]):04x}", text)


class SafeStream:
    """A text stream that writes `printable` text to the stream it wraps (and is that stream otherwise)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(printable(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer...
        return getattr(self._stream, name)


@contextlib.contextmanager
def safe_output() -> Iterator[None]:
    """Standard output and error (the log included) made `printable` while the command runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(saved[0]), SafeStream(saved[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
