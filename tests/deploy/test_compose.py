"""deploy/compose.yaml: health-gated start order, hardening, real `mailexec` commands."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from mailexec import cli, supervisor

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"
LMTP_TLS = COMPOSE.with_name("compose.lmtp-tls.yaml")
MAILEXEC_SERVICES = {"ingest", "policy", "notifier", "executor"}
PORTS = {"ingest": 8025, "policy": 8026, "notifier": 8027, "executor": 8028}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def is_mailexec(service: dict[str, Any]) -> bool:
    return "mailexec" in str(service.get("image", ""))


def test_the_whole_pipeline_is_there(services: dict) -> None:
    assert set(services) == {"postgres", "rabbitmq", "mailpit", "migrate", *MAILEXEC_SERVICES}
    assert "management" in services["rabbitmq"]["image"]
    assert "mailpit" in services["mailpit"]["image"]
    assert {"context": "..", "dockerfile": "deploy/Dockerfile"} == services["migrate"]["build"]
    assert (COMPOSE.parent.parent / services["migrate"]["build"]["dockerfile"]).is_file()


def test_every_long_running_service_has_a_healthcheck(services: dict) -> None:
    for name, service in services.items():
        if name == "migrate":
            assert service["restart"] == "no"
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_mailexec_healthchecks_probe_their_own_port(services: dict) -> None:
    for name in MAILEXEC_SERVICES:
        service = services[name]
        assert service["environment"]["HEALTH_PORT"] == str(PORTS[name])
        assert "/healthz" in " ".join(service["healthcheck"]["test"])


def test_start_order_is_gated_on_health_and_migrations(services: dict) -> None:
    for name, service in services.items():
        for dependency, gate in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            expected = "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            assert gate == {"condition": expected}, (name, dependency)
    assert set(services["migrate"]["depends_on"]) == {"postgres", "rabbitmq"}
    for name in MAILEXEC_SERVICES:
        assert {"postgres", "rabbitmq", "migrate"} <= set(services[name]["depends_on"]), name
    assert "mailpit" in services["notifier"]["depends_on"]
    assert "policy" in services["executor"]["depends_on"]


def click_root() -> Any:
    """The CLI's command tree (typer ships its own click-compatible classes)."""
    root = typer.main.get_command(cli.app)
    assert hasattr(root, "commands"), type(root)
    return root


def test_commands_are_real_mailexec_subcommands(services: dict) -> None:
    root = click_root()
    for name, service in services.items():
        if not is_mailexec(service):
            continue
        command = service["command"]
        sub = root.commands.get(command[0])
        assert sub is not None, f"{name}: `mailexec {command[0]}` does not exist"
        if command[0] == "serve":
            assert command[1:] == [name]
            assert name in supervisor.SERVICES
        elif command[0] == "migrate":
            assert command == ["migrate"]
        else:
            pytest.fail(f"{name}: unexpected command {command}")
    assert is_mailexec(services["migrate"])


def test_mailexec_environment_names_real_settings(services: dict) -> None:
    from shared.settings import Settings

    fields = {f"MAILEXEC_{field.upper()}" for field in Settings.model_fields}
    for name, service in services.items():
        if is_mailexec(service):
            names = {key for key in service["environment"] if key.startswith("MAILEXEC_")}
            assert names <= fields, (name, sorted(names - fields))
            assert service["environment"]["MAILEXEC_BIND_HOST"] == "0.0.0.0"


def test_only_the_executor_is_root_and_it_keeps_three_capabilities(services: dict) -> None:
    for name, service in services.items():
        if not is_mailexec(service):
            continue
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        if name == "executor":
            assert service["user"] == "0:0"
            assert sorted(service["cap_add"]) == ["KILL", "SETGID", "SETUID"]
            mounts = {entry.split(":")[0] for entry in service["tmpfs"]}
            assert mounts == {"/tmp", service["environment"]["MAILEXEC_TRUSTED_DIR"]}
        else:
            assert service["user"] == "10001:10001", name
            assert "cap_add" not in service, name


def test_host_ports_are_loopback_only(services: dict) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


