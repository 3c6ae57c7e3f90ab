"""deploy/compose.yaml: health-gated start order, hardening, real `mailexec` commands,
generated secrets read through files, and the sandbox's capabilities (issue 13)."""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml

from mailexec import cli, supervisor

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"
LMTP_TLS = COMPOSE.with_name("compose.lmtp-tls.yaml")
EGRESS = COMPOSE.with_name("compose.egress.yaml")
MAILEXEC_SERVICES = {"ingest", "policy", "notifier", "executor", "console"}
# The services that keep state: the database, the broker and the migrations are theirs. The
# console keeps none (SPEC §2): it only talks to the others' APIs.
BACKENDS = MAILEXEC_SERVICES - {"console"}
ONE_SHOTS = {"secrets", "migrate"}
PORTS = {"ingest": 8025, "policy": 8026, "notifier": 8027, "executor": 8028, "console": 8029}
EXECUTOR_CAPS = {"SETUID", "SETGID", "KILL", "SYS_ADMIN", "SETPCAP"}
DOCKERFILE = COMPOSE.with_name("Dockerfile")
# Settings holding a secret (SPEC §2: each may be given as <NAME>_FILE instead).
SECRET_SETTINGS = {
    "MAILEXEC_DATABASE_URL",
    "MAILEXEC_AMQP_URL",
    "MAILEXEC_SMTP_URL",
    "MAILEXEC_ADMIN_TOKEN",
    "MAILEXEC_INGEST_TOKEN",
    "MAILEXEC_SERVICE_TOKEN",
    "MAILEXEC_CONSOLE_SECRET",
}


def setting_names() -> set[str]:
    """Every MAILEXEC_* name the programs accept: the settings and their <NAME>_FILE forms."""
    from shared.settings import Settings

    fields = {f"MAILEXEC_{field.upper()}" for field in Settings.model_fields}
    return fields | {f"{name}_FILE" for name in SECRET_SETTINGS}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def is_mailexec(service: dict[str, Any]) -> bool:
    return "mailexec" in str(service.get("image", ""))


def test_the_whole_pipeline_is_there(services: dict) -> None:
    assert set(services) == {"postgres", "rabbitmq", "mailpit", *ONE_SHOTS, *MAILEXEC_SERVICES}
    assert "management" in services["rabbitmq"]["image"]
    assert "mailpit" in services["mailpit"]["image"]
    assert {"context": "..", "dockerfile": "deploy/Dockerfile"} == services["migrate"]["build"]
    assert (COMPOSE.parent.parent / services["migrate"]["build"]["dockerfile"]).is_file()


def test_every_long_running_service_has_a_healthcheck(services: dict) -> None:
    for name, service in services.items():
        if name in ONE_SHOTS:
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


# The console feeds some pages from ingest and the notifier but is ready with policy alone:
# it must not stay down when one of them is unhealthy (an admin needs it most then).
MERELY_STARTED = {("console", "ingest"), ("console", "notifier")}


def test_start_order_is_gated_on_health_and_migrations(services: dict) -> None:
    for name, service in services.items():
        for dependency, gate in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOTS
                else "service_started" if (name, dependency) in MERELY_STARTED
                else "service_healthy"
            )
            assert gate == {"condition": expected}, (name, dependency)
    assert "depends_on" not in services["secrets"]
    # The databases take their passwords from files the secrets service writes first.
    assert set(services["postgres"]["depends_on"]) == {"secrets"}
    assert set(services["rabbitmq"]["depends_on"]) == {"secrets"}
    assert set(services["migrate"]["depends_on"]) == {"postgres", "rabbitmq"}
    for name in BACKENDS:
        assert {"postgres", "rabbitmq", "migrate"} <= set(services[name]["depends_on"]), name
    assert "mailpit" in services["notifier"]["depends_on"]
    # The console: its cookie key written, policy (its readiness) healthy; never the
    # database or the broker directly.
    assert set(services["console"]["depends_on"]) == {"secrets", "policy", "ingest", "notifier"}
    assert "policy" in services["executor"]["depends_on"]


def click_root() -> Any:
    """The CLI's command tree (typer ships its own click-compatible classes)."""
    root = typer.main.get_command(cli.app)
    assert hasattr(root, "commands"), type(root)
    return root


