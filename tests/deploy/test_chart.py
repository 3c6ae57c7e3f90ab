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

SERVICES = ("ingest", "policy", "notifier", "executor")
PORTS = {"ingest": 8025, "policy": 8026, "notifier": 8027, "executor": 8028}
EXECUTOR_BASE_CAPS = {"SETUID", "SETGID", "KILL"}

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
        {"executor": {"sandbox": {"networkIsolation": {"enabled": "yes"}}}},
        {"unknownTopLevelKey": 1},
    ],
)
def test_schema_refuses_bad_values(chart: Any, bad: dict, required: dict, merge_values: Any) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.render(merge_values(required, bad), name="mx", namespace=NAMESPACE)


def test_missing_connection_urls_fail_early_and_readably(chart: Any) -> None:
    with pytest.raises(helm.HelmError) as caught:
        chart.render({}, name="mx", namespace=NAMESPACE)
    assert "secrets.databaseUrl is required" in str(caught.value)
    assert "secrets.amqpUrl is required" in str(caught.value)


def test_sys_admin_only_through_the_documented_opt_in(chart: Any, required: dict, merge_values: Any) -> None:
    with pytest.raises(helm.HelmError, match="networkIsolation"):
        chart.render(
            merge_values(required, {"executor": {"extraCapabilities": ["CAP_SYS_ADMIN"]}}),
            name="mx",
            namespace=NAMESPACE,
        )


# --- Kubernetes schemas --------------------------------------------------------------


def test_every_manifest_is_valid_kubernetes(value_set: str, rendered: dict) -> None:
    objects = rendered[value_set]
    assert objects
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(obj, KEDA_SCHEMAS[obj["kind"]])
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
    assert ("Secret", "mx-mailexec") in kinds
    assert of_kind(objects, "Ingress") == []
    assert of_kind(objects, "ScaledObject") == []


# --- security contexts ---------------------------------------------------------------


def test_unprivileged_pods_are_locked_down(value_set: str, rendered: dict) -> None:
    pods = [(c, p) for c, p in pod_templates(rendered[value_set]) if c != "executor"]
    assert {c for c, _ in pods} == {"ingest", "policy", "notifier", "migrations"}
    for component, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, component
        assert pod["securityContext"]["runAsUser"] != 0, component
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False, component
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


