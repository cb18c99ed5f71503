"""`mailbot db backup PATH`: a consistent copy of a SQLite database while the daemon writes to it.

SQLite's online backup API copies the pages under one read transaction; in WAL mode readers never block the
writer, so the daemon keeps accepting mail meanwhile, and the copy is the database as of one commit. The copy
is written to a private temporary file beside PATH (mode 0600: it holds every message and secret) and renamed
over PATH only when complete, so PATH is never a half-written backup.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from mailbot.errors import RefusedError


def backup(url: str, target: Path) -> int:
    """Copy the SQLite database of `url` to `target`; returns the copy's size in bytes."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise RefusedError(f"db backup copies SQLite databases; for PostgreSQL run: {pg_dump_command(url, target)}")
    source_path = parsed.database
    if not source_path or source_path == ":memory:":
        raise RefusedError("db backup needs a SQLite database file, not an in-memory one")
    try:
        source = sqlite3.connect(f"file:{source_path}?mode=rw", uri=True)  # never creates an empty database
    except sqlite3.Error as exc:
        raise RefusedError(f"cannot open the database {source_path}: {exc}") from None
    try:
        return _copy(source, target)
    finally:
        source.close()


def _copy(source: sqlite3.Connection, target: Path) -> int:
    try:
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise RefusedError(f"cannot write in {target.parent}: {exc.strerror}") from None
    os.close(handle)  # mkstemp made it 0600; sqlite3 opens it by name
    try:
        copy = sqlite3.connect(temporary)
        try:
            source.backup(copy)  # all pages in one step: one consistent snapshot
        finally:
            copy.close()
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except sqlite3.Error as exc:
        raise RefusedError(f"backup failed: {exc}") from None
    except OSError as exc:
        raise RefusedError(f"cannot write {target}: {exc.strerror}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target.stat().st_size


def pg_dump_command(url: str, target: Path) -> str:
    """The pg_dump line for the database of `url` (its password left to ~/.pgpass or PGPASSWORD)."""
    parsed = make_url(url)
    options = [f"--host={parsed.host}" if parsed.host else "", f"--port={parsed.port}" if parsed.port else "",
               f"--username={parsed.username}" if parsed.username else ""]
    return " ".join(["pg_dump", "--format=custom", f"--file={target}", *filter(None, options), parsed.database or ""])
