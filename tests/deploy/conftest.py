"""Fixtures of the deployment tests: the Helm chart rendered by Helm's own engine.

Rendering goes through ``helm-python-sdk`` (Helm's Go SDK behind a C ABI), so what is
asserted here is what ``helm install`` would send to a cluster: the chart uses no ``lookup``
and generates nothing at render time, so there is nothing a cluster would change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a test dependency")

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "mailexec"
DEPLOY_DIR = REPO_ROOT / "deploy"
RELEASE = "mx"
NAMESPACE = "mail"
KUBE_VERSION = "1.30.0"

# The console's cookie key, given as a value (console.secret); without one (and without
# console.existingSecret) the secrets hook generates it once.
CONSOLE_KEY = "k" * 24 + "E" * 24 + "y" * 16
# What every install must give: where the external PostgreSQL and RabbitMQ are, and their
# passwords (the database owner's goes to the migrations Job alone).
REQUIRED: dict[str, Any] = {
    "externalDatabase": {"host": "pg.db.svc", "password": "owner-pw"},
    "externalRabbitmq": {"host": "mq.mq.svc", "password": "mq-pw"},
    "console": {"secret": CONSOLE_KEY},
}
# Nothing but existing Secrets: the external servers' (bitnami/postgresql's and
# bitnami/rabbitmq's), the tokens', the console's. The chart renders no Secret and no hook
# generates one.
EXISTING: dict[str, Any] = {
    "externalDatabase": {
        "host": "mx-postgresql.db.svc",
        "existingSecret": "mx-postgresql",
        "existingSecretPasswordKey": "postgres-password",
    },
    "externalRabbitmq": {
        "host": "mx-rabbitmq.mq.svc",
        "vhost": "mail",
        "existingSecret": "mx-rabbitmq",
        "existingSecretPasswordKey": "rabbitmq-password",
    },
    "secrets": {"existingSecret": "mailexec-external"},
    "console": {"existingSecret": "mx-console-key"},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


EGRESS_BLOCKED = ["10.244.0.0/16", "10.96.0.0/12", "192.168.10.0/24", "fd00:10:96::/112"]

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": REQUIRED,
    "keda": _merge(REQUIRED, {"keda": {"enabled": True}}),
    "metrics": _merge(
        REQUIRED,
        {
            "metrics": {
                "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            }
        },
    ),
    "existing-secret": EXISTING,
    # Nothing given but the servers: the hook generates every token, password and the
    # console's key.
    "generated": {k: v for k, v in REQUIRED.items() if k != "console"},
    # The console exposed as it usually is: an Ingress with TLS (cookies always Secure).
    "console-ingress": _merge(
        REQUIRED,
        {
            "console": {
                "ingress": {
                    "enabled": True,
                    "hostname": "console.example.org",
                    "tls": True,
                    "ingressClassName": "nginx",
                },
                "sessionIdleSeconds": 900,
            }
        },
    ),
    "ingress": _merge(
        REQUIRED,
        {
            "ingest": {"ingress": {"enabled": True, "hostname": "ingest.example.org", "tls": True}},
            "policy": {"ingress": {"enabled": True, "hostname": "policy.example.org"}},
        },
    ),
    # LMTP for MTAs in and outside the cluster: STARTTLS from a cert-manager style Secret,
    # a trusted MTA pod range, a LoadBalancer Service and its clients' ipBlock.
    "lmtp-tls": _merge(
        REQUIRED,
        {
            "ingest": {
                "lmtp": {
                    "trustedNetworks": ["10.42.7.0/24", "fd00:42::/64"],
                    "maxConnections": 64,
                    "idleTimeoutSeconds": 120,
                    "tls": {"enabled": True, "existingSecret": "mx-lmtp-tls", "certKey": "fullchain.pem"},
                    "externalService": {
                        "enabled": True,
                        "loadBalancerSourceRanges": ["198.51.100.0/24"],
                    },
                    "networkPolicy": {
                        "from": [
                            {"podSelector": {"matchLabels": {"app": "postfix"}}},
                            {"ipBlock": {"cidr": "198.51.100.0/24"}},
                        ]
                    },
                }
            }
        },
    ),
    # An egress program exists (NET_ADMIN, the cluster's CIDRs blocked), the pod in its own
    # user namespace, and a site AppArmor profile.
    "sandbox-opt-ins": _merge(
        REQUIRED,
        {
            "executor": {
                "sandbox": {
                    "egress": {"enabled": True, "blockedCIDRs": EGRESS_BLOCKED},
                    "userNamespace": {"enabled": True},
                    "appArmorProfile": {"type": "Localhost", "localhostProfile": "mailexec-executor"},
                }
            }
        },
    ),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``value_set`` runs once per named value set."""
    if "value_set" in metafunc.fixturenames:
        metafunc.parametrize("value_set", sorted(VALUE_SETS))


@pytest.fixture(scope="session")
def required() -> dict[str, Any]:
    return copy.deepcopy(REQUIRED)


@pytest.fixture(scope="session")
def value_sets() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(VALUE_SETS)


@pytest.fixture(scope="session")
def merge_values() -> Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]:
    """Deep-merge extra values over base ones (what ``helm -f a -f b`` does)."""
    return _merge


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: Any) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """Render values into the list of Kubernetes objects (NOTES.txt left out)."""

    def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    objects.append(doc)
        return objects

    return _render


@pytest.fixture(scope="session")
def rendered(render: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> dict[str, list[dict]]:
    """Every named value set, rendered once per session."""
    return {name: render(values) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def notes(chart: Any) -> Callable[[dict[str, Any]], str]:
    def _notes(values: dict[str, Any]) -> str:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))

    return _notes
