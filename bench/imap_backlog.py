"""How fast MailboxWatcher drains a backlog, against a bare aioimaplib fetch of the same mailbox.

All passes run in one process against one private Dovecot (tests/dovecot.py) and the same mailbox, each
timed from connecting to the last answer: first a bare aioimaplib loop (log in, SELECT, UID FETCH ...
(UID BODY.PEEK[]) in ranges; it changes nothing), then MailboxWatcher.sync_once with a sink that keeps
nothing, once flagging each batch \\Seen (the messages stay) and once moving it to Processed.

    .venv/bin/python bench/imap_backlog.py [--messages 500] [--size 2000] [--batch 25]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable
from importlib import metadata
from pathlib import Path

import aioimaplib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailbot.config import ImapConfig
from mailbot.imap import MailboxWatcher
from tests.dovecot import HOST, Account, dovecot_binary, running_dovecot, sample_message


class NullSink:
    async def accept(self, raw: bytes, *, source: str) -> int:
        return 0

    async def unreadable(self, stored: list[int]) -> set[int]:
        return set()


class MemoryCursors:
    def __init__(self) -> None:
        self.saved: dict[str, tuple[int, int]] = {}

    async def load(self, mailbox: str) -> tuple[int | None, int]:
        return self.saved.get(mailbox, (None, 0))

    async def save(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        self.saved[mailbox] = (uidvalidity, last_uid)


async def plain_fetch(account: Account, count: int, batch: int) -> int:
    """Fetch UIDs 1..count in ranges of `batch` with bare aioimaplib; how many messages came back."""
    client = aioimaplib.IMAP4(HOST, account.server.port)
    await client.wait_hello_from_server()
    await client.login(account.username, account.password)
    await client.select("INBOX")
    fetched = 0
    for first in range(1, count + 1, batch):
        last = min(first + batch - 1, count)
        response = await client.uid("fetch", f"{first}:{last}", "(UID BODY.PEEK[])")
        fetched += sum(isinstance(line, bytearray) for line in response.lines)
    await client.logout()
    return fetched


async def watcher_pass(account: Account, batch: int, processed_folder: str | None) -> int:
    cfg = ImapConfig(
        host=HOST, port=account.server.port, security="none", username=account.username,
        password=account.password, processed_folder=processed_folder,
    )
    watcher = MailboxWatcher(cfg, NullSink(), MemoryCursors(), batch_size=batch)
    try:
        return await watcher.sync_once()
    finally:
        await watcher.stop()


async def timed(what: str, run: Awaitable[int], expected: int) -> float:
    """Print and return the rate of one measured run."""
    start = time.perf_counter()
    handled = await run
    seconds = time.perf_counter() - start
    if handled != expected:
        raise SystemExit(f"{what} handled {handled} messages, expected {expected}")
    print(f"  {what:<48} {expected / seconds:>9,.0f} messages/s  ({seconds:.3f} s)")
    return expected / seconds


async def measure(account: Account, count: int, batch: int) -> None:
    """Three passes over the same backlog: bare fetch, watcher flagging \\Seen, watcher moving."""
    plain = await timed("plain aioimaplib UID FETCH BODY.PEEK[]", plain_fetch(account, count, batch), count)
    for what, processed_folder in (("flag \\Seen", None), ("MOVE to Processed", "Processed")):
        rate = await timed(
            f"MailboxWatcher.sync_once ({what})", watcher_pass(account, batch, processed_folder), count
        )
        print(f"  {'':<48} {rate / plain:>9.2f} x plain")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--size", type=int, default=2000, help="body bytes per message")
    parser.add_argument("--batch", type=int, default=25, help="messages per UID FETCH")
    args = parser.parse_args()
    binary = dovecot_binary()
    if binary is None:
        raise SystemExit("Dovecot is not installed (apt-get install dovecot-imapd)")
    version = subprocess.run(
        [binary, "--version"], check=True, capture_output=True, text=True
    ).stdout.split()[0]
    with running_dovecot() as server:
        account = server.add_account("bench")
        account.deliver(sample_message(n, tag="bench", body_size=args.size) for n in range(args.messages))
        print(
            f"backlog of {args.messages} messages of {args.size} body bytes, fetched {args.batch} at a time "
            f"(Dovecot {version} on {HOST}, aioimaplib {metadata.version('aioimaplib')})"
        )
        asyncio.run(measure(account, args.messages, args.batch))


if __name__ == "__main__":
    main()