def test_commands_are_real_mailexec_subcommands(services: dict) -> None:
    root = click_root()
    for name, service in services.items():
        if not is_mailexec(service) or name == "secrets":
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
    fields = setting_names()
    for name, service in services.items():
        if is_mailexec(service) and name != "secrets":
            names = {key for key in service["environment"] if key.startswith("MAILEXEC_")}
            assert names <= fields, (name, sorted(names - fields))
            assert service["environment"]["MAILEXEC_BIND_HOST"] == "0.0.0.0"


def test_only_the_executor_and_the_secrets_writer_are_root(services: dict) -> None:
    for name, service in services.items():
        if not is_mailexec(service):
            continue
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        if name == "executor":
            assert service["user"] == "0:0"
            mounts = {entry.split(":")[0] for entry in service["tmpfs"]}
            assert mounts == {"/tmp"}
        elif name == "secrets":
            # Root only to hand files to their readers' uids: CAP_CHOWN, no network.
            assert service["user"] == "0:0"
            assert service["cap_add"] == ["CHOWN"]
            assert service["network_mode"] == "none"
            assert "ports" not in service and "environment" not in service
        else:
            assert service["user"] == "10001:10001", name
            assert "cap_add" not in service, name


def test_executor_holds_exactly_what_the_sandbox_needs(services: dict) -> None:
    """SETUID/SETGID/KILL for the drop and the kill, SYS_ADMIN for the namespaces and
    mounts, SETPCAP to empty the bounding set at the Python process's own drop; never
    CHOWN (the trusted dir is the service user's already), never NET_ADMIN without the
    egress overlay (SPEC §5)."""
    executor = services["executor"]
    assert executor["cap_drop"] == ["ALL"]
    assert sorted(executor["cap_add"]) == sorted(EXECUTOR_CAPS)
    assert len(executor["cap_add"]) == len(EXECUTOR_CAPS)
    assert not executor.get("privileged")
    # The default seccomp profile stays (it admits unshare/mount with CAP_SYS_ADMIN);
    # only AppArmor's `deny mount` is lifted.
    opts = set(executor["security_opt"])
    assert opts == {"no-new-privileges:true", "apparmor=unconfined"}
    assert not any(opt.startswith("seccomp") for opt in opts)
    assert "cgroup" not in executor and "pid" not in executor and "network_mode" not in executor
    assert "sysctls" not in executor
    for name, service in services.items():
        assert "NET_ADMIN" not in service.get("cap_add", []), name
        assert not service.get("privileged"), name


def test_executor_service_user_is_named_once_and_owns_the_trusted_dir(
    compose: dict, services: dict
) -> None:
    """The executor's Python process drops to the service user and must own the trusted dir
    without CAP_CHOWN: a named volume, which the engine fills from the image's directory
    (ownership and mode included) on first use. A tmpfs would be root's: podman rejects
    uid=/gid= tmpfs options ("unknown mount option"), so no tmpfs there."""
    user = compose["x-service-user"]
    executor = services["executor"]
    env = executor["environment"]
    assert env["MAILEXEC_EXECUTOR_USER"] == user
    for name in ("ingest", "policy", "notifier", "migrate", "console"):
        assert services[name]["user"] == user, name
    text = COMPOSE.read_text()
    assert text.count('"10001:10001"') == 1  # the anchor; everything else refers to it
    assert "*service-user" in text
    # The trusted dir: a named volume of the executor's alone, read-write.
    trusted = env["MAILEXEC_TRUSTED_DIR"]
    source, read_only = volume_mounts(executor)[trusted]
    assert source in compose["volumes"] and not read_only
    assert not [entry for entry in executor["tmpfs"] if entry.split(":")[0] == trusted]
    assert [n for n, s in services.items() if source in {v for v, _ in volume_mounts(s).values()}] == [
        "executor"
    ]
    # ...filled from the image, whose directory is the service user's, 0755.
    uid, _, gid = user.partition(":")
    made = re.search(rf"install -d -o (\d+) -g (\d+) -m (\d+) {re.escape(trusted)}$",
                     DOCKERFILE.read_text(), flags=re.M)
    assert made and made.groups() == (uid, gid, "0755")
    from services.executor.privdrop import FALLBACK_GID, FALLBACK_UID

    assert (FALLBACK_UID, FALLBACK_GID) == (int(uid), int(gid))


