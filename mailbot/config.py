"""The configuration file (TOML) -> frozen, validated values.

Every error names the key and what is wrong, in one line, so `check-config` and `run` can refuse a bad file
without a traceback. Durations are strings ("30s", "15m", "4h", "2d"); sizes are bytes or strings ("25MB").
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mailbot.errors import ConfigError
from mailbot.hours import BusinessHours

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_duration(value: object) -> timedelta:
    """'30s', '15m', '4h', '2d' (also '500ms') -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match[1]) * _DURATION_UNITS[match[2]])
    raise ValueError(f"expected a duration like \"30s\", \"15m\", \"4h\" or \"2d\", got {value!r}")


def parse_size(value: object) -> int:
    """An integer number of bytes, or a string like '25MB' / '512KiB'."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]
    raise ValueError(f"expected a size in bytes or like \"25MB\", got {value!r}")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret(value: str | None, path: Path | None) -> str | None:
    """A secret given inline or, better, by file (systemd's LoadCredential=); one trailing newline stripped."""
    if path is None:
        return value
    try:
        return path.read_text(encoding="utf-8").removesuffix("\n")
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Section):
    url: str = "sqlite:///var/mailbot.db"
    lock_timeout: Duration = timedelta(seconds=10)  # how long a write waits for another writer (SQLite)

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        if not url.startswith(("sqlite:", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
        return url


class SupportConfig(_Section):
    addresses: list[str] = Field(default_factory=lambda: ["herosupport@schoolmint.com"], min_length=1)
    from_: str = Field("Hero Support <herosupport@schoolmint.com>", alias="from")
    templates: Path | None = None  # a folder of templates to use instead of the shipped ones
    # Domains customers are told to allow, besides those of `from`, `addresses` and outbound.dkim.domain.
    sender_domains: list[str] = Field(default_factory=list)
    # Attachments passed on in one message (to a specialist, to a customer); the rest are named, not attached.
    max_attachments_size: Size = 10 * 10**6

    @field_validator("addresses")
    @classmethod
    def _lowercase(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            if address.count("@") != 1 or " " in address:
                raise ValueError(f"{address!r} is not an email address")
        return [a.lower() for a in addresses]


class SmtpConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(2525, ge=0, le=65535)
    protocol: Literal["smtp", "lmtp"] = "smtp"
    hostname: str | None = None  # the name we greet with; default: the host part of support.from
    max_message_size: Size = 25 * 10**6
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_starttls: bool = False
    max_recipients: int = Field(50, ge=1)
    max_sessions: int = Field(200, ge=1)
    max_sessions_per_client: int = Field(20, ge=1)
    max_commands: int = Field(10_000, ge=10)  # uses of each mail command (MAIL, RCPT, DATA...) per session
    timeout: Duration = timedelta(minutes=5)

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.require_starttls and self.tls_cert is None:
            raise ValueError("require_starttls needs tls_cert and tls_key")
        return self


class ImapConfig(_Section):
    host: str
    port: int = Field(993, ge=1, le=65535)
    security: Literal["ssl", "starttls", "none"] = "ssl"
    username: str
    password: str | None = None
    password_file: Path | None = None
    folder: str = "INBOX"
    processed_folder: str | None = "Processed"
    failed_folder: str = "Failed"
    idle: bool = True
    poll_interval: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _checks(self) -> ImapConfig:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password and password_file")
        if self.security == "none" and not is_loopback(self.host):
            raise ValueError('security = "none" is allowed only on a loopback host')
        return self

    @property
    def name(self) -> str:
        return f"{self.username}@{self.host}:{self.port}/{self.folder}"


class DkimConfig(_Section):
    domain: str
    selector: str
    private_key_file: Path


class OutboundConfig(_Section):
    transport: Literal["smtp", "maildir"] = "smtp"
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    maildir: Path = Path("var/sent")
    timeout: Duration = timedelta(seconds=30)
    retry_max_interval: Duration = timedelta(seconds=60)
    dkim: DkimConfig | None = None


class BusinessHoursConfig(_Section):
    timezone: str = "America/New_York"
    open_days: list[str] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"])
    opens: str = "08:00"
    closes: str = "18:00"
    holidays: list[date] = Field(default_factory=list)
    holiday_country: str | None = None

    @field_validator("open_days")
    @classmethod
    def _days(cls, days: list[str]) -> list[str]:
        for day in days:
            if day.lower() not in _DAYS:
                raise ValueError(f"{day!r} is not one of {', '.join(_DAYS)}")
        return [d.lower() for d in days]

    @model_validator(mode="after")
    def _buildable(self) -> BusinessHoursConfig:
        self.business_hours()  # the clock is the authority on what it accepts (it raises ValueError)
        return self

    def business_hours(self) -> BusinessHours:

        return BusinessHours.from_settings(
            timezone=self.timezone,
            open_days=self.open_days,
            opens=self.opens,
            closes=self.closes,
            holidays=self.holidays,
            holiday_country=self.holiday_country,
        )


class SlaConfig(_Section):
    confirmation_within: Duration = timedelta(hours=1)
    introduction_within: Duration = timedelta(hours=4)
    auto_assign_after: Duration = timedelta(hours=3)
    at_risk_margin: Duration = timedelta(minutes=15)  # a failing relay this close to a deadline is reported
    sweep_interval: Duration = timedelta(seconds=30)  # the periodic check, beside wake-ups at each due instant
    reopen_within: Duration = timedelta(days=14)  # a reply after resolution reopens; later, a new linked ticket

    @model_validator(mode="after")
    def _order(self) -> SlaConfig:
        if self.auto_assign_after > self.introduction_within:
            raise ValueError("auto_assign_after must not exceed introduction_within")
        return self


class SecurityConfig(_Section):
    require_sender_auth: bool = True
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    # A trial switch (the shipped config.toml): believe the From of mail submitted over SMTP from a loopback
    # address. Never on a host where an MTA relays mail to mailbot over loopback.
    trust_local_submission: bool = False
    explanations_per_day: int = Field(3, ge=0)  # explanations to one address in any 24 hours
    auth_retry_for: Duration = timedelta(days=1)  # DNS failures: retry this long, then hold the ticket
    # The key of the reply tokens (mailbot.tokens); neither given: one is generated and kept in the database.
    secret: str | None = Field(None, min_length=16)
    secret_file: Path | None = None
    # mailbot.governor: confirmations, explanations and introductions to one address per window, for anyone
    # but an entitled named contact (auto_reply_limit) and for a named contact's issues (contact_mail_limit:
    # above what a person writing real issues reaches, far below a responder's loop); hard bounces that mark
    # a contact (mailbot.loops).
    auto_reply_limit: int = Field(10, ge=0)
    contact_mail_limit: int = Field(100, ge=0)
    auto_reply_window: Duration = timedelta(hours=24)
    bouncing_after: int = Field(3, ge=1)
    ticket_mail_per_hour: int = Field(20, ge=1)  # notifications + relays on one ticket: more is a mail loop

    @model_validator(mode="after")
    def _one_secret(self) -> SecurityConfig:
        if self.secret is not None and self.secret_file is not None:
            raise ValueError("give at most one of secret and secret_file")
        return self


class MetricsConfig(_Section):
    """The operator's HTTP endpoint (mailbot.metrics): /metrics, /healthz, /readyz. Off unless `listen` is set."""

    listen: str | None = None  # "127.0.0.1:9187", "[::1]:9187"; a bare port ("9187", ":9187") is loopback

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str | None) -> str | None:
        if listen is not None:
            split_listen(listen)  # raises ValueError naming what is wrong
        return listen

    @property
    def address(self) -> tuple[str, int] | None:
        return None if self.listen is None else split_listen(self.listen)


class DaemonConfig(_Section):
    """How `mailbot run` spreads its work over processes (mailbot.supervisor)."""

    # "processes": the doors (listener, IMAP, /metrics) in the main process, the intake and the sender in one
    # worker process each; "single": all in one process (one core); "auto": processes when this process may
    # run on two CPUs or more.
    layout: Literal["auto", "processes", "single"] = "auto"

    def separate(self, cpus: int) -> bool:
        """Whether the workers run in processes of their own, on a machine that gives this process `cpus`."""
        return self.layout == "processes" or (self.layout == "auto" and cpus >= 2)


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9187' -> ('127.0.0.1', 9187); '[::1]:9187' -> ('::1', 9187); '9187' or ':9187' ->
    ('127.0.0.1', 9187): loopback unless an address is given ("0.0.0.0:9187" for every IPv4 address)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:  # 0: any free port (tests)
        raise ValueError(f'expected "HOST:PORT" like "127.0.0.1:9187", got {listen!r}')
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address (give 127.0.0.1, ::1 or another address)") from None
    return host, int(port)


class Config(_Section):
    database: DatabaseConfig = DatabaseConfig()
    support: SupportConfig = SupportConfig()
    smtp: SmtpConfig = SmtpConfig()
    imap: list[ImapConfig] = Field(default_factory=list)
    outbound: OutboundConfig = OutboundConfig()
    business_hours: BusinessHoursConfig = BusinessHoursConfig()
    sla: SlaConfig = SlaConfig()
    security: SecurityConfig = SecurityConfig()
    metrics: MetricsConfig = MetricsConfig()
    daemon: DaemonConfig = DaemonConfig()
    path: Path | None = Field(None, exclude=True)  # where it was read from, for messages

    def refusal(self) -> str | None:
        """What is wrong across sections, as "key: what", or None. Checked at load like any bad value."""
        if self.security.trust_local_submission and not is_loopback(self.smtp.host):
            # Beyond loopback, "submitted from 127.0.0.1" is whatever a local proxy or MTA relays from afar.
            return (
                f"security.trust_local_submission: allowed only when the listener is on loopback "
                f"([smtp] host is {self.smtp.host!r})"
            )
        return None


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    return f"{source}: {key or '(top level)'}: {message}"


def from_mapping(data: dict[str, Any], source: str = "config") -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    if (wrong := config.refusal()) is not None:
        raise ConfigError(f"{source}: {wrong}")
    return config


def locate(explicit: str | Path | None) -> Path:
    """--config PATH, else $MAILBOT_CONFIG, else ./config.toml (INTERFACE.md)."""
    return Path(explicit or os.environ.get("MAILBOT_CONFIG") or "config.toml")


def load(explicit: str | Path | None = None) -> Config:
    path = locate(explicit)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    config = from_mapping(data, str(path))
    return config.model_copy(update={"path": path.resolve()})
