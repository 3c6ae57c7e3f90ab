"""The Helm chart, linted and rendered by Helm's engine, checked against the Kubernetes
schemas and against the security properties SPEC §5 and issue 8 promise."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.settings import Settings

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a test dependency")

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "mailexec"
NAMESPACE = "mail"
KUBE_VERSION = "1.30.0"

SERVICES = ("ingest", "policy", "notifier", "executor", "console")
PORTS = {"ingest": 8025, "policy": 8026, "notifier": 8027, "executor": 8028, "console": 8029}
# Issue 13: the sandbox's namespaces and mounts need SYS_ADMIN everywhere; NET_ADMIN only
# when an egress program exists.
# SETPCAP: the executor's Python process empties its bounding set (PR_CAPBSET_DROP) when it
# drops to its service user; without it the executor refuses to start (issue 13).
EXECUTOR_BASE_CAPS = {"SETUID", "SETGID", "KILL", "SYS_ADMIN", "SETPCAP"}
TOKENS = {"MAILEXEC_ADMIN_TOKEN", "MAILEXEC_INGEST_TOKEN", "MAILEXEC_SERVICE_TOKEN"}
URLS = {"MAILEXEC_DATABASE_URL", "MAILEXEC_AMQP_URL"}
# Settings holding a secret: each reaches the pods as MAILEXEC_<NAME>_FILE (SPEC §2).
SECRET_KEYS = TOKENS | URLS | {"MAILEXEC_SMTP_URL"}
# The console's cookie key: in a Secret of the console's own, never the release Secret.
CONSOLE_KEY = "MAILEXEC_CONSOLE_SECRET"
# Migration 0001's per-service roles (mailexec_<service>) and their passwords, which
# `mailexec migrate --login-roles` (the migrations Job) reads.
DB_SERVICES = ("policy", "ingest", "executor", "notifier")
DB_PASSWORDS = {f"MAILEXEC_{s.upper()}_DATABASE_PASSWORD" for s in DB_SERVICES}
# Which settings each pod reads from files (MAILEXEC_<NAME>_FILE): the executor no admin or
# mta token, the migrations no token at all but the four roles' passwords, the console its
# cookie key alone (no token, database or broker URL: it acts with the signed-in person's
# token).
SECRETS_OF = {
    "console": {CONSOLE_KEY},
    "ingest": TOKENS | URLS,
    "policy": TOKENS | URLS,
    "notifier": TOKENS | URLS,
    "executor": URLS | {"MAILEXEC_SERVICE_TOKEN"},
    "migrations": {"MAILEXEC_DATABASE_URL"} | DB_PASSWORDS,
}
SECRET_DIR = "/run/secrets/mailexec"
# Where each pod's initContainer "urls" writes the URLs it builds (an in-memory emptyDir).
URL_DIR = "/run/mailexec/urls"
MONITORING_SCHEMAS: dict[str, dict[str, Any]] = {
    # The Prometheus Operator's CRDs are not in the Kubernetes schemas either: the fields used.
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "namespaceSelector": {
                        "type": "object",
                        "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                        "additionalProperties": False,
                    },
                    "selector": {
                        "type": "object",
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": {"type": "object"}},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["alert", "expr"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {
                                                "type": "string",
                                                "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                                            },
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d))+$"},
                                            "labels": {
                                                "type": "object",
                                                "required": ["severity"],
                                                "additionalProperties": {"type": "string"},
                                                "properties": {"severity": {"enum": ["warning", "critical"]}},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "required": ["summary", "description"],
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}

# KEDA's CRDs are not in the Kubernetes schemas: the fields this chart relies on.
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string"},
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "spec": {
                "type": "object",
                "required": ["secretTargetRef"],
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                "parameter": {"type": "string"},
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },
                        },
                    }
                },
            },
        },
    },
}


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def component_of(obj: dict) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def deployment(objects: list[dict], component: str) -> dict:
    return named(objects, "Deployment", f"mx-mailexec-{component}")


def pod_templates(objects: list[dict]) -> list[tuple[str, dict]]:
    """(component, pod spec) of every Deployment and Job."""
    return [
        (component_of(o), o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    ]


def all_containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def hook_kinds(obj: dict) -> set[str]:
    annotations = obj["metadata"].get("annotations") or {}
    return set(filter(None, annotations.get("helm.sh/hook", "").split(",")))


def hook_spec(objects: list[dict]) -> dict[str, dict]:
    """What the secrets hook Job makes sure of: Secret name -> its entry of SECRETS_SPEC."""
    jobs = [o for o in of_kind(objects, "Job") if o["metadata"]["name"] == "mx-mailexec-secrets"]
    if not jobs:
        return {}
    (container,) = jobs[0]["spec"]["template"]["spec"]["containers"]
    return {entry["name"]: entry for entry in json.loads(env_of(container)["SECRETS_SPEC"])}


# --- Helm itself ---------------------------------------------------------------------


def test_helm_lint_is_clean(value_set: str, value_sets: dict) -> None:
    report = helm.lint(CHART_DIR, value_sets[value_set], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_values_yaml_satisfies_its_schema(chart: Any, required: dict) -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    chart.validate_schema(required)


@pytest.mark.parametrize(
    "bad",
    [
        {"executor": {"replicaCount": "two"}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"keda": {"queueLength": 0}},
        {"executor": {"sandbox": {"egress": {"enabled": "yes"}}}},
        # The switch is gone: programs always get their own namespaces.
        {"executor": {"sandbox": {"networkIsolation": {"enabled": False}}}},
        {"executor": {"sandbox": {"egress": {"blockedCIDRs": "10.0.0.0/8"}}}},
        {"executor": {"sandbox": {"appArmorProfile": {"type": "Permissive"}}}},
        {"executor": {"sandbox": {"userNamespace": {"enabled": 1}}}},
        # The service user is never root, and always numeric (no passwd lookup in the pod).
        {"executor": {"serviceUser": {"uid": 0}}},
        {"executor": {"serviceUser": {"gid": 0}}},
        {"executor": {"serviceUser": {"uid": "mailexec"}}},
        {"executor": {"serviceUser": {"name": "mailexec"}}},
        {"unknownTopLevelKey": 1},
        {"ingest": {"lmtp": {"containerPort": 70000}}},
        {"ingest": {"lmtp": {"trustedNetworks": "10.0.0.0/8"}}},
        {"ingest": {"lmtp": {"externalService": {"type": "ClusterIP"}}}},
        {"ingest": {"lmtp": {"externalService": {"externalTrafficPolicy": "Nearby"}}}},
    ],
)
def test_schema_refuses_bad_values(chart: Any, bad: dict, required: dict, merge_values: Any) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.render(merge_values(required, bad), name="mx", namespace=NAMESPACE)


def test_missing_servers_fail_early_and_readably(chart: Any) -> None:
    with pytest.raises(helm.HelmError) as caught:
        chart.render({}, name="mx", namespace=NAMESPACE)
    for needed in (
        "externalDatabase.host is required",
        "externalDatabase.existingSecret (key externalDatabase.existingSecretPasswordKey)"
        " or externalDatabase.password is required",
        "externalRabbitmq.host is required",
        "externalRabbitmq.existingSecret (key externalRabbitmq.existingSecretPasswordKey)"
        " or externalRabbitmq.password is required",
    ):
        assert needed in str(caught.value)
    # The URLs of the old chart are refused by the schema, not silently ignored.
    with pytest.raises(helm.HelmValuesError):
        chart.render(
            {"secrets": {"databaseUrl": "postgresql+asyncpg://u:p@h/db"}}, name="mx", namespace=NAMESPACE
        )


@pytest.mark.parametrize(
    ("sandbox", "extra", "message"),
    [
        ({}, ["CAP_NET_ADMIN"], "extraCapabilities may not contain NET_ADMIN"),
        ({}, ["NET_ADMIN"], "extraCapabilities may not contain NET_ADMIN"),
        ({"egress": {"enabled": True}}, [], "needs executor.sandbox.egress.blockedCIDRs"),
        (
            {"egress": {"enabled": True, "blockedCIDRs": ["10.96.0.0/12", "10.96.0.300/12"]}},
            [],
            '"10.96.0.300/12" is not an IP network',
        ),
        ({"appArmorProfile": {"type": "Localhost"}}, [], "needs localhostProfile"),
    ],
)
def test_net_admin_only_through_the_egress_switch_with_the_cluster_blocked(
    chart: Any, required: dict, merge_values: Any, sandbox: dict, extra: list, message: str
) -> None:
    values = merge_values(required, {"executor": {"sandbox": sandbox, "extraCapabilities": extra}})
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(values, name="mx", namespace=NAMESPACE)


# --- Kubernetes schemas --------------------------------------------------------------


def test_every_manifest_is_valid_kubernetes(value_set: str, rendered: dict) -> None:
    objects = rendered[value_set]
    assert objects
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(obj, KEDA_SCHEMAS[obj["kind"]])
            continue
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(obj, MONITORING_SCHEMAS[obj["kind"]])
            assert obj["metadata"]["namespace"] == NAMESPACE
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
        assert obj["metadata"]["namespace"] == NAMESPACE


def test_default_set_renders_the_expected_objects(rendered: dict) -> None:
    objects = rendered["default"]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for service in SERVICES:
        assert ("Deployment", f"mx-mailexec-{service}") in kinds
        assert ("PodDisruptionBudget", f"mx-mailexec-{service}") in kinds
        assert ("NetworkPolicy", f"mx-mailexec-{service}") in kinds
    for service in ("ingest", "policy", "notifier"):
        assert ("Service", f"mx-mailexec-{service}") in kinds
    assert ("Service", "mx-mailexec-executor-metrics") in kinds
    assert {o["metadata"]["name"] for o in of_kind(objects, "HorizontalPodAutoscaler")} == {
        "mx-mailexec-ingest",
        "mx-mailexec-executor",
    }
    assert ("ConfigMap", "mx-mailexec") in kinds
    # The one Secret rendered from values (RabbitMQ's password); the tokens' Secret is the
    # hook's, not the chart's.
    assert ("Secret", "mx-mailexec-externalrabbitmq") in kinds
    assert ("Secret", "mx-mailexec") not in kinds
    assert ("Job", "mx-mailexec-secrets") in kinds
    assert of_kind(objects, "Ingress") == []
    assert of_kind(objects, "ScaledObject") == []
    assert of_kind(objects, "ServiceMonitor") == [] and of_kind(objects, "PrometheusRule") == []


# --- security contexts ---------------------------------------------------------------


def test_unprivileged_pods_are_locked_down(value_set: str, rendered: dict) -> None:
    pods = [(c, p) for c, p in pod_templates(rendered[value_set]) if c != "executor"]
    expected = {"ingest", "policy", "notifier", "console", "migrations"}
    if value_set != "existing-secret":
        expected.add("secrets")  # the hook Job generating the Secrets no value names
    assert {c for c, _ in pods} == expected
    for component, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, component
        assert pod["securityContext"]["runAsUser"] != 0, component
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        # Only the secrets hook talks to the Kubernetes API, as its own ServiceAccount.
        assert pod["automountServiceAccountToken"] is (component == "secrets"), component
        if component == "secrets":
            assert pod["serviceAccountName"] == "mx-mailexec-secrets"
        for container in all_containers(pod):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, component
            assert sc["readOnlyRootFilesystem"] is True, component
            assert sc["allowPrivilegeEscalation"] is False, component
            assert sc["privileged"] is False, component
            assert sc["capabilities"] == {"drop": ["ALL"]}, component
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, component
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, component


def executor_container(objects: list[dict]) -> dict:
    pod = deployment(objects, "executor")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "executor"]
    return container


def test_executor_keeps_exactly_setuid_setgid_kill_sys_admin(value_set: str, rendered: dict) -> None:
    if value_set == "sandbox-opt-ins":
        pytest.skip("the opt-ins add NET_ADMIN: test_egress_adds_net_admin_and_the_blocked_cidrs")
    objects = rendered[value_set]
    pod = deployment(objects, "executor")["spec"]["template"]["spec"]
    container = executor_container(objects)
    sc = container["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(EXECUTOR_BASE_CAPS)
    assert "NET_ADMIN" not in sc["capabilities"]["add"]
    # no_new_privs does not stop root's setuid()/setgid(); it stops setuid-file gains.
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    # RuntimeDefault seccomp admits unshare/mount with SYS_ADMIN; AppArmor's default
    # profile would refuse the mounts.
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    assert "hostUsers" not in pod
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Isolation is not a switch any more: the setting's default (on) applies.
    assert "MAILEXEC_SANDBOX_NETWORK" not in env
    assert Settings.model_fields["sandbox_network"].default is True
    assert "MAILEXEC_SANDBOX_EGRESS_BLOCKED" not in env
    assert "MAILEXEC_SANDBOX_EGRESS" not in env and not Settings().sandbox_egress
    assert "MAILEXEC_SANDBOX_BWRAP" not in env  # one run path: the spawner
    trusted = env["MAILEXEC_TRUSTED_DIR"]
    assert trusted == "/var/lib/mailexec/trusted"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[trusted]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert env["MAILEXEC_EXECUTOR_USER"] == "10001:10001"
    # No CHOWN in the executor: prepare-dirs hands the trusted dir over before it starts.
    assert "CHOWN" not in sc["capabilities"]["add"]
    assert [init["name"] for init in pod["initContainers"]] == ["prepare-dirs", "urls"]
    for init in pod["initContainers"]:
        caps = {"prepare-dirs": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}, "urls": {"drop": ["ALL"]}}
        assert init["securityContext"]["capabilities"] == caps[init["name"]]
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        assert init["securityContext"]["allowPrivilegeEscalation"] is False
        assert init["securityContext"]["privileged"] is False
    # No egress rule beyond the executor's own peers.
    assert egress_ports(policy_of(objects, "executor")) == {53, 5432, 5672, 8026}


def test_egress_adds_net_admin_and_the_blocked_cidrs(rendered: dict) -> None:
    from tests.deploy.conftest import EGRESS_BLOCKED

    objects = rendered["sandbox-opt-ins"]
    pod = deployment(objects, "executor")["spec"]["template"]["spec"]
    container = executor_container(objects)
    sc = container["securityContext"]
    assert sorted(sc["capabilities"]["add"]) == sorted(EXECUTOR_BASE_CAPS | {"NET_ADMIN"})
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}  # unshare/mount allowed with SYS_ADMIN
    assert sc["appArmorProfile"] == {"type": "Localhost", "localhostProfile": "mailexec-executor"}
    assert pod["hostUsers"] is False
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILEXEC_SANDBOX_EGRESS_BLOCKED"].split(",") == EGRESS_BLOCKED
    assert env["MAILEXEC_SANDBOX_EGRESS"] == "true"  # the capability alone builds nothing
    assert "MAILEXEC_SANDBOX_BWRAP" not in env  # one run path: the spawner
    # Egress programs leave NAT'd to the pod's address: its NetworkPolicy lets public
    # addresses through, never the private ranges the cluster lives in.
    spec = policy_of(objects, "executor")
    (extra,) = [r for r in spec["egress"] if "ports" not in r]
    (block,) = extra["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
        block["ipBlock"]["except"]
    )
    # Only the executor pod changes.
    for component, other in pod_templates(objects):
        if component != "executor":
            assert "hostUsers" not in other, component


@pytest.mark.parametrize("kube_version", ["1.25.0", "1.29.0"])
def test_chart_still_lints_where_apparmor_is_an_annotation(kube_version: str, value_sets: dict) -> None:
    """Before 1.30 the appArmorProfile field does not exist: the template uses the
    annotation there (render() can't pick a Kubernetes version; lint can)."""
    report = helm.lint(
        CHART_DIR, value_sets["sandbox-opt-ins"], strict=True, namespace=NAMESPACE, kube_version=kube_version
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_only_the_executor_gets_any_capability(value_set: str, rendered: dict) -> None:
    """...and its prepare-dirs initContainer, CHOWN and FOWNER alone (to hand the trusted
    dir to the service user, so the executor container needs no CHOWN)."""
    for component, pod in pod_templates(rendered[value_set]):
        for container in all_containers(pod):
            added = container["securityContext"]["capabilities"].get("add", [])
            if (component, container["name"]) == ("executor", "prepare-dirs"):
                assert added == ["CHOWN", "FOWNER"]
            elif added:
                assert (component, container["name"]) == ("executor", "executor")


def prepare_dirs_script(pod: dict) -> str:
    (init,) = [c for c in pod["initContainers"] if c["name"] == "prepare-dirs"]
    assert init["command"][:2] == ["/bin/sh", "-c"]
    return str(init["command"][2])


def test_trusted_dir_becomes_the_service_users_before_the_executor_starts(
    value_set: str, rendered: dict
) -> None:
    """Kubernetes makes emptyDirs 0777 and root's; the executor refuses a trusted dir
    others can write, and after its drop its service user writes the copies there."""
    pod = deployment(rendered[value_set], "executor")["spec"]["template"]["spec"]
    container = executor_container(rendered[value_set])
    env = {e["name"]: e.get("value") for e in container["env"]}
    trusted, user = env["MAILEXEC_TRUSTED_DIR"], env["MAILEXEC_EXECUTOR_USER"]
    script = prepare_dirs_script(pod)
    # /tmp sticky first (still root's), then the chown, then the mode (FOWNER: not root's now).
    assert script.split(" && ") == ["chmod 1777 /tmp", f'chown {user} "{trusted}"', f'chmod 0755 "{trusted}"']
    (init,) = [c for c in pod["initContainers"] if c["name"] == "prepare-dirs"]
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert mounts[trusted] == {m["mountPath"]: m["name"] for m in container["volumeMounts"]}[trusted]
    # The one value the chart names: the image's mailexec user unless set.
    from services.executor.privdrop import FALLBACK_GID, FALLBACK_UID, resolve_service_user

    assert user == f"{FALLBACK_UID}:{FALLBACK_GID}"
    assert (resolve_service_user(user).uid, resolve_service_user(user).gid) == (10001, 10001)


def test_service_user_is_one_value(render: Any, required: dict, merge_values: Any) -> None:
    objects = render(merge_values(required, {"executor": {"serviceUser": {"uid": 20002, "gid": 20003}}}))
    pod = deployment(objects, "executor")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in executor_container(objects)["env"]}
    assert env["MAILEXEC_EXECUTOR_USER"] == "20002:20003"
    assert 'chown 20002:20003 "/var/lib/mailexec/trusted"' in prepare_dirs_script(pod)


# --- migrations hook, probes, configuration ------------------------------------------


HOOK_OBJECTS = {
    # (kind, name): weight. Lower runs first; all pre-install and pre-upgrade.
    ("ServiceAccount", "mx-mailexec-secrets"): -30,
    ("Role", "mx-mailexec-secrets"): -30,
    ("RoleBinding", "mx-mailexec-secrets"): -30,
    ("Job", "mx-mailexec-secrets"): -20,
    ("Secret", "mx-mailexec-externaldb"): -10,
    ("Job", "mx-mailexec-migrations"): 0,
}


@pytest.mark.parametrize("secret_set", ["default", "existing-secret"])
def test_migrations_run_as_pre_install_pre_upgrade_hook(secret_set: str, rendered: dict) -> None:
    value_set = secret_set
    objects = rendered[value_set]
    job = named(objects, "Job", "mx-mailexec-migrations")
    assert hook_kinds(job) == {"pre-install", "pre-upgrade"}
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # Migrate, then let each service's role log in with its own password.
    assert container["args"] == ["migrate", "--login-roles"]
    assert pod["restartPolicy"] == "Never"
    # Hooks run before the release's objects exist: the Job may only use hook Secrets made
    # before it, or the user's existing ones.
    refs = secret_names_of(pod)
    hooks = {(o["kind"], o["metadata"]["name"]): o for o in objects if hook_kinds(o)}
    if value_set == "existing-secret":
        assert refs == {"mailexec-external", "mx-postgresql"}
        assert set(hooks) == {("Job", "mx-mailexec-migrations")}
    else:
        assert refs == {"mx-mailexec", "mx-mailexec-externaldb"}
        assert set(hooks) == set(HOOK_OBJECTS)
    for (kind, name), obj in hooks.items():
        assert hook_kinds(obj) == {"pre-install", "pre-upgrade"}, name
        assert int(obj["metadata"]["annotations"]["helm.sh/hook-weight"]) == HOOK_OBJECTS[kind, name]
        policy = obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
        assert policy == "before-hook-creation,hook-succeeded", name


def test_probes_hit_healthz_and_readyz_on_each_service_port(rendered: dict) -> None:
    objects = rendered["default"]
    for service in SERVICES:
        pod = deployment(objects, service)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["args"] == ["serve", service]
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert ports[get["port"]] == PORTS[service]
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_configmap_binds_pod_addresses_and_names_the_ports(rendered: dict) -> None:
    data = named(rendered["default"], "ConfigMap", "mx-mailexec")["data"]
    assert data["MAILEXEC_BIND_HOST"] == "0.0.0.0"
    assert data["MAILEXEC_INGEST_PORT"] == "8025"
    assert data["MAILEXEC_POLICY_PORT"] == "8026"
    assert data["MAILEXEC_NOTIFIER_PORT"] == "8027"
    assert data["MAILEXEC_EXECUTOR_METRICS_PORT"] == "8028"
    assert data["MAILEXEC_CONSOLE_PORT"] == "8029"
    assert data["MAILEXEC_POLICY_URL"] == "http://mx-mailexec-policy.mail.svc:8026"


def test_every_mailexec_variable_is_a_real_setting(value_set: str, rendered: dict) -> None:
    """A misspelt MAILEXEC_* name would be silently ignored by pydantic-settings."""
    fields = {f"MAILEXEC_{name.upper()}" for name in Settings.model_fields}
    fields |= {f"{name}_FILE" for name in SECRET_KEYS | {CONSOLE_KEY}}
    # Read by `mailexec migrate --login-roles` (mailexec/migrate.py), not a service setting.
    from mailexec.migrate import SERVICE_ROLES, password_variable

    fields |= {f"{password_variable(s)}_FILE" for s in SERVICE_ROLES}
    seen: set[str] = set()
    for obj in rendered[value_set]:
        if obj["kind"] in ("ConfigMap", "Secret"):
            seen |= set(obj.get("data") or {}) | set(obj.get("stringData") or {})
        if obj["kind"] in ("Deployment", "Job"):
            for container in all_containers(obj["spec"]["template"]["spec"]):
                seen |= {e["name"] for e in container.get("env", [])}
    seen = {name for name in seen if name.startswith("MAILEXEC_")}
    assert seen, "no settings rendered"
    assert seen <= fields, sorted(seen - fields)


def test_nothing_secret_is_generated_at_render_time(render: Any, value_sets: dict) -> None:
    """Issue 16: GitOps tools (Argo CD, Flux) render on every sync; a token generated then
    (with `lookup` or rand*) changed every time and the MTAs' token stopped working. Two
    renders of the same values are byte-identical, and no template can generate anything."""
    templates = "".join(p.read_text() for p in (CHART_DIR / "templates").rglob("*") if p.is_file())
    actions = " ".join(re.findall(r"\{\{(?!-?\s*/\*)(.*?)\}\}", templates, flags=re.S))  # not comments
    assert "include" in actions
    for word in ("lookup", "randAlphaNum", "randAlpha", "randAscii", "randNumeric", "randBytes", "uuidv4"):
        assert not re.search(rf"\b{word}\b", actions), word
    for name in ("default", "generated", "existing-secret"):
        with helm.Chart.load(CHART_DIR) as chart:
            first = chart.render(value_sets[name], name="mx", namespace=NAMESPACE, is_install=True)
            second = chart.render(value_sets[name], name="mx", namespace=NAMESPACE, is_install=False)
        assert first == second, name


def test_the_only_secret_rendered_from_values_is_rabbitmqs_password(rendered: dict, required: dict) -> None:
    objects = rendered["default"]
    plain = [o for o in of_kind(objects, "Secret") if not hook_kinds(o)]
    names = {o["metadata"]["name"] for o in plain}
    assert names == {"mx-mailexec-externalrabbitmq", "mx-mailexec-console"}  # console.secret given
    data = named(objects, "Secret", "mx-mailexec-externalrabbitmq")["stringData"]
    assert data == {"rabbitmq-password": required["externalRabbitmq"]["password"]}
    # The owner's database password: only in the migrations Job's hook Secret.
    (hook_secret,) = [o for o in of_kind(objects, "Secret") if hook_kinds(o)]
    assert hook_secret["metadata"]["name"] == "mx-mailexec-externaldb"
    assert hook_secret["stringData"] == {"password": required["externalDatabase"]["password"]}
    # No URL with a password anywhere in the render, no token in any value.
    text = yaml.safe_dump_all(objects)
    assert not re.search(r"(postgresql(\+asyncpg)?|amqps?)://[^\s\"'%]+:[^\s\"'%]+@", text)
    assert not [o for o in objects if "MAILEXEC_ADMIN_TOKEN" in (o.get("stringData") or {})]


def secret_volume(pod: dict, container: dict) -> tuple[dict, str]:
    """The projected Secret volume a container mounts at SECRET_DIR, and its name."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == SECRET_DIR]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume["projected"], mount["name"]


def secret_files(projected: dict) -> dict[str, tuple[str, str]]:
    """path -> (Secret, key) of a projected Secret volume."""
    files: dict[str, tuple[str, str]] = {}
    for source in projected["sources"]:
        assert set(source) == {"secret"}
        for item in source["secret"]["items"]:
            assert item["path"] not in files
            files[item["path"]] = (source["secret"]["name"], item["key"])
    return files


def expected_files(value_set: str, component: str) -> dict[str, tuple[str, str]]:
    """What each pod may read, and from which Secret: nothing else."""
    existing = value_set == "existing-secret"
    tokens = "mailexec-external" if existing else "mx-mailexec"
    mq = (
        ("mx-rabbitmq", "rabbitmq-password")
        if existing
        else ("mx-mailexec-externalrabbitmq", "rabbitmq-password")
    )
    if component == "console":
        if existing:
            return {"console_secret": ("mx-console-key", CONSOLE_KEY)}
        key_secret = "mx-mailexec-console-key" if value_set == "generated" else "mx-mailexec-console"
        return {"console_secret": (key_secret, CONSOLE_KEY)}
    if component == "migrations":
        owner = ("mx-postgresql", "postgres-password") if existing else ("mx-mailexec-externaldb", "password")
        files = {"database_password": owner}
        for service in DB_SERVICES:
            files[f"{service}_database_password"] = (tokens, f"MAILEXEC_{service.upper()}_DATABASE_PASSWORD")
        return files
    own = tokens if (existing or component != "executor") else "mx-mailexec-executor"
    names = ["MAILEXEC_SERVICE_TOKEN"] if component == "executor" else sorted(TOKENS)
    files = {n.removeprefix("MAILEXEC_").lower(): (own, n) for n in names}
    files["database_password"] = (own, f"MAILEXEC_{component.upper()}_DATABASE_PASSWORD")
    files["amqp_password"] = mq
    return files


def test_secrets_reach_every_pod_as_files_only(value_set: str, rendered: dict) -> None:
    """SPEC §2 <NAME>_FILE: no secret in an environment variable, each pod only its keys."""
    objects = rendered[value_set]
    seen = set()
    for component, pod in pod_templates(objects):
        if component == "secrets":
            continue  # the hook: no Secret mounted, it talks to the API (test_secrets_hook_*)
        for container in all_containers(pod):
            assert not [r for r in container.get("envFrom", []) if "secretRef" in r], component
            env = container.get("env", [])
            assert not [e for e in env if "valueFrom" in e], component
            # (MAILEXEC_SMTP_URL may be a plain variable: the schema refuses credentials in
            # notifier.smtp.url; a URL with them comes from notifier.smtp.existingSecret.)
            secret_names = SECRET_KEYS - {"MAILEXEC_SMTP_URL"} | {CONSOLE_KEY} | DB_PASSWORDS
            assert not {e["name"] for e in env} & secret_names, component
            if container["name"] in ("prepare-dirs", "urls"):
                assert not [e for e in env if e["name"].startswith("MAILEXEC_")]
                continue
            seen.add(component)
            files = {e["name"].removesuffix("_FILE"): e["value"] for e in env if e["name"].endswith("_FILE")}
            assert set(files) == SECRETS_OF[component], component
            projected, _ = secret_volume(pod, container)
            mounted = secret_files(projected)
            assert mounted == expected_files(value_set, component), component
            for setting, path in files.items():
                if setting in URLS:  # built by the initContainer "urls"
                    assert path == f"{URL_DIR}/{setting.removeprefix('MAILEXEC_').lower()}", component
                else:
                    assert path.removeprefix(f"{SECRET_DIR}/") in mounted, (component, setting)
            # Readable by the pod's fsGroup only; the executor's by root only.
            assert projected["defaultMode"] == (0o400 if component == "executor" else 0o440), component
    assert seen == {"ingest", "policy", "notifier", "executor", "migrations", "console"}


def test_each_pod_builds_only_its_own_database_credentials(value_set: str, rendered: dict) -> None:
    """Issue 16: each service connects as its own role (migration 0001) with its own password;
    the owner's (superuser's) credentials reach the migrations Job alone."""
    objects = rendered[value_set]
    db_host = "mx-postgresql.db.svc" if value_set == "existing-secret" else "pg.db.svc"
    for component, pod in pod_templates(objects):
        if component in ("secrets", "console"):
            assert "urls" not in [c["name"] for c in pod.get("initContainers", [])], component
            continue
        (init,) = [c for c in pod["initContainers"] if c["name"] == "urls"]
        env = env_of(init)
        user = "postgres" if component == "migrations" else f"mailexec_{component}"
        assert (env["DB_HOST"], env["DB_PORT"], env["DB_NAME"], env["DB_USER"]) == (
            db_host,
            "5432",
            "mailexec",
            user,
        )
        assert env["DB_PASSWORD_FILE"] == f"{SECRET_DIR}/database_password"
        projected, _ = secret_volume(pod, init)
        password_source = secret_files(projected)["database_password"]
        if component == "migrations":
            assert "AMQP_HOST" not in env
            assert password_source[0] in ("mx-mailexec-externaldb", "mx-postgresql")
        else:
            assert password_source[1] == f"MAILEXEC_{component.upper()}_DATABASE_PASSWORD"
            assert env["AMQP_PASSWORD_FILE"] == f"{SECRET_DIR}/amqp_password"
            others = DB_PASSWORDS - {password_source[1]}
            assert not {key for _, key in secret_files(projected).values()} & others, component
        (urls,) = [v for v in pod["volumes"] if v["name"] == "urls"]
        assert urls["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
        mounts = {m["name"]: m for m in init["volumeMounts"]}
        assert mounts["urls"]["mountPath"] == URL_DIR and not mounts["urls"].get("readOnly")
        main = [c for c in pod["containers"]][0]
        assert {m["name"]: m.get("readOnly") for m in main["volumeMounts"]}["urls"] is True
    # Nobody but the migrations Job sees the owner's password Secret.
    owner = "mx-postgresql" if value_set == "existing-secret" else "mx-mailexec-externaldb"
    for component, pod in pod_templates(objects):
        assert (owner in secret_names_of(pod)) == (component == "migrations"), component


def test_compose_urls_builds_each_url_from_values_and_password_files(tmp_path: Path) -> None:
    """files/compose_urls.py, the initContainer's script, run as the pods run it."""
    from sqlalchemy.engine import make_url

    (tmp_path / "secrets").mkdir()
    (tmp_path / "urls").mkdir()
    (tmp_path / "secrets" / "database_password").write_text("p@ss:w/rd%20 'x'\n")
    (tmp_path / "secrets" / "amqp_password").write_text("mq p@ss\n")
    env = {
        "OUT_DIR": str(tmp_path / "urls"),
        "DB_HOST": "fd00::5",
        "DB_PORT": "5433",
        "DB_NAME": "mail exec",
        "DB_USER": "mailexec_ingest",
        "DB_PASSWORD_FILE": str(tmp_path / "secrets" / "database_password"),
        "AMQP_HOST": "mq.mq.svc",
        "AMQP_PORT": "5671",
        "AMQP_VHOST": "mail/prod",
        "AMQP_USER": "mailexec",
        "AMQP_TLS": "true",
        "AMQP_PASSWORD_FILE": str(tmp_path / "secrets" / "amqp_password"),
    }
    script = (CHART_DIR / "files" / "compose_urls.py").read_text()
    for _ in range(2):  # a restarted pod's initContainer runs again over its old files
        done = subprocess.run([sys.executable, "-B", "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    db_file = tmp_path / "urls" / "database_url"
    assert db_file.stat().st_mode & 0o777 == 0o400
    url = make_url(db_file.read_text().strip())
    assert (url.drivername, url.username, url.password) == (
        "postgresql+asyncpg",
        "mailexec_ingest",
        "p@ss:w/rd%20 'x'",
    )
    assert (url.host, url.port, url.database) == ("fd00::5", 5433, "mail exec")
    import yarl

    amqp = yarl.URL((tmp_path / "urls" / "amqp_url").read_text().strip())
    assert (amqp.scheme, amqp.user, amqp.password, amqp.host, amqp.port) == (
        "amqps",
        "mailexec",
        "mq p@ss",
        "mq.mq.svc",
        5671,
    )
    assert amqp.path[1:] == "mail/prod"
    # A missing password file stops the pod with a message, not a URL without a password.
    env["DB_PASSWORD_FILE"] = str(tmp_path / "nothing")
    done = subprocess.run([sys.executable, "-B", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "cannot read" in done.stderr


def test_executor_may_have_a_secret_of_its_own_next_to_an_existing_one(
    render: Any, value_sets: dict, merge_values: Any
) -> None:
    values = merge_values(value_sets["existing-secret"], {"secrets": {"executorExistingSecret": "mx-exec"}})
    objects = render(values)
    pod = deployment(objects, "executor")["spec"]["template"]["spec"]
    projected, _ = secret_volume(pod, executor_container(objects))
    assert secret_files(projected) == {
        "service_token": ("mx-exec", "MAILEXEC_SERVICE_TOKEN"),
        "database_password": ("mx-exec", "MAILEXEC_EXECUTOR_DATABASE_PASSWORD"),
        "amqp_password": ("mx-rabbitmq", "rabbitmq-password"),
    }
    assert of_kind(objects, "Secret") == []


def test_existing_secrets_replace_every_chart_secret(rendered: dict) -> None:
    """existingSecret everywhere: the chart renders no Secret, runs no secrets hook, and no
    pod refers to a Secret of the release."""
    objects = rendered["existing-secret"]
    assert of_kind(objects, "Secret") == []
    assert not [o for o in objects if o["metadata"]["name"] == "mx-mailexec-secrets"]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    given = {"mailexec-external", "mx-console-key", "mx-postgresql", "mx-rabbitmq"}
    for component, pod in pod_templates(objects):
        assert secret_names_of(pod) <= given, component
        assert not [n for n in secret_names_of(pod) if n.startswith("mx-mailexec")], component


def test_external_servers_are_named_by_host_port_and_secret(rendered: dict) -> None:
    """bitnami style: externalDatabase/externalRabbitmq with existingSecret and key names; no
    reference to a Secret of the release's own database or broker is left."""
    objects = rendered["existing-secret"]
    for service in ("ingest", "policy", "notifier", "executor"):
        pod = deployment(objects, service)["spec"]["template"]["spec"]
        (init,) = [c for c in pod["initContainers"] if c["name"] == "urls"]
        env = env_of(init)
        assert (env["AMQP_HOST"], env["AMQP_PORT"], env["AMQP_VHOST"], env["AMQP_USER"]) == (
            "mx-rabbitmq.mq.svc",
            "5672",
            "mail",
            "mailexec",
        )
        projected, _ = secret_volume(pod, init)
        assert secret_files(projected)["amqp_password"] == ("mx-rabbitmq", "rabbitmq-password")
    text = yaml.safe_dump_all(objects)
    for gone in ("externaldb", "externalrabbitmq", "MAILEXEC_DATABASE_URL:", "MAILEXEC_AMQP_URL:"):
        assert gone not in text, gone


# --- the secrets hook (issue 16: generated once, never overwritten, old ones adopted) ------


def test_secrets_hook_generates_what_no_value_gives_with_a_narrow_role(rendered: dict) -> None:
    objects = rendered["generated"]
    spec = hook_spec(objects)
    assert set(spec) == {"mx-mailexec", "mx-mailexec-executor", "mx-mailexec-console-key"}
    assert set(spec["mx-mailexec"]["generate"]) == TOKENS | DB_PASSWORDS
    # The executor's copy: the same service token and its own password, nothing else.
    assert spec["mx-mailexec-executor"].get("generate", []) == []
    assert spec["mx-mailexec-executor"]["copy"] == {
        "MAILEXEC_SERVICE_TOKEN": ["mx-mailexec", "MAILEXEC_SERVICE_TOKEN"],
        "MAILEXEC_EXECUTOR_DATABASE_PASSWORD": ["mx-mailexec", "MAILEXEC_EXECUTOR_DATABASE_PASSWORD"],
    }
    for entry in spec.values():
        # Not Helm's (it would delete them), not tracked as the release's by Argo CD.
        assert "app.kubernetes.io/managed-by" not in entry["labels"]
        assert "app.kubernetes.io/instance" not in entry["labels"]
        assert entry["labels"]["mailexec.io/release"] == "mx"
    job = named(objects, "Job", "mx-mailexec-secrets")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python3", "-B", "-c"]
    assert container["command"][3] == (CHART_DIR / "files" / "ensure_secrets.py").read_text()
    assert pod["serviceAccountName"] == "mx-mailexec-secrets" and pod["restartPolicy"] == "Never"
    assert secret_names_of(pod) == set()
    role = named(objects, "Role", "mx-mailexec-secrets")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": sorted(spec, key=list(spec).index),
            "verbs": ["get", "patch"],
        },
        # RBAC can't restrict create to a name; the script creates only the names above.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    binding = named(objects, "RoleBinding", "mx-mailexec-secrets")
    assert binding["roleRef"]["name"] == "mx-mailexec-secrets"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mx-mailexec-secrets", "namespace": NAMESPACE}
    ]
    # Only what is needed: console.secret given → no console key; existingSecret → no hook.
    assert set(hook_spec(rendered["default"])) == {"mx-mailexec", "mx-mailexec-executor"}
    assert hook_spec(rendered["existing-secret"]) == {}


class FakeSecretsApi:
    """The four calls of the Kubernetes Secrets API the hook makes, over plain http."""

    def __init__(self, secrets: dict[str, dict]) -> None:
        import http.server
        import threading

        self.secrets = secrets
        self.calls: list[tuple[str, str]] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def name(self) -> str:
                assert self.path.startswith(f"/api/v1/namespaces/{NAMESPACE}/secrets")
                return self.path.rsplit("/secrets", 1)[1].strip("/")

            def do_GET(self) -> None:  # noqa: N802
                api.calls.append(("GET", self.name()))
                found = api.secrets.get(self.name())
                self.answer(200, found) if found else self.answer(404, {"message": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                body = self.body()
                name = body["metadata"]["name"]
                api.calls.append(("POST", name))
                if name in api.secrets:
                    return self.answer(409, {"message": "exists"})
                api.secrets[name] = body
                self.answer(201, body)

            def do_PATCH(self) -> None:  # noqa: N802
                name = self.name()
                api.calls.append(("PATCH", name))
                assert self.headers["Content-Type"] == "application/merge-patch+json"
                patch = self.body()
                current = api.secrets[name]
                for key, value in patch.get("data", {}).items():
                    assert key not in current.get("data", {}), f"{name}: would overwrite {key}"
                    current.setdefault("data", {})[key] = value
                for key, value in patch.get("metadata", {}).get("annotations", {}).items():
                    current["metadata"].setdefault("annotations", {})[key] = value
                assert set(patch) <= {"data", "metadata"}
                self.answer(200, current)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def run_hook(self, spec: dict[str, dict]) -> subprocess.CompletedProcess:
        script = (CHART_DIR / "files" / "ensure_secrets.py").read_text()
        env = {
            "KUBERNETES_API": self.url,
            "NAMESPACE": NAMESPACE,
            "SECRETS_SPEC": json.dumps(list(spec.values())),
            "TOKEN_FILE": "/nonexistent",
        }
        return subprocess.run(
            [sys.executable, "-B", "-c", script], env=env, capture_output=True, text=True, timeout=60
        )

    def decoded(self, name: str) -> dict[str, str]:
        import base64

        return {k: base64.b64decode(v).decode() for k, v in self.secrets[name]["data"].items()}


def test_secrets_hook_creates_once_and_never_overwrites(rendered: dict) -> None:
    """files/ensure_secrets.py against a stand-in for the API server: the first install
    creates; every later run (upgrade, Argo CD sync) looks first and changes nothing."""
    spec = hook_spec(rendered["generated"])
    api = FakeSecretsApi({})
    try:
        done = api.run_hook(spec)
        assert done.returncode == 0, done.stderr
        first = {name: api.decoded(name) for name in spec}
        assert set(first["mx-mailexec"]) == TOKENS | DB_PASSWORDS
        for value in first["mx-mailexec"].values():
            assert re.fullmatch(r"[A-Za-z0-9]{48}", value)
        assert len(set(first["mx-mailexec"].values())) == len(first["mx-mailexec"])
        assert first["mx-mailexec-executor"] == {
            "MAILEXEC_SERVICE_TOKEN": first["mx-mailexec"]["MAILEXEC_SERVICE_TOKEN"],
            "MAILEXEC_EXECUTOR_DATABASE_PASSWORD": first["mx-mailexec"][
                "MAILEXEC_EXECUTOR_DATABASE_PASSWORD"
            ],
        }
        created = api.secrets["mx-mailexec"]["metadata"]
        assert created["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert created["labels"] == spec["mx-mailexec"]["labels"]
        # Each Secret is looked at before it is created.
        for name in spec:
            assert api.calls.index(("GET", name)) < api.calls.index(("POST", name))
        api.calls.clear()
        for _ in range(2):  # helm upgrade, an Argo CD sync...
            done = api.run_hook(spec)
            assert done.returncode == 0, done.stderr
        assert {name: api.decoded(name) for name in spec} == first
        assert not [c for c in api.calls if c[0] != "GET"], api.calls
        assert "kept Secret mx-mailexec" in done.stdout
    finally:
        api.close()


def test_secrets_hook_adopts_the_secret_an_older_chart_made(rendered: dict) -> None:
    """Existing installs: the Secrets the old chart rendered with `lookup` (URLs and tokens,
    Helm's labels) keep their tokens, get the keys they lack, and are annotated
    helm.sh/resource-policy=keep so the upgrade removing them from the templates leaves them."""
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    helm_meta = {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": "mx"},
    }
    old_tokens = {
        "MAILEXEC_ADMIN_TOKEN": "A" * 48,
        "MAILEXEC_INGEST_TOKEN": "I" * 48,
        "MAILEXEC_SERVICE_TOKEN": "S" * 48,
    }
    old = {
        "mx-mailexec": {
            "metadata": {"name": "mx-mailexec", **json.loads(json.dumps(helm_meta))},
            "data": {
                k: b64(v)
                for k, v in {**old_tokens, "MAILEXEC_DATABASE_URL": "postgresql+asyncpg://x"}.items()
            },
        },
        "mx-mailexec-executor": {
            "metadata": {"name": "mx-mailexec-executor", **json.loads(json.dumps(helm_meta))},
            "data": {"MAILEXEC_SERVICE_TOKEN": b64("S" * 48)},
        },
    }
    spec = hook_spec(rendered["default"])
    api = FakeSecretsApi(old)
    try:
        done = api.run_hook(spec)
        assert done.returncode == 0, done.stderr
        main = api.decoded("mx-mailexec")
        for key, value in old_tokens.items():
            assert main[key] == value, key  # the MTAs' token keeps working
        assert set(main) == TOKENS | DB_PASSWORDS | {"MAILEXEC_DATABASE_URL"}
        executor = api.decoded("mx-mailexec-executor")
        assert executor == {
            "MAILEXEC_SERVICE_TOKEN": "S" * 48,
            "MAILEXEC_EXECUTOR_DATABASE_PASSWORD": main["MAILEXEC_EXECUTOR_DATABASE_PASSWORD"],
        }
        for name in old:
            assert api.secrets[name]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert not [c for c in api.calls if c[0] == "POST"]
        assert "adopted from the previous release" in done.stdout
    finally:
        api.close()


# --- autoscaling ---------------------------------------------------------------------


def test_keda_scales_executors_on_the_deliveries_queue(rendered: dict) -> None:
    objects = rendered["keda"]
    scaled = named(objects, "ScaledObject", "mx-mailexec-executor")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "mx-mailexec-executor"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == "deliveries"
    assert trigger["metadata"]["mode"] == "QueueLength"
    auth = named(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert (ref["parameter"], ref["name"], ref["key"]) == ("host", "mx-mailexec-externalrabbitmq", "amqp-url")
    url = named(objects, "Secret", "mx-mailexec-externalrabbitmq")["stringData"]["amqp-url"]
    assert url == "amqp://mailexec:mq-pw@mq.mq.svc:5672/"
    # KEDA owns the executor's HPA; a second one would fight it.
    assert [h["metadata"]["name"] for h in of_kind(objects, "HorizontalPodAutoscaler")] == [
        "mx-mailexec-ingest"
    ]
    assert "replicas" not in deployment(objects, "executor")["spec"]


def test_hpas_target_their_deployments(rendered: dict) -> None:
    for hpa in of_kind(rendered["default"], "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert "replicas" not in deployment(rendered["default"], component_of(hpa))["spec"]
        assert target["name"] == hpa["metadata"]["name"]


# --- network policies ----------------------------------------------------------------


def policy_of(objects: list[dict], component: str) -> dict:
    return named(objects, "NetworkPolicy", f"mx-mailexec-{component}")["spec"]


def peer_components(peers: list[dict]) -> set[str]:
    return {
        p["podSelector"]["matchLabels"].get("app.kubernetes.io/component", "")
        for p in peers
        if "podSelector" in p and "namespaceSelector" not in p
    } - {""}


def egress_ports(spec: dict) -> set[int]:
    return {port["port"] for rule in spec["egress"] for port in rule["ports"]}


def rules_by_port(spec: dict) -> dict[int, dict]:
    """A NetworkPolicy's ingress rules by the port they open (one rule per port here)."""
    rules: dict[int, dict] = {}
    for rule in spec["ingress"]:
        for port in rule["ports"]:
            assert port["port"] not in rules, f"two rules open {port['port']}"
            rules[port["port"]] = rule
    return rules


def test_only_ingest_is_reachable_from_mtas(rendered: dict) -> None:
    objects = rendered["default"]
    for component in SERVICES:
        spec = policy_of(objects, component)
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        labels = [p.get("podSelector", {}).get("matchLabels", {}) for r in spec["ingress"] for p in r["from"]]
        has_mta = {"mailexec.io/client": "mta"} in labels
        assert has_mta == (component == "ingest"), component
    rules = rules_by_port(policy_of(objects, "ingest"))
    assert set(rules) == {8025, LMTP_PORT}
    assert all(len(rule["ports"]) == 1 for rule in rules.values())


def test_only_policy_is_reachable_from_admins(rendered: dict) -> None:
    objects = rendered["default"]
    (rule,) = policy_of(objects, "policy")["ingress"]
    assert {"mailexec.io/client": "admin"} in [p["podSelector"]["matchLabels"] for p in rule["from"]]
    assert peer_components(rule["from"]) == {"executor", "notifier", "ingest", "console"}
    assert [p["port"] for p in rule["ports"]] == [8026]


def test_executors_reach_nothing_but_dns_broker_database_and_policy(rendered: dict) -> None:
    spec = policy_of(rendered["default"], "executor")
    assert spec["ingress"] == []
    assert egress_ports(spec) == {53, 5432, 5672, 8026}
    (to_policy,) = [r for r in spec["egress"] if r["ports"][0]["port"] == 8026]
    assert peer_components(to_policy["to"]) == {"policy"}


def test_notifier_may_reach_the_smtp_relay(rendered: dict) -> None:
    spec = policy_of(rendered["default"], "notifier")
    assert {25, 465, 587} <= egress_ports(spec)


def test_ingress_set_exposes_ingest_and_policy(rendered: dict) -> None:
    objects = rendered["ingress"]
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    for component, host in (("ingest", "ingest.example.org"), ("policy", "policy.example.org")):
        ingress = named(objects, "Ingress", f"mx-mailexec-{component}")
        (rule,) = ingress["spec"]["rules"]
        assert rule["host"] == host
        backend = rule["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] in services
        rules = rules_by_port(policy_of(objects, component))
        labels = [p.get("podSelector", {}).get("matchLabels") for p in rules[PORTS[component]]["from"]]
        assert {"app.kubernetes.io/name": "ingress-nginx"} in labels
    # An HTTP Ingress controller has no business on the LMTP port.
    lmtp_from = rules_by_port(policy_of(objects, "ingest"))[LMTP_PORT]["from"]
    assert {"app.kubernetes.io/name": "ingress-nginx"} not in [
        p["podSelector"]["matchLabels"] for p in lmtp_from
    ]
    tls = named(objects, "Ingress", "mx-mailexec-ingest")["spec"]["tls"]
    assert tls == [{"hosts": ["ingest.example.org"], "secretName": "ingest.example.org-tls"}]


# --- LMTP (SPEC §2 ingest: RFC 2033 listener, STARTTLS, RCPT-time policy lookups) ------

LMTP_PORT = 8024
MTA_PEER = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"mailexec.io/client": "mta"}}}


def ingest_pod(objects: list[dict]) -> tuple[dict, dict]:
    pod = deployment(objects, "ingest")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def service_ports(objects: list[dict], name: str) -> dict[str, dict]:
    return {p["name"]: p for p in named(objects, "Service", name)["spec"]["ports"]}


def test_lmtp_listens_on_its_own_port_of_ingest_only(rendered: dict) -> None:
    objects = rendered["default"]
    pod, container = ingest_pod(objects)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8025, "lmtp": LMTP_PORT}
    env = env_of(container)
    assert env["MAILEXEC_LMTP_PORT"] == str(LMTP_PORT)
    assert env["MAILEXEC_LMTP_TRUSTED_NETWORKS"] == "127.0.0.0/8,::1"
    assert env["MAILEXEC_LMTP_MAX_CONNECTIONS"] == "256"
    assert env["MAILEXEC_LMTP_IDLE_TIMEOUT_S"] == "300"
    # No TLS unless asked for: no certificate named, nothing mounted.
    assert "MAILEXEC_LMTP_TLS_CERT" not in env and "MAILEXEC_LMTP_TLS_KEY" not in env
    assert [v["name"] for v in pod["volumes"]] == ["tmp", "secrets", "urls"]
    # The probes stay on HTTP.
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    for service in ("policy", "notifier", "executor", "console"):
        (other,) = deployment(objects, service)["spec"]["template"]["spec"]["containers"]
        assert "lmtp" not in {p["name"] for p in other["ports"]}, service
        assert not any(name.startswith("MAILEXEC_LMTP_") for name in env_of(other)), service
    assert not any(k.startswith("MAILEXEC_LMTP_") for k in named(objects, "ConfigMap", "mx-mailexec")["data"])


def test_ingest_service_carries_the_lmtp_port(rendered: dict) -> None:
    objects = rendered["default"]
    ports = service_ports(objects, "mx-mailexec-ingest")
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (8025, "http")
    assert (ports["lmtp"]["port"], ports["lmtp"]["targetPort"]) == (LMTP_PORT, "lmtp")
    assert ports["lmtp"]["protocol"] == "TCP"
    # Nothing exposed outside the cluster unless asked for.
    assert "mx-mailexec-ingest-lmtp" not in {s["metadata"]["name"] for s in of_kind(objects, "Service")}


def test_networkpolicy_admits_lmtp_from_its_own_peers_only(rendered: dict) -> None:
    rules = rules_by_port(policy_of(rendered["default"], "ingest"))
    assert rules[LMTP_PORT]["from"] == [MTA_PEER]
    custom = rules_by_port(policy_of(rendered["lmtp-tls"], "ingest"))
    assert custom[LMTP_PORT]["from"] == [
        {"podSelector": {"matchLabels": {"app": "postfix"}}},
        {"ipBlock": {"cidr": "198.51.100.0/24"}},
    ]
    # The LMTP peers open LMTP only, not HTTP.
    assert {"ipBlock": {"cidr": "198.51.100.0/24"}} not in custom[8025]["from"]
    for component in ("policy", "notifier", "executor"):
        spec = policy_of(rendered["lmtp-tls"], component)
        assert LMTP_PORT not in {p["port"] for r in spec["ingress"] for p in r["ports"]}, component


def test_ingest_can_ask_policy_at_rcpt_time(value_set: str, rendered: dict) -> None:
    """Reachable (both NetworkPolicies), addressed (MAILEXEC_POLICY_URL) and authorised
    (MAILEXEC_SERVICE_TOKEN, role service)."""
    objects = rendered[value_set]
    spec = policy_of(objects, "ingest")
    (to_policy,) = [r for r in spec["egress"] if r["ports"][0]["port"] == 8026]
    assert peer_components(to_policy["to"]) == {"policy"}
    (from_rule,) = policy_of(objects, "policy")["ingress"]
    assert "ingest" in peer_components(from_rule["from"])
    _, container = ingest_pod(objects)
    refs = {kind: ref[kind]["name"] for ref in container["envFrom"] for kind in ref}
    config = named(objects, "ConfigMap", refs["configMapRef"])["data"]
    assert config["MAILEXEC_POLICY_URL"] == "http://mx-mailexec-policy.mail.svc:8026"
    pod = deployment(objects, "ingest")["spec"]["template"]["spec"]
    projected, _ = secret_volume(pod, container)
    secret, key = secret_files(projected)["service_token"]
    assert key == "MAILEXEC_SERVICE_TOKEN"
    if value_set == "existing-secret":
        assert secret == "mailexec-external"  # holds MAILEXEC_SERVICE_TOKEN (README)
    else:
        assert secret == "mx-mailexec"
        assert "MAILEXEC_SERVICE_TOKEN" in hook_spec(objects)[secret]["generate"]
    assert env_of(container)["MAILEXEC_SERVICE_TOKEN_FILE"] == f"{SECRET_DIR}/service_token"
    assert not {"MAILEXEC_POLICY_URL", "MAILEXEC_SERVICE_TOKEN"} & set(env_of(container))


def test_lmtp_environment_is_what_the_program_accepts(rendered: dict) -> None:
    """The ConfigMap plus ingest's own variables, read by Settings and the listener's own
    parser as `serve ingest` does."""
    import ipaddress

    from services.ingest.lmtp import parse_networks

    parsed: dict[str, Settings] = {}
    for value_set, port, networks in (
        ("default", LMTP_PORT, ["127.0.0.0/8", "::1"]),
        ("lmtp-tls", LMTP_PORT, ["10.42.7.0/24", "fd00:42::/64"]),
    ):
        objects = rendered[value_set]
        _, container = ingest_pod(objects)
        env = {**named(objects, "ConfigMap", "mx-mailexec")["data"], **env_of(container)}
        fields = {k.removeprefix("MAILEXEC_").lower(): v for k, v in env.items() if k.startswith("MAILEXEC_")}
        settings = parsed[value_set] = Settings(**fields)
        assert settings.lmtp_port == port
        assert settings.bind_host == "0.0.0.0"
        assert settings.lmtp_port != settings.ingest_port
        assert parse_networks(settings.lmtp_trusted_networks) == tuple(
            ipaddress.ip_network(n, strict=True) for n in networks
        )
    assert parsed["lmtp-tls"].lmtp_max_connections == 64
    assert parsed["lmtp-tls"].lmtp_idle_timeout_s == 120.0


def test_tls_secret_is_mounted_read_only_and_named_by_the_settings(rendered: dict) -> None:
    objects = rendered["lmtp-tls"]
    pod, container = ingest_pod(objects)
    volumes = {v["name"]: v for v in pod["volumes"] if "secret" in v and v["name"] != "secrets"}
    (name,) = volumes
    secret = volumes[name]["secret"]
    assert secret["secretName"] == "mx-lmtp-tls"
    assert {i["key"]: i["path"] for i in secret["items"]} == {
        "fullchain.pem": "tls.crt",
        "tls.key": "tls.key",
    }
    # Owner root, group fsGroup, 0440: uid 10001 reads it through its fsGroup, nobody else.
    assert secret["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == name]
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a renewed Secret reaches the running pod
    env = env_of(container)
    assert env["MAILEXEC_LMTP_TLS_CERT"] == f"{mount['mountPath']}/tls.crt"
    assert env["MAILEXEC_LMTP_TLS_KEY"] == f"{mount['mountPath']}/tls.key"
    assert env["MAILEXEC_LMTP_TRUSTED_NETWORKS"] == "10.42.7.0/24,fd00:42::/64"
    # Only ingest pods see the key.
    for component, other in pod_templates(objects):
        if component != "ingest":
            assert "mx-lmtp-tls" not in json.dumps(other.get("volumes", [])), component


def test_external_lmtp_service_exposes_lmtp_alone_and_keeps_client_addresses(rendered: dict) -> None:
    objects = rendered["lmtp-tls"]
    service = named(objects, "Service", "mx-mailexec-ingest-lmtp")["spec"]
    assert service["type"] == "LoadBalancer"
    assert service["externalTrafficPolicy"] == "Local"
    assert service["loadBalancerSourceRanges"] == ["198.51.100.0/24"]
    (port,) = service["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("lmtp", LMTP_PORT, "lmtp")
    assert service["selector"] == deployment(objects, "ingest")["spec"]["selector"]["matchLabels"]


def test_lmtp_off_closes_the_port_everywhere(render: Any, required: dict, merge_values: Any) -> None:
    objects = render(merge_values(required, {"ingest": {"lmtp": {"enabled": False}}}))
    _, container = ingest_pod(objects)
    assert [p["name"] for p in container["ports"]] == ["http"]
    # The program's default is to listen: off must say so.
    assert {k: v for k, v in env_of(container).items() if not k.endswith("_FILE")} == {
        "MAILEXEC_LMTP_PORT": "0"
    }
    assert list(service_ports(objects, "mx-mailexec-ingest")) == ["http"]
    assert set(rules_by_port(policy_of(objects, "ingest"))) == {8025}


def test_empty_lmtp_peers_admit_nobody(render: Any, required: dict, merge_values: Any) -> None:
    """An ingress rule without `from` would admit everyone: an empty list renders no rule."""
    objects = render(merge_values(required, {"ingest": {"lmtp": {"networkPolicy": {"from": []}}}}))
    assert set(rules_by_port(policy_of(objects, "ingest"))) == {8025}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"tls": {"enabled": True}}, "ingest.lmtp.tls.enabled needs ingest.lmtp.tls.existingSecret"),
        ({"trustedNetworks": ["mta.example.org"]}, '"mta.example.org" is not an IP network'),
        ({"trustedNetworks": ["10.0.0.0/33"]}, '"10.0.0.0/33" is not an IP network'),
        ({"trustedNetworks": ["10.0.0.0/8", "0.0.0.0/0"]}, "would let every client deliver without AUTH"),
        ({"trustedNetworks": ["::/0"]}, "would let every client deliver without AUTH"),
        ({"containerPort": 8025}, "ingest.lmtp.containerPort must differ from ingest.containerPort"),
        ({"enabled": False, "externalService": {"enabled": True}}, "needs ingest.lmtp.enabled"),
    ],
)
def test_lmtp_values_fail_early_and_readably(
    chart: Any, required: dict, merge_values: Any, bad: dict, message: str
) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(merge_values(required, {"ingest": {"lmtp": bad}}), name="mx", namespace=NAMESPACE)


def test_notes_say_where_lmtp_is_and_who_may_use_it(notes: Any, required: dict, value_sets: dict) -> None:
    text = notes(required)
    assert "lmtp:inet:mx-mailexec-ingest.mail.svc:8024" in text
    assert "WARNING: as configured only a client inside an ingest pod" in text
    text = notes(value_sets["lmtp-tls"])
    assert 'STARTTLS, then AUTH PLAIN as user "mta"' in text
    assert "mx-mailexec-ingest-lmtp" in text
    assert "WARNING" not in text.split("LMTP:", 1)[1].split("Executor sandbox")[0]


# --- documentation -------------------------------------------------------------------


def test_schema_and_readme_tables_are_generated_from_values() -> None:
    script = CHART_DIR.parents[1] / "deploy" / "chart_docs.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def documented_params() -> list[str]:
    text = (CHART_DIR / "values.yaml").read_text()
    return re.findall(r"^\s*## @param (\S+)", text, flags=re.M)


def value_leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in value_leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_documented_in_values_and_readme() -> None:
    params = documented_params()
    assert len(params) == len(set(params)), "a value is documented twice"
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for leaf in value_leaves(defaults):
        assert any(leaf == p or leaf.startswith(p + ".") for p in params), f"undocumented: {leaf}"
    readme = (CHART_DIR / "README.md").read_text()
    for param in params:
        assert f"`{param}`" in readme, f"README lacks {param}"


def test_notes_tell_where_things_are(notes: Any, required: dict) -> None:
    text = notes(required)
    assert "http://mx-mailexec-ingest.mail.svc:8025/v1/messages" in text
    assert "MAILEXEC_ADMIN_TOKEN" in text
    assert "own mount and PID namespaces" in text
    assert "executor.sandbox.egress.enabled" in text


# --- the console (issue 15: SPEC §2 "console") ----------------------------------------


def console_pod(objects: list[dict]) -> tuple[dict, dict]:
    pod = deployment(objects, "console")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def secret_names_of(pod: dict) -> set[str]:
    """Every Secret a pod spec refers to, wherever (volumes, projections, env, envFrom)."""
    names: set[str] = set()

    def walk(node: Any, parent: str = "") -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "secretName" or (
                    key == "name" and parent in ("secretRef", "secretKeyRef", "secret")
                ):
                    names.add(value)
                walk(value, key)
        elif isinstance(node, list):
            for item in node:
                walk(item, parent)

    walk(pod)
    return names


@pytest.mark.parametrize("console_set", ["default", "console-ingress", "existing-secret"])
def test_console_runs_unprivileged_with_probes_on_8029(console_set: str, rendered: dict) -> None:
    objects = rendered[console_set]
    pod, container = console_pod(objects)
    assert container["args"] == ["serve", "console"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8029}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # Hardened exactly as the other unprivileged services.
    (policy,) = deployment(objects, "policy")["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"] == policy["securityContext"]
    policy_pod = deployment(objects, "policy")["spec"]["template"]["spec"]
    assert pod["securityContext"] == policy_pod["securityContext"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    assert "hostUsers" not in pod and "initContainers" not in pod
    # The Service: port 8029 onto the container's http port.
    ports = service_ports(objects, "mx-mailexec-console")
    assert list(ports) == ["http"]
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (8029, "http")
    service = named(objects, "Service", "mx-mailexec-console")["spec"]
    assert service["type"] == "ClusterIP"
    assert service["selector"] == deployment(objects, "console")["spec"]["selector"]["matchLabels"]
    assert named(objects, "PodDisruptionBudget", "mx-mailexec-console")


@pytest.mark.parametrize("console_set", ["default", "console-ingress", "existing-secret"])
def test_console_gets_its_cookie_key_and_no_token_database_or_broker_url(
    console_set: str, rendered: dict
) -> None:
    """SPEC §2: the console holds no data and no token; mailexec/supervisor.py's WITHHELD
    is the list of what it must not get, as a variable or as a file."""
    from mailexec.supervisor import WITHHELD

    objects = rendered[console_set]
    pod, container = console_pod(objects)
    env = env_of(container)
    refs = {kind: ref[kind]["name"] for ref in container["envFrom"] for kind in ref}
    assert set(refs) == {"configMapRef"}  # never a secretRef
    config = named(objects, "ConfigMap", refs["configMapRef"])["data"]
    visible = {**config, **env}
    for name in WITHHELD["console"]:
        assert name not in visible and f"{name}_FILE" not in visible, name
    assert not [k for k in visible if re.search(r"TOKEN|DATABASE|AMQP|SMTP", k)], sorted(visible)
    assert {k for k in visible if k.endswith("_FILE")} == {f"{CONSOLE_KEY}_FILE"}
    # Its one Secret is its own: the cookie key alone, mounted as a file.
    projected, _ = secret_volume(pod, container)
    own = "mx-console-key" if console_set == "existing-secret" else "mx-mailexec-console"
    assert secret_names_of(pod) == {own}
    assert secret_files(projected) == {"console_secret": (own, CONSOLE_KEY)}
    assert projected["defaultMode"] == 0o440
    assert env[f"{CONSOLE_KEY}_FILE"] == f"{SECRET_DIR}/console_secret"
    if console_set != "existing-secret":
        from tests.deploy.conftest import CONSOLE_KEY as KEY_VALUE

        data = named(objects, "Secret", own)
        assert data["stringData"] == {CONSOLE_KEY: KEY_VALUE}
        assert component_of(data) == "console"
        # ...and the tokens' Secret, which every other service reads, holds no cookie key.
        assert CONSOLE_KEY not in hook_spec(objects)["mx-mailexec"]["generate"]
    # No other pod gets the cookie key (supervisor.WITHHELD: policy, ingest, notifier, executor).
    for component, other in pod_templates(objects):
        if component != "console":
            assert own not in secret_names_of(other), component
            for c in all_containers(other):
                assert f"{CONSOLE_KEY}_FILE" not in env_of(c), component


def test_console_finds_the_apis_and_its_settings_are_what_the_program_accepts(rendered: dict) -> None:
    for value_set, secure, idle in (("default", "auto", 1800), ("console-ingress", "always", 900)):
        objects = rendered[value_set]
        _, container = console_pod(objects)
        env = {**named(objects, "ConfigMap", "mx-mailexec")["data"], **env_of(container)}
        assert env["MAILEXEC_POLICY_URL"] == "http://mx-mailexec-policy.mail.svc:8026"
        assert env["MAILEXEC_INGEST_URL"] == "http://mx-mailexec-ingest.mail.svc:8025"
        assert env["MAILEXEC_NOTIFIER_URL"] == "http://mx-mailexec-notifier.mail.svc:8027"
        fields = {
            k.removeprefix("MAILEXEC_").lower(): v
            for k, v in env.items()
            if k.startswith("MAILEXEC_") and not k.endswith("_FILE")
        }
        settings = Settings(**fields)
        assert settings.console_port == 8029 and settings.bind_host == "0.0.0.0"
        assert settings.console_cookie_secure == secure, value_set
        assert settings.console_session_idle_s == idle, value_set


def test_cookie_secure_can_be_set_and_never_is_refused_behind_tls(
    render: Any, chart: Any, value_sets: dict, merge_values: Any
) -> None:
    objects = render(merge_values(value_sets["default"], {"console": {"cookieSecure": "always"}}))
    assert env_of(console_pod(objects)[1])["MAILEXEC_CONSOLE_COOKIE_SECURE"] == "always"
    refused = re.escape("console.cookieSecure=never with console.ingress.tls")
    with pytest.raises(helm.HelmError, match=refused):
        chart.render(
            merge_values(value_sets["console-ingress"], {"console": {"cookieSecure": "never"}}),
            name="mx",
            namespace=NAMESPACE,
        )


def test_console_ingress_serves_tls_and_its_controller_may_reach_the_console(rendered: dict) -> None:
    assert not [i for i in of_kind(rendered["default"], "Ingress") if component_of(i) == "console"]
    objects = rendered["console-ingress"]
    ingress = named(objects, "Ingress", "mx-mailexec-console")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    (rule,) = ingress["rules"]
    assert rule["host"] == "console.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "mx-mailexec-console", "port": {"name": "http"}}
    assert ingress["tls"] == [{"hosts": ["console.example.org"], "secretName": "console.example.org-tls"}]
    (from_rule,) = policy_of(objects, "console")["ingress"]
    assert [p["port"] for p in from_rule["ports"]] == [8029]
    labels = [p["podSelector"]["matchLabels"] for p in from_rule["from"]]
    assert {"app.kubernetes.io/name": "ingress-nginx"} in labels
    # Only the console's Ingress was asked for: ingest and policy stay closed to it.
    for component in ("ingest", "policy"):
        for r in policy_of(objects, component)["ingress"]:
            assert {"app.kubernetes.io/name": "ingress-nginx"} not in [
                p.get("podSelector", {}).get("matchLabels") for p in r["from"]
            ], component


def test_console_reaches_policy_ingest_and_the_notifier_only(value_set: str, rendered: dict) -> None:
    objects = rendered[value_set]
    spec = policy_of(objects, "console")
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert egress_ports(spec) == {53, 8025, 8026, 8027}
    targets = {r["ports"][0]["port"]: peer_components(r["to"]) for r in spec["egress"] if "to" in r}
    assert targets == {8025: {"ingest"}, 8026: {"policy"}, 8027: {"notifier"}}
    # Nothing reaches the console by default but its Ingress controller (when on); an
    # ingress rule without peers would admit everyone.
    if value_set != "console-ingress":
        assert spec["ingress"] == []
    # ...and those three admit it: ingest on HTTP only, never LMTP.
    assert "console" in peer_components(policy_of(objects, "policy")["ingress"][0]["from"])
    ingest = rules_by_port(policy_of(objects, "ingest"))
    assert "console" in peer_components(ingest[8025]["from"])
    if LMTP_PORT in ingest:
        assert "console" not in peer_components(ingest[LMTP_PORT]["from"])
    (notifier,) = policy_of(objects, "notifier")["ingress"]
    assert "console" in peer_components(notifier["from"])
    # No one else lists the console as a peer.
    for component in ("executor",):
        rules = policy_of(objects, component)
        assert "console" not in peer_components([p for r in rules["ingress"] for p in r["from"]])


def test_console_peers_and_scrapers_are_admitted(render: Any, required: dict, merge_values: Any) -> None:
    lb = {"ipBlock": {"cidr": "203.0.113.0/24"}}
    prometheus = {"podSelector": {"matchLabels": {"app": "prometheus"}}}
    extra = {"console": {"networkPolicy": {"from": [lb]}}, "networkPolicy": {"metricsPeers": [prometheus]}}
    objects = render(merge_values(required, extra))
    (rule,) = policy_of(objects, "console")["ingress"]
    assert rule["from"] == [lb, prometheus]
    assert [p["port"] for p in rule["ports"]] == [8029]


def test_console_off_renders_nothing_of_it_and_needs_no_key(render: Any, merge_values: Any) -> None:
    from tests.deploy.conftest import REQUIRED

    values = {k: v for k, v in REQUIRED.items() if k != "console"}
    objects = render(merge_values(values, {"console": {"enabled": False}}))
    assert not [o for o in objects if o["metadata"]["labels"].get("app.kubernetes.io/component") == "console"]
    assert not [o for o in objects if "console" in o["metadata"]["name"]]
    for component in ("policy", "ingest", "notifier"):
        rules = policy_of(objects, component)["ingress"]
        assert "console" not in peer_components([p for r in rules for p in r["from"]]), component


def test_console_without_a_key_gets_one_generated_once_by_the_hook(
    rendered: dict, chart: Any, merge_values: Any
) -> None:
    """Issue 16: never generated with `lookup` (such a key changes on every GitOps render,
    and a new key signs everyone out): the secrets hook generates it once, unless given."""
    from tests.deploy.conftest import REQUIRED

    objects = rendered["generated"]
    pod, container = console_pod(objects)
    projected, _ = secret_volume(pod, container)
    assert secret_files(projected) == {"console_secret": ("mx-mailexec-console-key", CONSOLE_KEY)}
    assert hook_spec(objects)["mx-mailexec-console-key"]["generate"] == [CONSOLE_KEY]
    assert not [o for o in of_kind(objects, "Secret") if "console" in o["metadata"]["name"]]
    # Given (as a value or an existing Secret): the hook leaves the console alone.
    assert "mx-mailexec-console-key" not in hook_spec(rendered["default"])
    values = {k: v for k, v in REQUIRED.items() if k != "console"}
    with pytest.raises(helm.HelmError, match="console.secret is shorter than 32 characters"):
        chart.render(merge_values(values, {"console": {"secret": "short"}}), name="mx", namespace=NAMESPACE)
    template = str(CHART_DIR / "templates" / "console")
    assert "lookup" not in "".join(p.read_text() for p in Path(template).glob("*.yaml"))


def test_console_renders_the_same_every_time(render: Any, value_sets: dict) -> None:
    """GitOps (Argo CD, Flux) renders on every sync: the console's objects must not change,
    or its pods would roll and everyone be signed out."""
    for name in ("default", "existing-secret", "generated"):
        first, second = render(value_sets[name]), render(value_sets[name])
        for kind in ("Deployment", "Secret"):
            mine = [o for o in of_kind(first, kind) if "console" in o["metadata"]["name"]]
            again = [o for o in of_kind(second, kind) if "console" in o["metadata"]["name"]]
            assert mine == again, (name, kind)
            # existingSecret: the chart renders no Secret for the console; generated: the hook's.
            assert bool(mine) != ((kind == "Secret") and name in ("existing-secret", "generated")), (
                name,
                kind,
            )


@pytest.mark.parametrize(
    "bad",
    [
        {"console": {"cookieSecure": "sometimes"}},
        {"console": {"sessionIdleSeconds": 0}},
        {"console": {"enabled": "yes"}},
        {"console": {"containerPort": 70000}},
        {"console": {"ingress": {"tls": "on"}}},
        {"console": {"networkPolicy": {"from": "10.0.0.0/8"}}},
        {"console": {"token": "abc"}},
    ],
)
def test_schema_refuses_bad_console_values(chart: Any, bad: dict, required: dict, merge_values: Any) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.render(merge_values(required, bad), name="mx", namespace=NAMESPACE)


def test_notes_say_how_to_reach_the_console(notes: Any, required: dict, value_sets: dict) -> None:
    text = notes(required)
    assert "http://mx-mailexec-console.mail.svc:8029/" in text
    assert "kubectl -n mail port-forward svc/mx-mailexec-console 8029" in text
    assert "Sign in with the admin token" in text
    assert "console.networkPolicy.from" in text
    text = notes(value_sets["console-ingress"])
    assert "open https://console.example.org/" in text
    assert "Secure: always" in text
    assert "WARNING" not in text.split("Console", 1)[1].split("Tokens")[0]
    plain_http = {"ingress": {"enabled": True, "hostname": "c.example.org"}}
    plain = notes({**required, "console": {**required["console"], **plain_http}})
    assert "WARNING: the console's Ingress serves plain http" in plain


def test_smtp_relay_with_credentials_comes_from_a_secret_file(
    render: Any, chart: Any, required: dict, merge_values: Any
) -> None:
    """notifier.smtp.url is a plain variable (the schema refuses credentials in it); a relay
    that needs them is named by notifier.smtp.existingSecret and read as a file."""
    objects = render(merge_values(required, {"notifier": {"smtp": {"existingSecret": "relay"}}}))
    pod = deployment(objects, "notifier")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert "MAILEXEC_SMTP_URL" not in env
    assert env["MAILEXEC_SMTP_URL_FILE"] == f"{SECRET_DIR}/smtp_url"
    projected, _ = secret_volume(pod, container)
    assert secret_files(projected)["smtp_url"] == ("relay", "smtp-url")
    plain = env_of(deployment(render(required), "notifier")["spec"]["template"]["spec"]["containers"][0])
    assert plain["MAILEXEC_SMTP_URL"] == "smtp://127.0.0.1:25"
    with pytest.raises(helm.HelmValuesError):
        bad = {"notifier": {"smtp": {"url": "smtp://user:pw@relay:25"}}}
        chart.render(merge_values(required, bad), name="mx", namespace=NAMESPACE)


def test_keda_with_an_existing_rabbitmq_secret_needs_its_own_url_secret(
    render: Any, chart: Any, value_sets: dict, merge_values: Any
) -> None:
    values = merge_values(value_sets["existing-secret"], {"keda": {"enabled": True}})
    with pytest.raises(
        helm.HelmError, match=re.escape("keda.enabled with externalRabbitmq.existingSecret needs")
    ):
        chart.render(values, name="mx", namespace=NAMESPACE)
    objects = render(merge_values(values, {"keda": {"existingSecret": "mx-keda", "hostSecretKey": "url"}}))
    (auth,) = of_kind(objects, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": "mx-keda", "key": "url"}]
    assert of_kind(objects, "Secret") == []