def test_executor_keeps_exactly_setuid_setgid_kill(value_set: str, rendered: dict) -> None:
    if value_set == "sandbox-opt-ins":
        pytest.skip("the opt-ins add capabilities: test_sandbox_opt_ins_add_only_their_documented_needs")
    objects = rendered[value_set]
    pod = deployment(objects, "executor")["spec"]["template"]["spec"]
    container = executor_container(objects)
    sc = container["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == EXECUTOR_BASE_CAPS
    assert "SYS_ADMIN" not in sc["capabilities"]["add"]
    # no_new_privs does not stop root's setuid()/setgid(); it stops setuid-file gains.
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILEXEC_SANDBOX_NETWORK"] == "false"
    assert env["MAILEXEC_SANDBOX_BWRAP"] == "false"
    trusted = env["MAILEXEC_TRUSTED_DIR"]
    assert trusted == "/var/lib/mailexec/trusted"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[trusted]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    for init in pod["initContainers"]:
        assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_sandbox_opt_ins_add_only_their_documented_needs(rendered: dict) -> None:
    container = executor_container(rendered["sandbox-opt-ins"])
    sc = container["securityContext"]
    assert set(sc["capabilities"]["add"]) == EXECUTOR_BASE_CAPS | {"SYS_ADMIN"}
    assert sc["seccompProfile"] == {"type": "Unconfined"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILEXEC_SANDBOX_NETWORK"] == "true"
    assert env["MAILEXEC_SANDBOX_BWRAP"] == "true"


def test_only_the_executor_gets_any_capability(value_set: str, rendered: dict) -> None:
    for component, pod in pod_templates(rendered[value_set]):
        for container in all_containers(pod):
            added = container["securityContext"]["capabilities"].get("add", [])
            if added:
                assert (component, container["name"]) == ("executor", "executor")


# --- migrations hook, probes, configuration ------------------------------------------


@pytest.mark.parametrize("secret_set", ["default", "existing-secret"])
def test_migrations_run_as_pre_install_pre_upgrade_hook(secret_set: str, rendered: dict) -> None:
    value_set = secret_set
    objects = rendered[value_set]
    job = named(objects, "Job", "mx-mailexec-migrations")
    assert hook_kinds(job) == {"pre-install", "pre-upgrade"}
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # Hooks run before the release's Secret exists: the Job may only use a hook Secret
    # created before it, or the user's existing one.
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    hook_secrets = [o for o in of_kind(objects, "Secret") if hook_kinds(o)]
    if value_set == "existing-secret":
        assert refs == {"mailexec-external"}
        assert hook_secrets == []
    else:
        (secret,) = hook_secrets
        assert refs == {secret["metadata"]["name"]}
        assert hook_kinds(secret) == {"pre-install", "pre-upgrade"}
        weight = int(secret["metadata"]["annotations"]["helm.sh/hook-weight"])
        assert weight < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    for obj in objects:
        if obj is not job and obj not in hook_secrets:
            assert not hook_kinds(obj), obj["metadata"]["name"]


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
    assert data["MAILEXEC_POLICY_URL"] == "http://mx-mailexec-policy.mail.svc:8026"


def test_every_mailexec_variable_is_a_real_setting(value_set: str, rendered: dict) -> None:
    """A misspelt MAILEXEC_* name would be silently ignored by pydantic-settings."""
    fields = {f"MAILEXEC_{name.upper()}" for name in Settings.model_fields}
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


def test_secret_holds_urls_and_tokens(rendered: dict, required: dict) -> None:
    secret = named(rendered["default"], "Secret", "mx-mailexec")["stringData"]
    assert secret["MAILEXEC_DATABASE_URL"] == required["secrets"]["databaseUrl"]
    assert secret["MAILEXEC_AMQP_URL"] == required["secrets"]["amqpUrl"]
    for token in ("MAILEXEC_ADMIN_TOKEN", "MAILEXEC_INGEST_TOKEN", "MAILEXEC_SERVICE_TOKEN"):
        assert re.fullmatch(r"[A-Za-z0-9]{48}", secret[token])
    assert len({secret[t] for t in secret if t.endswith("_TOKEN")}) == 3


def test_existing_secret_replaces_the_release_secret(rendered: dict) -> None:
    objects = rendered["existing-secret"]
    assert [o for o in of_kind(objects, "Secret")] == []
    for service in SERVICES:
        pod = deployment(objects, service)["spec"]["template"]["spec"]
        refs = [e["secretRef"]["name"] for e in pod["containers"][0]["envFrom"] if "secretRef" in e]
        assert refs == ["mailexec-external"]


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
    assert (ref["parameter"], ref["name"], ref["key"]) == ("host", "mx-mailexec", "MAILEXEC_AMQP_URL")
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


def test_only_ingest_is_reachable_from_mtas(rendered: dict) -> None:
    objects = rendered["default"]
    for component in SERVICES:
        spec = policy_of(objects, component)
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        labels = [p.get("podSelector", {}).get("matchLabels", {}) for r in spec["ingress"] for p in r["from"]]
        has_mta = {"mailexec.io/client": "mta"} in labels
        assert has_mta == (component == "ingest"), component
    (rule,) = policy_of(objects, "ingest")["ingress"]
    assert [p["port"] for p in rule["ports"]] == [8025]


def test_only_policy_is_reachable_from_admins(rendered: dict) -> None:
    objects = rendered["default"]
    (rule,) = policy_of(objects, "policy")["ingress"]
    assert {"mailexec.io/client": "admin"} in [p["podSelector"]["matchLabels"] for p in rule["from"]]
    assert peer_components(rule["from"]) == {"executor", "notifier", "ingest"}
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
        (rule_in,) = policy_of(objects, component)["ingress"]
        labels = [p.get("podSelector", {}).get("matchLabels") for p in rule_in["from"]]
        assert {"app.kubernetes.io/name": "ingress-nginx"} in labels
    tls = named(objects, "Ingress", "mx-mailexec-ingest")["spec"]["tls"]
    assert tls == [{"hosts": ["ingest.example.org"], "secretName": "ingest.example.org-tls"}]


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
    assert "networkIsolation" in text
