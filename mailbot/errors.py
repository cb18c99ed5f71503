"""The exceptions mailbot raises on purpose.

    MailbotError
    ├── ConfigError            the configuration file is wrong (one line names the key)
    ├── RefusedError           a request a user made is refused (CLI exit 1, one line on stderr)
    ├── TransientError         try again later: the caller answers 451 / exit 75 / retries
    │   ├── TransientStoreError    the database could not commit
    │   └── TransientDNSError      a DNS look-up failed (never read as a pass)
    └── WorkerError            a worker process of `mailbot run` could not start (mailbot.supervisor)

Outcomes of business rules (held, duplicate, ignored) are values, not exceptions.
"""

from __future__ import annotations


class MailbotError(Exception):
    """Base of every deliberate mailbot error."""


class ConfigError(MailbotError):
    """The configuration is invalid; str() is one line naming the key."""


class RefusedError(MailbotError):
    """A user's request is refused by a rule; str() says which rule."""


class TransientError(MailbotError):
    """A temporary failure: nothing was decided, the same input may succeed later."""


class TransientStoreError(TransientError):
    """The database could not durably store or read what was asked."""


class TransientDNSError(TransientError):
    """A DNS look-up failed or timed out."""


class WorkerError(MailbotError):
    """A worker process could not start; str() says which and why."""