def test_isolation_is_on_by_default(services: dict) -> None:
    """Issue 13: the shipped compose file had MAILEXEC_SANDBOX_NETWORK=false."""
    text = COMPOSE.read_text()
    assert "MAILEXEC_SANDBOX_NETWORK" not in text
    assert "MAILEXEC_SANDBOX_BWRAP" not in text
    from shared.settings import Settings

    assert Settings.model_fields["sandbox_network"].default is True


def test_egress_overlay_adds_net_admin_to_the_executor_alone() -> None:
    overlay = yaml.safe_load(EGRESS.read_text())
    assert set(overlay) == {"services"}
    assert set(overlay["services"]) == {"executor"}
    executor = overlay["services"]["executor"]
    # compose merges cap_add as a set: the overlay names only what it adds.
    assert executor["cap_add"] == ["NET_ADMIN"]
    assert set(executor) == {"cap_add", "environment"}
    assert set(executor["environment"]) <= setting_names()
    assert executor["environment"]["MAILEXEC_SANDBOX_EGRESS"] == "true"
    blocked = [
        ipaddress.ip_network(net)
        for net in unset(executor["environment"]["MAILEXEC_SANDBOX_EGRESS_BLOCKED"]).split(",")
    ]
    # Every private and shared address the containers, the host's LAN and the `mta`
    # network can have is blocked; public addresses are not.
    for address in ("172.17.0.2", "172.30.1.5", "10.190.24.130", "192.168.1.10",
                    "100.64.0.1", "fd00::5", "fe80::1"):
        ip = ipaddress.ip_address(address)
        assert any(ip in net for net in blocked if net.version == ip.version), address
    for address in ("192.0.2.1", "8.8.8.8", "2001:db8::1"):
        ip = ipaddress.ip_address(address)
        assert not any(ip in net for net in blocked if net.version == ip.version), address


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
    # policy accepts the bootstrap service token it is given itself: the same file of the
    # same volume.
    policy = services["policy"]
    token = env["MAILEXEC_SERVICE_TOKEN_FILE"]
    assert token == policy["environment"]["MAILEXEC_SERVICE_TOKEN_FILE"]
    assert volume_of(ingest, token) == volume_of(policy, token) == "secrets-mailexec"
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


# --- generated secrets, read through files (issue 13) ---------------------------------


@functools.cache
def compose_secrets() -> Any:
    """deploy/compose_secrets.py, the script the `secrets` service runs."""
    path = COMPOSE.with_name("compose_secrets.py")
    spec = importlib.util.spec_from_file_location("compose_secrets", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def volume_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only) of a service's volumes (short syntax)."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        out[target] = (source, mode == ["ro"])
    return out


def volume_of(service: dict[str, Any], path: str) -> str:
    """The volume a file path of the service lies on (its deepest mount above the path)."""
    mounts = volume_mounts(service)
    parents = [t for t in mounts if path.startswith(t.rstrip("/") + "/")]
    assert parents, f"{path} is on no volume of the service"
    return mounts[max(parents, key=len)][0]


MASTER = {
    "postgres_password": "pg" * 16,
    "rabbitmq_password": "mq" * 16,
    "admin_token": "ad" * 16,
    "ingest_token": "in" * 16,
    "service_token": "se" * 16,
    "console_secret": "co" * 16,
}
# Which secret files each mailexec process gets: the executor and the migrations no
# admin or mta token (issue 13: the executor received tokens it never uses).
EXPECTED_FILES = {
    "policy": {"database_url", "amqp_url", "admin_token", "ingest_token", "service_token"},
    "ingest": {"database_url", "amqp_url", "admin_token", "ingest_token", "service_token"},
    "notifier": {"database_url", "amqp_url", "admin_token", "ingest_token", "service_token"},
    "migrate": {"database_url", "amqp_url"},
    "executor": {"database_url", "amqp_url", "service_token"},
    "console": {"console_secret"},
}


