"""The composition root: builds every part from the configuration, once."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from mailbot.clock import Clock, SystemClock
from mailbot.compose import Composer, Identity
from mailbot.config import Config
from mailbot.hours import BusinessHours
from mailbot.intake import Intake
from mailbot.processor import Processor
from mailbot.sender import Sender, make_transport
from mailbot.signing import DkimSigner
from mailbot.store import Database
from mailbot.workflow import Workflow

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


class App:
    def __init__(self, config: Config, clock: Clock | None = None, templates: Path | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.templates = templates or config.templates_dir() or TEMPLATES

    @cached_property
    def db(self) -> Database:
        database = self.config.database
        return Database(database.url, lock_timeout=database.lock_timeout.total_seconds())

    @cached_property
    def hours(self) -> BusinessHours:
        return self.config.business_hours.business_hours()

    @cached_property
    def identity(self) -> Identity:
        return Identity.parse(self.config.support.from_)

    @cached_property
    def composer(self) -> Composer:
        return Composer(self.templates, self.identity, loop_token=self.identity.address)

    @cached_property
    def workflow(self) -> Workflow:
        return Workflow(self.composer, self.hours, self.config.sla)

    @cached_property
    def intake(self) -> Intake:
        return Intake(self.workflow)

    @cached_property
    def processor(self) -> Processor:
        return Processor(self.db, self.intake, self.clock)

    @cached_property
    def sender(self) -> Sender:
        outbound = self.config.outbound
        signer = None
        if outbound.dkim is not None:
            signer = DkimSigner.from_file(outbound.dkim.domain, outbound.dkim.selector, outbound.dkim.private_key_file)
        return Sender(
            self.db, make_transport(outbound), self.clock, signer=signer, retry_cap=outbound.retry_max_interval
        )

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.close()
