"""The shipped systemd files: the directives operators rely on, and systemd's own checkers when present."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD_DIR / "mailbot.service"
SYSUSERS = SYSTEMD_DIR / "mailbot.sysusers"
TMPFILES = SYSTEMD_DIR / "mailbot.tmpfiles"
VENV_DROP_IN = SYSTEMD_DIR / "mailbot-venv.conf"
EXAMPLE_CONFIG = SYSTEMD_DIR / "config.toml"
README = SYSTEMD_DIR.parent / "README.md"
VENV_MAILBOT = "/opt/mailbot/bin/mailbot"

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "UMask": "0027",
}


def parse_unit() -> configparser.ConfigParser:
    # strict=False: systemd allows a key to repeat (the last one wins here; see all_values()).
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # directive names are case-sensitive
    parser.read(UNIT, encoding="utf-8")
    return parser


def all_values(key: str) -> list[str]:
    """Every value of a repeatable directive, in order (configparser keeps only the last)."""
    lines = UNIT.read_text(encoding="utf-8").splitlines()
    return [line.split("=", 1)[1] for line in lines if line.startswith(key + "=")]


@pytest.fixture(scope="module")
def service() -> configparser.SectionProxy:
    return parse_unit()["Service"]


class TestUnitDirectives:
    """mailbot.service declares what the daemon and the operators count on."""

    def test_notify_and_watchdog(self, service: configparser.SectionProxy) -> None:
        """Readiness and liveness come from mailbot.notify, and only the main process may send them."""
        assert service["Type"] == "notify"
        assert service["NotifyAccess"] == "main"
        assert service["WatchdogSec"] == "30"

    def test_commands(self, service: configparser.SectionProxy) -> None:
        """The schema is upgraded before the daemon runs, both with the same binary and config."""
        start, pre = service["ExecStart"].split(), service["ExecStartPre"].split()
        assert start[-1] == "run"
        assert pre[-2:] == ["db", "upgrade"]
        assert start[:3] == pre[:3] == ["/usr/bin/mailbot", "--config", "${MAILBOT_CONFIG}"]
        assert service["Environment"] == "MAILBOT_CONFIG=/etc/mailbot/config.toml"

    def test_lifecycle(self, service: configparser.SectionProxy) -> None:
        """SIGTERM drains, a crash restarts, a stuck drain is killed after a bound; SIGTERM reaches the main
        process alone, which stops its worker processes in order (mailbot.supervisor)."""
        assert service["KillSignal"] == "SIGTERM"
        assert service["KillMode"] == "mixed"
        assert service["Restart"] == "on-failure"
        assert int(service["TimeoutStopSec"]) > 0

    def test_user_and_state(self, service: configparser.SectionProxy) -> None:
        """A fixed system user that sysusers.d creates, owning /var/lib/mailbot."""
        assert service["User"] == service["Group"] == "mailbot"
        assert service.get("DynamicUser", "no") == "no"
        assert service["StateDirectory"] == "mailbot"
        assert SYSUSERS.read_text(encoding="utf-8").splitlines()[-1].split()[:2] == ["u", "mailbot"]

    def test_secrets_come_as_credentials(self) -> None:
        """The IMAP password and the DKIM key reach the service through LoadCredential=."""
        assert all_values("LoadCredential") == ["mailbot.imap-password", "mailbot.dkim-key"]

    def test_hardening(self, service: configparser.SectionProxy) -> None:
        """The sandbox a careful distribution ships."""
        assert {key: service.get(key) for key in HARDENING} == HARDENING
        assert all_values("SystemCallFilter")[0] == "@system-service"

    def test_installs_into_multi_user(self) -> None:
        """`systemctl enable` starts it at boot."""
        assert parse_unit()["Install"]["WantedBy"] == "multi-user.target"


def directives(text: str) -> list[str]:
    """The lines of a unit file or drop-in that are not comments or blank."""
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", ";"))]


def readme_drop_in() -> list[str]:
    """The drop-in README shows for `systemctl edit mailbot` (the ini block that starts with [Service])."""
    blocks = re.findall(r"```ini\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    [block] = [b for b in blocks if b.startswith("[Service]")]
    return directives(block)


class TestPathsAgree:
    """README, the unit, its drop-in and the example configuration name the same places."""

    def test_readme_shows_the_shipped_drop_in(self) -> None:
        assert readme_drop_in() == directives(VENV_DROP_IN.read_text(encoding="utf-8"))

    def test_drop_in_resets_then_runs_the_units_commands_from_the_venv(self) -> None:
        lines = directives(VENV_DROP_IN.read_text(encoding="utf-8"))
        unit = {key: value.replace("/usr/bin/mailbot", VENV_MAILBOT) for key, value in parse_unit()["Service"].items()}
        assert lines == ["[Service]", "ExecStartPre=", f"ExecStartPre={unit['ExecStartPre']}",
                         "ExecStart=", f"ExecStart={unit['ExecStart']}"]

    def test_readme_installs_where_the_unit_looks(self) -> None:
        readme = README.read_text(encoding="utf-8")
        service = parse_unit()["Service"]
        assert f"python3 -m venv {VENV_MAILBOT.removesuffix('/bin/mailbot')} " in readme
        config_path = service["Environment"].removeprefix("MAILBOT_CONFIG=")
        assert f"systemd/config.toml {config_path}" in readme
        credentials = set(re.findall(r"/etc/credstore/([\w.-]+)", readme))
        assert credentials and credentials <= set(all_values("LoadCredential"))

    def test_example_config_uses_the_units_state_and_credentials(self) -> None:
        import tomllib

        config = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
        state = f"/var/lib/{parse_unit()['Service']['StateDirectory']}/"
        assert config["database"]["url"].startswith(f"sqlite:///{state}")
        key = Path(config["outbound"]["dkim"]["private_key_file"])
        assert key.parent == Path("/run/credentials/mailbot.service") and key.name in all_values("LoadCredential")


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return tool


@pytest.fixture
def checkable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose command exists here: verify rejects a missing /usr/bin/mailbot."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text(encoding="utf-8").replace("/usr/bin/mailbot", sys.executable))
    return copy


class TestSystemdTools:
    """systemd's own tools accept the files (skipped where systemd is not installed)."""

    def test_verify(self, checkable_unit: Path) -> None:
        """systemd-analyze verify reports nothing: no unknown key, no unparsable value."""
        result = subprocess.run(
            [_systemd_analyze(), "verify", str(checkable_unit)], capture_output=True, text=True, check=False
        )
        assert (result.returncode, result.stderr.strip()) == (0, "")

    def test_venv_drop_in_is_accepted(self, tmp_path: Path) -> None:
        """The README's drop-in, beside the unit, passes verify; without its empty ExecStart= it would not."""
        unit_text = UNIT.read_text(encoding="utf-8").replace("/usr/bin/mailbot", sys.executable)
        drop_in = VENV_DROP_IN.read_text(encoding="utf-8").replace(VENV_MAILBOT, sys.executable)
        (tmp_path / UNIT.name).write_text(unit_text)
        (tmp_path / f"{UNIT.name}.d").mkdir()
        results = []
        for text in (drop_in, drop_in.replace("ExecStart=\n", "")):
            (tmp_path / f"{UNIT.name}.d" / "venv.conf").write_text(text)
            results.append(subprocess.run([_systemd_analyze(), "verify", str(tmp_path / UNIT.name)],
                                          capture_output=True, text=True, check=False))
        accepted, refused = results
        assert (accepted.returncode, accepted.stderr.strip()) == (0, "")
        assert refused.returncode != 0 and "more than one ExecStart=" in refused.stderr

    def test_security_exposure_stays_low(self, checkable_unit: Path) -> None:
        """The offline sandbox score stays at or under 2.0 of 10 ("OK"); a dropped directive raises it."""
        result = subprocess.run(
            [_systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(checkable_unit)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-400:] + result.stderr

    @pytest.mark.skipif(os.geteuid() != 0, reason="creating and chowning files in a fake root needs root")
    def test_sysusers_and_tmpfiles_apply(self, tmp_path: Path) -> None:
        """In an empty root, sysusers.d creates the user and tmpfiles.d its group-readable config dir."""
        for tool in ("systemd-sysusers", "systemd-tmpfiles"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is not installed")
        (tmp_path / "etc").mkdir()
        for command in (["systemd-sysusers", str(SYSUSERS)], ["systemd-tmpfiles", "--create", str(TMPFILES)]):
            subprocess.run([*command, f"--root={tmp_path}"], check=True, capture_output=True)
        groups = (line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines())
        gid = next(int(fields[2]) for fields in groups if fields[0] == "mailbot")
        config_dir = (tmp_path / "etc/mailbot").stat()
        assert (oct(config_dir.st_mode & 0o777), config_dir.st_uid, config_dir.st_gid) == ("0o750", 0, gid)
