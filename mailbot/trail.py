"""The decision trail: what the intake did with one message and why, one step per rule that ran, in order,
each with how long it took. Recorded as the intake decides, kept on the message's row (written with the
outcome, in the same flush), shown by `mailbot inbound show ID` and summed up in the daemon's log line.

A step is (step, verdict, detail, ms): `step` names the rule (reading, authentication, automatic mail,
duplicate, threading, entitlement, decision), `verdict` is its answer in a word or two, `detail` the why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    step: str
    verdict: str
    detail: str
    ms: float  # since the previous step ended (the first: since the trail began)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "verdict": self.verdict, "detail": self.detail, "ms": self.ms}


class Trail:
    """Steps appended as they are decided; `timer` is injectable so tests can pin the timings."""

    def __init__(self, steps: tuple[Step, ...] = (), timer: Callable[[], float] = time.perf_counter) -> None:
        self.steps = list(steps)
        self._timer = timer
        self._mark = timer()

    def add(self, step: str, verdict: str, detail: str = "") -> None:
        now = self._timer()
        self.steps.append(Step(step, verdict, detail, round((now - self._mark) * 1000, 3)))
        self._mark = now

    def to_json(self) -> list[dict[str, Any]]:
        return [step.to_json() for step in self.steps]

    @property
    def reason(self) -> str:
        """The why of the decision, for a log line: the last step's detail that says something."""
        return next((s.detail for s in reversed(self.steps) if s.detail), "")


def ended(steps: list[dict[str, Any]] | None, verdict: str, detail: str) -> list[dict[str, Any]]:
    """A stored trail with a closing decision step added (a failure or a deferral after the steps so far)."""
    return [*(steps or []), Step("decision", verdict, detail, 0.0).to_json()]