def test_no_fixed_credentials_in_any_compose_file() -> None:
    for path in (COMPOSE, EGRESS, LMTP_TLS):
        text = path.read_text()
        # No URL with a password, none of the literals the file used to ship.
        assert not re.search(r"://[^/\s:@'\"]+:[^/\s@'\"]+@", text), path.name
        for literal in ("compose-admin-token", "compose-ingest-token", "compose-service-token",
                        "mailexec:mailexec", "RABBITMQ_DEFAULT_PASS", "POSTGRES_PASSWORD:"):
            assert literal not in text, (path.name, literal)
        for name, service in yaml.safe_load(text)["services"].items():
            for key, value in (service.get("environment") or {}).items():
                # A secret is named by a file, never given as a value.
                assert not re.search(r"(PASSWORD|PASS|TOKEN|SECRET)$", key), (path.name, name, key)
                if key.startswith("MAILEXEC_") and not key.endswith("_FILE"):
                    assert key not in SECRET_SETTINGS - {"MAILEXEC_SMTP_URL"}, (name, key)
                    assert urlsplit(unset(str(value))).password is None, (name, key)


def test_every_secret_reaches_mailexec_as_a_file_of_its_own_volume(services: dict) -> None:
    written = compose_secrets().files_for(MASTER)
    for name, expected in EXPECTED_FILES.items():
        service = services[name]
        env = service["environment"]
        files = {key: path for key, path in env.items() if key.endswith("_FILE")}
        assert {Path(p).name for p in files.values()} == expected, name
        for key, path in files.items():
            # MAILEXEC_DATABASE_URL_FILE -> .../database_url, and so on.
            assert key.removeprefix("MAILEXEC_").removesuffix("_FILE").lower() == Path(path).name
            volume = volume_of(service, path)
            consumer = volume.removeprefix("secrets-")
            assert volume == f"secrets-{consumer}" and consumer in written, (name, volume)
            assert Path(path).name in written[consumer], (name, path)
            target = path.rsplit("/", 1)[0]
            assert volume_mounts(service)[target] == (volume, True), (name, "mounted read-only")
        assert not (set(env) & (SECRET_SETTINGS - {"MAILEXEC_SMTP_URL"})), name


def test_executor_gets_the_service_token_and_nothing_else(services: dict) -> None:
    executor = services["executor"]
    env = executor["environment"]
    assert not [key for key in env if "ADMIN" in key or "INGEST" in key]
    sources = {source for source, _ in volume_mounts(executor).values()}
    assert {source for source in sources if source.startswith("secrets")} == {"secrets-executor"}
    assert sources == {"secrets-executor", "executor-trusted"}
    written = compose_secrets().files_for(MASTER)["executor"]
    contents = "\n".join(written.values())
    assert MASTER["service_token"] in contents
    assert MASTER["admin_token"] not in contents and MASTER["ingest_token"] not in contents
    # The URLs carry the generated passwords, the same ones the databases are given.
    database = urlsplit(written["database_url"])
    assert (database.username, database.password) == ("mailexec", MASTER["postgres_password"])
    assert (database.hostname, database.port, database.path) == ("postgres", 5432, "/mailexec")
    amqp = urlsplit(written["amqp_url"])
    assert (amqp.username, amqp.password) == ("mailexec", MASTER["rabbitmq_password"])
    assert amqp.hostname == "rabbitmq"


def test_each_secrets_volume_is_mounted_by_its_consumers_only(services: dict) -> None:
    module = compose_secrets()
    consumers = module.consumers()
    users = {
        "secrets-postgres": {"postgres"},
        "secrets-rabbitmq": {"rabbitmq"},
        "secrets-mailexec": {"ingest", "policy", "notifier", "migrate"},
        "secrets-executor": {"executor"},
        "secrets-console": {"console"},
    }
    mounted: dict[str, set[str]] = {}
    for name, service in services.items():
        for source, _ in volume_mounts(service).values():
            mounted.setdefault(source, set()).add(name)
    # The master copy: the secrets service alone.
    assert mounted["secrets"] == {"secrets"}
    for volume, readers in users.items():
        assert mounted[volume] == readers | {"secrets"}, volume
    # The secrets service writes each consumer's directory onto that consumer's volume,
    # at the paths the script uses, and runs the script it mounts.
    writer = services["secrets"]
    mounts = volume_mounts(writer)
    assert mounts[str(module.MASTER_DIR)] == ("secrets", False)
    for consumer in consumers.values():
        assert mounts[f"{module.OUT_DIR}/{consumer.directory}"] == (f"secrets-{consumer.directory}", False)
    script = [t for t, (s, _) in mounts.items() if s.endswith("compose_secrets.py")]
    assert script and writer["entrypoint"] == ["python3", *script]
    assert (COMPOSE.parent / mounts[script[0]][0]).resolve() == COMPOSE.with_name("compose_secrets.py")
    # Files are owned by the uid that reads them.
    for name in ("ingest", "policy", "notifier", "migrate"):
        assert services[name]["user"] == f"{consumers['mailexec'].uid}:{consumers['mailexec'].gid}"
    assert services["console"]["user"] == f"{consumers['console'].uid}:{consumers['console'].gid}"
    assert services["executor"]["user"] == f"{consumers['executor'].uid}:{consumers['executor'].gid}"
    # The executor's files are root's 0400: it reads them before its drop to the service
    # user (services/executor/main.py: get_settings() comes first) and never again.
    assert (consumers["executor"].uid, consumers["executor"].gid) == (0, 0)


