"""`make chart-lint`: Helm's own lint of charts/mailexec (strict), then every manifest of
a default render checked against the Kubernetes schemas, then the generated docs.

No helm binary needed: helm-python-sdk bundles Helm's Go SDK.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "mailexec"
VALUES = {
    # bitnami/postgresql and bitnami/rabbitmq next to the release, by host and Secret; the
    # tokens, service passwords and the console's key generated once by the secrets hook.
    "externalDatabase": {
        "host": "mailexec-postgresql",
        "existingSecret": "mailexec-postgresql",
        "existingSecretPasswordKey": "postgres-password",
    },
    "externalRabbitmq": {"host": "mailexec-rabbitmq", "existingSecret": "mailexec-rabbitmq"},
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
}
KUBE_VERSION = "1.30.0"


def main() -> int:
    failures = 0
    report = helm.lint(CHART, VALUES, strict=True, namespace="mailexec")
    for message in report["messages"]:
        level = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(message["severity"], "?")
        print(f"[{level}] {message['path']}: {message['error']}")
        failures += message["severity"] >= 2
    failures += len(report["errors"])
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(VALUES, name="mailexec", namespace="mailexec", is_install=True)
    checked = 0
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for obj in filter(None, yaml.safe_load_all(text)):
            if obj["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/")):
                continue  # CRDs: tests/deploy checks their structure
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as exc:
                print(f"[ERROR] {path}: {obj['kind']}: {exc.message}")
                failures += 1
    print(f"helm lint: {len(report['messages'])} messages; {checked} manifests valid for {KUBE_VERSION}")
    docs = subprocess.run([sys.executable, str(Path(__file__).with_name("chart_docs.py")), "--check"])
    failures += docs.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
