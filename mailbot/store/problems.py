"""Database errors in words: one line with the driver's own reason, and which of them waiting cannot fix.

`TransientStoreError` keeps its meaning everywhere (try again later: 451, exit 75, a retry); these functions
only say what the driver said, and let the command line tell a lasting mistake (a database that does not
exist, a refused login, a schema older than the code) from a passing one (the server is down, a lock).
Connection failures carry no SQLSTATE in psycopg 3, so those are recognised by the server's words
(PostgreSQL's default English messages; a server set to another lc_messages is reported as temporary).
"""

from __future__ import annotations

import re

# SQLSTATE classes and codes (PostgreSQL appendix A): 28 invalid authorization, 3D000 invalid catalog
# name, 42P01 undefined table, 42703 undefined column.
_NO_SCHEMA_STATES = {"42P01", "42703"}
_SETUP_STATES = {"3D000", "28000", "28P01"}
_SETUP_WORDS = re.compile(
    r'FATAL:\s+(database "[^"]*" does not exist|role "[^"]*" does not exist|password authentication failed'
    r"|no pg_hba\.conf entry)"
)
_NO_SCHEMA_WORDS = re.compile(r"^no such (table|column)\b")  # SQLite's words


def describe(exc: BaseException) -> str:
    """The driver's reason in one line: `OperationalError: database is locked`."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__


def lasting_problem(exc: BaseException) -> str | None:
    """A one-line instruction when `exc` (or an error it was raised from) is a database set-up mistake
    that retrying will not fix; None when it may pass."""
    seen: BaseException | None = exc
    while seen is not None:  # SQLAlchemy's error holds the driver's as .orig; the store's raw SQLite calls chain it
        if (problem := _judge(getattr(seen, "orig", None) or seen)) is not None:
            return problem
        seen = seen.__cause__
    return None


def _judge(orig: BaseException) -> str | None:
    state = getattr(orig, "sqlstate", None)
    text = " ".join(str(orig).split())
    if state in _NO_SCHEMA_STATES or _NO_SCHEMA_WORDS.match(text):
        return f"the database has no mailbot schema, or an older one ({text}): run `mailbot db upgrade`"
    match = _SETUP_WORDS.search(text)
    if state in _SETUP_STATES or match is not None:
        reason = match[1] if match is not None else text
        return f"database.url: {reason} (create the database and its owner, then run `mailbot db upgrade`)"
    return None
