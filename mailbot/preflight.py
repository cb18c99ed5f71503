"""What `run` and `check-config` refuse before anything starts: files the configuration names that cannot
be read or used. Each problem is one line naming the key, so a daemon never starts, logs "started", and then
fails every 15 seconds on a key file it could have read at start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from mailbot.config import Config, read_secret
from mailbot.errors import ConfigError


def problems(config: Config) -> list[str]:
    """Every unusable file or secret the configuration names, one line each (empty: all usable)."""
    found = []
    for check in _checks(config):
        try:
            check()
        except ConfigError as exc:
            found.append(str(exc))
    return found


def _checks(config: Config) -> Iterator[Callable[[], object]]:
    outbound, security = config.outbound, config.security
    if (dkim := outbound.dkim) is not None:
        from mailbot.signing import DkimSigner  # reads and parses the key, as the sender will

        yield lambda: DkimSigner.from_file(dkim.domain, dkim.selector, dkim.private_key_file)
    if outbound.password_file is not None:
        yield partial(_secret, "outbound.password_file", outbound.password_file)
    for number, mailbox in enumerate(config.imap, 1):
        if mailbox.password_file is not None:
            yield partial(_secret, f"imap[{number}].password_file", mailbox.password_file)
    if security.secret_file is not None:
        from mailbot.app import site_secret  # the same rule the daemon applies

        yield lambda: site_secret(security)
    if config.smtp.enabled and config.smtp.tls_cert is not None:
        yield lambda: _tls(config)
    if (templates := config.support.templates) is not None:
        yield lambda: _folder("support.templates", templates)
    yield lambda: _templates(config)


def _secret(key: str, path: Path) -> None:
    try:
        read_secret(None, path)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _tls(config: Config) -> None:
    import ssl

    from mailbot.listener import tls_context

    try:
        tls_context(config.smtp)
    except (OSError, ssl.SSLError) as exc:
        detail = exc.strerror or str(exc)
        raise ConfigError(f"smtp.tls_cert/tls_key: cannot load {config.smtp.tls_cert}: {detail}") from None


def _folder(key: str, path: Path) -> None:
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a readable folder")


def _templates(config: Config) -> None:
    """Every template compiles (the shipped ones, or `support.templates`), as the composer will read them."""
    from mailbot.app import shipped_templates
    from mailbot.compose import Composer, Identity

    folder = config.support.templates or shipped_templates()
    if not folder.is_dir():
        return  # said by the folder check
    broken = Composer(folder, Identity.parse(config.support.from_), loop_secret=b"").check_templates()
    if broken:
        raise ConfigError("support.templates: " + "; ".join(broken))