def test_postgres_uses_password_authentication_not_trust(services: dict) -> None:
    postgres = services["postgres"]
    env = postgres["environment"]
    assert "POSTGRES_PASSWORD" not in env
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    args = env["POSTGRES_INITDB_ARGS"].split()
    # initdb's own default for the Unix socket is trust: override both.
    assert "--auth-local=scram-sha-256" in args and "--auth-host=scram-sha-256" in args
    assert "trust" not in yaml.safe_dump(postgres)
    path = env["POSTGRES_PASSWORD_FILE"]
    assert volume_of(postgres, path) == "secrets-postgres"
    written = compose_secrets().files_for(MASTER)
    assert written["postgres"][Path(path).name] == MASTER["postgres_password"]


def test_rabbitmq_user_comes_from_the_generated_config(services: dict) -> None:
    rabbitmq = services["rabbitmq"]
    path = rabbitmq["environment"]["RABBITMQ_CONFIG_FILE"]
    assert set(rabbitmq["environment"]) == {"RABBITMQ_CONFIG_FILE"}
    assert volume_of(rabbitmq, path) == "secrets-rabbitmq"
    config = compose_secrets().files_for(MASTER)["rabbitmq"][Path(path).name]
    pairs = dict(line.split(" = ", 1) for line in config.splitlines())
    assert pairs["default_user"] == "mailexec"
    assert pairs["default_pass"] == MASTER["rabbitmq_password"]


# --- the console (issue 15) ------------------------------------------------------------


def secret_volumes(service: dict[str, Any]) -> set[str]:
    return {source for source, _ in volume_mounts(service).values() if source.startswith("secrets")}


def test_console_is_served_on_8029_and_mailpit_moved_off_it(services: dict) -> None:
    console = services["console"]
    assert console["command"] == ["serve", "console"]
    assert console["ports"] == ["127.0.0.1:8029:8029"]
    assert console["environment"]["HEALTH_PORT"] == "8029"
    assert console["healthcheck"] == services["policy"]["healthcheck"]
    from shared.settings import Settings

    assert Settings.model_fields["console_port"].default == 8029
    assert services["mailpit"]["ports"] == ["127.0.0.1:8030:8025"]
    # No two services publish the same host port.
    published = [port.rsplit(":", 1)[0] for s in services.values() for port in s.get("ports", [])]
    assert len(published) == len(set(published)), published
    # The header lists the console first: it is what people open.
    urls = [line for line in COMPOSE.read_text().splitlines() if re.match(r"#   \w+ +(http|lmtp)", line)]
    assert urls[0].split()[1:3] == ["console", "http://127.0.0.1:8029"]
    assert any("http://127.0.0.1:8030" in line and "mailpit" in line for line in urls)
    assert not any(":8029" in line for line in urls[1:])


def test_console_reaches_the_apis_it_builds_pages_from(services: dict) -> None:
    env = services["console"]["environment"]
    for setting, target in (
        ("MAILEXEC_POLICY_URL", "policy"),
        ("MAILEXEC_INGEST_URL", "ingest"),
        ("MAILEXEC_NOTIFIER_URL", "notifier"),
    ):
        url = urlsplit(env[setting])
        assert (url.scheme, url.hostname, url.port) == ("http", target, PORTS[target]), setting
        assert "default" in networks_of(services[target])
    assert "default" in networks_of(services["console"])
    assert "mta" not in networks_of(services["console"])


