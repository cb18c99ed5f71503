"""Internal addresses out of text that goes to customers: a specialist's reply is relayed under their name only.

A specialist's signature or a line like "write to sam@schoolmint.com" would hand a customer an address that
bypasses the ticket. Each address of the support team in the text becomes the support address, which keeps
the sentence true and the conversation on the ticket. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from mailbot.addresses import normalize

# Loose on purpose (RFC 5322 atext in the local part, any dotted domain): it only has to find what a person
# typed or a signature carries; every hit is then compared by its normalized form.
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


def hide_addresses(text: str, internal: Collection[str], replacement: str) -> str:
    """`text` with every address that is one of `internal` (case and plus tags folded) replaced."""
    keys = {normalize(address) for address in internal}

    def swap(found: re.Match[str]) -> str:
        try:
            return replacement if normalize(found[0]) in keys else found[0]
        except ValueError:
            return found[0]

    return _ADDRESS.sub(swap, text)
