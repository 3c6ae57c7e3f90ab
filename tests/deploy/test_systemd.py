"""deploy/systemd: one unit per service plus mailexec.target, read statically (and checked
with `systemd-analyze verify` where it is installed). What the units promise is what
`mailexec up` and deploy/compose.yaml already do: the same secrets withheld, the same
exits not restarted, the executor bounded by the same capabilities."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from mailexec import supervisor

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
ENV = UNITS / "env"
SECRETS = ("MAILEXEC_DATABASE_URL", "MAILEXEC_AMQP_URL", "MAILEXEC_ADMIN_TOKEN",
           "MAILEXEC_INGEST_TOKEN", "MAILEXEC_SERVICE_TOKEN", "MAILEXEC_CONSOLE_SECRET")

Unit = dict[str, dict[str, list[str]]]


def parse(path: Path) -> Unit:
    """A unit file: section -> key -> every value given (keys may repeat, as Wants= does)."""
    unit: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"{path.name}: {raw!r}"
        unit[section][key.strip()].append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


def service_unit(name: str) -> Unit:
    return parse(UNITS / f"mailexec-{name}.service")


def env_names(path: Path) -> set[str]:
    return {line.split("=", 1)[0] for line in path.read_text().splitlines()
            if line and not line.startswith("#")}


def test_one_unit_per_service_and_a_target_that_wants_them_all() -> None:
    shipped = {p.name for p in UNITS.iterdir() if p.is_file()}
    expected = {f"mailexec-{s}.service" for s in supervisor.SERVICES} | {"mailexec.target"}
    assert shipped == expected
    target = parse(UNITS / "mailexec.target")
    wants = {w for line in target["Unit"]["Wants"] for w in line.split()}
    assert wants == expected - {"mailexec.target"}
    assert one(target, "Install", "WantedBy") == "multi-user.target"
    for name in supervisor.SERVICES:
        unit = service_unit(name)
        assert one(unit, "Unit", "PartOf") == "mailexec.target"
        assert one(unit, "Install", "WantedBy") == "mailexec.target"
        assert one(unit, "Service", "ExecStart") == f"/opt/mailexec/bin/mailexec serve {name}"


def test_no_socket_unit_while_ingest_binds_its_own() -> None:
    """A .socket unit only works if ingest takes the inherited fd (LISTEN_FDS); it binds
    MAILEXEC_LMTP_SOCKET itself, so none is shipped (the ingest unit says how instead)."""
    ingest = "".join(p.read_text() for p in (REPO / "services" / "ingest").glob("*.py"))
    assert "LISTEN_FDS" not in ingest
    assert not list(UNITS.glob("*.socket"))
    assert "MAILEXEC_LMTP_SOCKET=" in (UNITS / "mailexec-ingest.service").read_text()


def test_restarts_as_mailexec_up_does() -> None:
    for name in supervisor.SERVICES:
        unit = service_unit(name)
        assert one(unit, "Service", "Restart") == "on-failure"
        prevent = {int(x) for x in one(unit, "Service", "RestartPreventExitStatus").split()}
        assert prevent == set(supervisor.NOT_RESTARTED), name


def test_each_service_reads_only_its_own_secrets() -> None:
    common = env_names(ENV / "mailexec.env.example")
    assert not {n.removesuffix("_FILE") for n in common} & set(SECRETS), "no secret is shared"
    for name in supervisor.SERVICES:
        files = service_unit(name)["Service"]["EnvironmentFile"]
        assert files == ["-/etc/mailexec/mailexec.env", f"/etc/mailexec/{name}.env"], name
        names = {n.removesuffix("_FILE") for n in env_names(ENV / f"{name}.env.example")}
        assert names, name
        assert not names & set(supervisor.WITHHELD.get(name, ())), name
    assert {n for n in env_names(ENV / "console.env.example")} == {"MAILEXEC_CONSOLE_SECRET"}
    assert set(SECRETS) - env_names(ENV / "executor.env.example") == {
        "MAILEXEC_ADMIN_TOKEN", "MAILEXEC_INGEST_TOKEN", "MAILEXEC_CONSOLE_SECRET"}


def test_unprivileged_services_are_hardened() -> None:
    for name in set(supervisor.SERVICES) - {"executor"}:
        s = service_unit(name)["Service"]
        assert s["User"] == ["mailexec"] and s["Group"] == ["mailexec"], name
        assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""], name
        for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                           "NoNewPrivileges": "yes", "RestrictSUIDSGID": "yes",
                           "RestrictNamespaces": "yes"}.items():
            assert s[key] == [value], (name, key)


def test_executor_is_bounded_by_composes_capabilities_and_gets_a_cgroup_subtree() -> None:
    s = service_unit("executor")["Service"]
    assert "User" not in s, "starts as root, and only to drop (docs/security.md)"
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    cap_add = {f"CAP_{c}" for c in compose["services"]["executor"]["cap_add"]}
    bounding = set(one({"S": s}, "S", "CapabilityBoundingSet").split())
    # plus DAC_OVERRIDE, which a bare host needs for clone3 into the delegated run cgroups
    # (docs/security.md; compose and the chart have no cgroup mount)
    assert bounding == cap_add | {"CAP_DAC_OVERRIDE"}
    assert "CAP_DAC_OVERRIDE" in (REPO / "docs" / "security.md").read_text().replace(
        "`DAC_OVERRIDE`", "CAP_DAC_OVERRIDE")
    assert s["Delegate"] == ["yes"]
    assert s["NoNewPrivileges"] == ["yes"]  # as compose's no-new-privileges:true
    assert "no-new-privileges:true" in compose["services"]["executor"]["security_opt"]
    assert s["ProtectSystem"] == ["full"] and "ProtectHome" not in s  # programs write in homes
    assert "RestrictNamespaces" not in s and "ProtectControlGroups" not in s  # the sandbox needs them
    assert s["ExecStartPre"] == ["/opt/mailexec/bin/mailexec serve executor --self-check"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own check; ExecStart points at this venv's mailexec (it must exist)."""
    mailexec = Path(sys.executable).with_name("mailexec")
    for path in UNITS.iterdir():
        if path.is_file():
            text = re.sub(r"/opt/mailexec/bin/mailexec", str(mailexec), path.read_text())
            (tmp_path / path.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True,
                          text=True, check=False, cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