def test_console_holds_no_token_database_or_broker_url(services: dict) -> None:
    """Only its cookie key, from a volume of its own: never secrets-mailexec (the tokens and
    the database URL). The supervisor's WITHHELD is the list of what it must not get."""
    console = services["console"]
    env = console["environment"]
    withheld = set(supervisor.WITHHELD["console"])
    assert {"MAILEXEC_DATABASE_URL", "MAILEXEC_AMQP_URL", "MAILEXEC_SERVICE_TOKEN"} <= withheld
    for name in withheld:
        assert name not in env and f"{name}_FILE" not in env, name
    assert not [key for key in env if re.search(r"TOKEN|DATABASE|AMQP|SMTP", key)], sorted(env)
    assert {key for key in env if key.endswith("_FILE")} == {"MAILEXEC_CONSOLE_SECRET_FILE"}
    assert secret_volumes(console) == {"secrets-console"}
    assert volume_mounts(console) == {"/run/secrets/mailexec": ("secrets-console", True)}
    written = compose_secrets().files_for(MASTER)["console"]
    assert written == {"console_secret": MASTER["console_secret"]}
    for name, value in MASTER.items():
        if name != "console_secret":
            assert value not in "\n".join(written.values()), name


def test_console_is_hardened_like_the_other_unprivileged_services(compose: dict, services: dict) -> None:
    console = services["console"]
    policy = services["policy"]
    for key in ("image", "user", "read_only", "tmpfs", "cap_drop", "security_opt", "restart"):
        assert console[key] == policy[key], key
    assert console["user"] == compose["x-service-user"]
    assert [entry.split(":")[0] for entry in console["tmpfs"]] == ["/tmp"]
    for key in ("cap_add", "privileged", "network_mode", "pid", "sysctls", "devices"):
        assert key not in console, key


def test_compose_withholds_what_the_supervisor_withholds(services: dict) -> None:
    """`mailexec up` and compose agree: no service is handed a secret the supervisor keeps
    from it, neither as a variable nor as a file of its volumes."""
    written = compose_secrets().files_for(MASTER)
    for name, withheld in supervisor.WITHHELD.items():
        service = services[name]
        env = service["environment"]
        files = {f for volume in secret_volumes(service) for f in written[volume.removeprefix("secrets-")]}
        for setting in withheld:
            assert setting not in env and f"{setting}_FILE" not in env, (name, setting)
            assert setting.removeprefix("MAILEXEC_").lower() not in files, (name, setting)
    # Only the notifier sends mail: the relay's URL (which may carry a password) is its alone.
    assert [n for n, s in services.items() if "MAILEXEC_SMTP_URL" in (s.get("environment") or {})] == [
        "notifier"
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_console_starts_from_the_compose_environment_and_refuses_without_its_key(
    services: dict, tmp_path: Path
) -> None:
    """`mailexec serve console` with exactly compose's variables (addresses moved to this
    machine, the key file where the secrets service writes it into its volume): it serves
    /healthz, and /readyz says 503 while policy is unreachable. Without the file: exit 78."""
    import os
    import subprocess
    import time
    import urllib.error
    import urllib.request

    env = {k: unset(str(v)) for k, v in services["console"]["environment"].items()}
    port = _free_port()
    key = tmp_path / "console_secret"
    key.write_text(compose_secrets().files_for(MASTER)["console"]["console_secret"])
    env.update(
        MAILEXEC_BIND_HOST="127.0.0.1",
        MAILEXEC_CONSOLE_PORT=str(port),
        MAILEXEC_POLICY_URL=f"http://127.0.0.1:{_free_port()}",
        MAILEXEC_INGEST_URL=f"http://127.0.0.1:{_free_port()}",
        MAILEXEC_NOTIFIER_URL=f"http://127.0.0.1:{_free_port()}",
        MAILEXEC_CONSOLE_SECRET_FILE=str(key),
        PATH=os.environ.get("PATH", "/usr/bin:/bin"),
        HOME=str(tmp_path),
    )
    command = [sys.executable, "-m", "mailexec", *services["console"]["command"]]
    missing = {**env, "MAILEXEC_CONSOLE_SECRET_FILE": str(tmp_path / "absent")}
    refused = subprocess.run(command, env=missing, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert refused.returncode == 78, refused.stderr[-2000:]
    log = tmp_path / "console.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    assert answer.status == 200
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "console did not answer /healthz"
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert caught.value.code == 503
        caught.value.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