# --- LMTP (SPEC §2 ingest) -----------------------------------------------------------


def unset(value: str) -> str:
    """A value as compose interpolates it with its variables unset (`${NAME:-default}`)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def networks_of(service: dict[str, Any]) -> set[str]:
    return set(service.get("networks") or ["default"])


def test_ingest_serves_lmtp_beside_http(services: dict) -> None:
    ingest = services["ingest"]
    assert sorted(ingest["ports"]) == ["127.0.0.1:8024:8024", "127.0.0.1:8025:8025"]
    assert ingest["environment"]["MAILEXEC_LMTP_PORT"] == "8024"
    # The healthcheck stays on HTTP.
    assert ingest["environment"]["HEALTH_PORT"] == "8025"
    assert ingest["healthcheck"] == services["policy"]["healthcheck"]


def test_ingest_can_ask_policy_at_rcpt_time(services: dict) -> None:
    ingest = services["ingest"]
    env = ingest["environment"]
    assert env["MAILEXEC_POLICY_URL"] == "http://policy:8026"
    # policy accepts the bootstrap service token it is given itself.
    assert env["MAILEXEC_SERVICE_TOKEN"] == services["policy"]["environment"]["MAILEXEC_SERVICE_TOKEN"]
    assert env["MAILEXEC_SERVICE_TOKEN"]
    assert "default" in networks_of(ingest) and "default" in networks_of(services["policy"])
    assert ingest["depends_on"]["policy"] == {"condition": "service_healthy"}


def test_only_addresses_handed_out_on_the_mta_network_are_trusted(compose: dict, services: dict) -> None:
    from services.ingest.lmtp import is_trusted, parse_networks

    env = services["ingest"]["environment"]
    (config,) = compose["networks"]["mta"]["ipam"]["config"]
    # One variable drives both, so they can't drift apart when the subnet is changed.
    assert config["ip_range"] == env["MAILEXEC_LMTP_TRUSTED_NETWORKS"]
    subnet = ipaddress.ip_network(unset(config["subnet"]))
    gateway = ipaddress.ip_address(unset(config["gateway"]))
    ip_range = ipaddress.ip_network(unset(config["ip_range"]), strict=True)
    assert ip_range.subnet_of(subnet)  # type: ignore[arg-type]
    trusted = parse_networks(unset(env["MAILEXEC_LMTP_TRUSTED_NETWORKS"]))
    assert trusted == (ip_range,)
    # An MTA container on the network (its addresses come from ip_range) needs no AUTH.
    assert is_trusted((str(ip_range[1]), 40000), trusted)
    assert is_trusted((f"::ffff:{ip_range[-2]}", 40000, 0, 0), trusted)
    # Host-published ports reach ingest from the gateway (or through pasta, from loopback):
    # those clients are every local user of the host, so they must STARTTLS and AUTH.
    assert gateway in subnet
    for peer in (str(gateway), "127.0.0.1", "::1", str(subnet[2])):
        assert not is_trusted((peer, 40000), trusted), peer
    # Of this file, only ingest is on it; never the executor, whose programs share its network.
    assert {name for name, service in services.items() if "mta" in networks_of(service)} == {"ingest"}
    assert services["ingest"]["networks"]["mta"]["aliases"] == ["ingest-lmtp"]


def test_tls_override_mounts_certificate_and_key_as_secrets() -> None:
    from shared.settings import Settings

    override = yaml.safe_load(LMTP_TLS.read_text())
    assert set(override["services"]) == {"ingest"}
    ingest = override["services"]["ingest"]
    names = set(ingest["secrets"])
    assert names == set(override["secrets"]) and len(names) == 2
    env = ingest["environment"]
    assert {env["MAILEXEC_LMTP_TLS_CERT"], env["MAILEXEC_LMTP_TLS_KEY"]} == {
        f"/run/secrets/{n}" for n in names
    }
    assert set(env) <= {f"MAILEXEC_{field.upper()}" for field in Settings.model_fields}
    for name in names:
        # The operator names the files; no default path inside the repository.
        assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", override["secrets"][name]["file"]), name
