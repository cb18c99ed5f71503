"""docs/monitoring: the alerting rules pass promtool (syntax and their unit tests), and every metric the rules
and the Grafana dashboard query is one a running daemon serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mailers import message
from tests.test_endpoint import METRICS, scrape
from tests.world import World

MONITORING = Path(__file__).resolve().parent.parent / "docs" / "monitoring"
RULES = MONITORING / "mailbot.rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC = re.compile(r"\bmailbot_[a-z_]+\b")


def promtool(*argv: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `make test-deps` installs Debian's prometheus package, which has it")
    return subprocess.run(["promtool", *argv], cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_the_rules_are_valid() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    tested = promtool("test", "rules", "mailbot.rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, given to it as a recording rule."""
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(queries)]}]}
    (tmp_path / "dashboard.rules.yml").write_text(json.dumps(rules))  # JSON is YAML
    checked = promtool("check", "rules", "dashboard.rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(queries) >= 10


async def test_every_metric_queried_is_served(world: Callable[..., Any]) -> None:
    service: World = await world(METRICS)
    await service.send(message())
    await service.settle()
    served = {name for name, _ in await scrape(service.daemon)}
    queried = set(METRIC.findall(RULES.read_text())) | {m for q in dashboard_queries() for m in METRIC.findall(q)}
    assert len(queried) >= 12
    assert queried - served == set()
