"""The alert rules (issue 16): one file, deploy/prometheus/alerts.yaml (a link to the chart's
files/prometheus-alerts.yaml), loaded by Prometheus as is and embedded by the chart's
PrometheusRule; checked with promtool, fired on synthetic series, and every metric they read
is one a mailexec service really exports (or RabbitMQ's, or Prometheus' own `up`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
CHART_COPY = ROOT / "charts" / "mailexec" / "files" / "prometheus-alerts.yaml"
ALERT_NAMES = {
    "MailexecDeliveriesBacklogGrowing",
    "MailexecOldestJobTooOld",
    "MailexecNoConsumersOnDeliveries",
    "MailexecHighFailureRatio",
    "MailexecExecutorDown",
    "MailexecSandboxFailing",
    "MailexecDsnOutboxStuck",
    "MailexecRetentionFailing",
    "MailexecBodyRingStuck",
}
# Metrics from outside mailexec: RabbitMQ's prometheus plugin (per-object) and Prometheus.
FOREIGN = {"rabbitmq_queue_messages_ready", "rabbitmq_queue_consumers", "up"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool missing: Debian's `prometheus` package ships it (apt-get install prometheus)",
)


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_one_source_for_prometheus_and_the_chart() -> None:
    assert ALERTS.is_symlink() and ALERTS.resolve() == CHART_COPY.resolve()
    assert {r["alert"] for r in rules()} == ALERT_NAMES


def exported_metrics() -> set[str]:
    """Names the services register (prometheus_client collectors, custom collectors)."""
    names: set[str] = set()
    for path in [*ROOT.glob("services/*/metrics.py"), *ROOT.glob("shared/*metrics.py")]:
        if path.exists():
            names |= set(re.findall(r"\"(mailexec_[a-z_]+)\"", path.read_text()))
    return names


def test_every_metric_an_alert_reads_exists() -> None:
    exported = exported_metrics()
    # A counter is exported with _total; prometheus_client names it without in the source
    # when the name already ends in _total, so both spellings are kept as they are.
    for rule in rules():
        used = set(re.findall(r"\b(mailexec_[a-z_]+|rabbitmq_[a-z_]+|up)\b(?=\s*[{\[(])", rule["expr"]))
        assert used, rule["alert"]
        unknown = {m for m in used if m not in FOREIGN and m not in exported}
        assert not unknown, (rule["alert"], unknown)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in done.stdout


@needs_promtool
def test_alerts_fire_on_synthetic_series() -> None:
    """The backlog and oldest-job alerts (and the others) fire when they should and stay
    quiet when they should (deferred recipients, a steady queue, a notifier still sending)."""
    fired = {
        t["alertname"]
        for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    assert {"MailexecDeliveriesBacklogGrowing", "MailexecOldestJobTooOld"} <= fired
    assert fired == ALERT_NAMES - {"MailexecSandboxFailing"}
    done = subprocess.run(
        [PROMTOOL, "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- the chart's objects (metrics.serviceMonitor / metrics.prometheusRule) ------------


def test_prometheus_rule_is_the_file(rendered: dict) -> None:
    objects = rendered["metrics"]
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert rule["metadata"]["name"] == "mx-mailexec"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    for name in ("default", "existing-secret"):
        assert not [o for o in rendered[name] if o["kind"] in ("PrometheusRule", "ServiceMonitor")], name


def test_service_monitor_scrapes_every_service_of_the_release(rendered: dict) -> None:
    objects = rendered["metrics"]
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    spec = monitor["spec"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert spec["namespaceSelector"] == {"matchNames": ["mail"]}
    selector = spec["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "mailexec", "app.kubernetes.io/instance": "mx"}
    endpoints = {e["port"]: e for e in spec["endpoints"]}
    assert set(endpoints) == {"http", "metrics"}
    assert all(e["path"] == "/metrics" and e["interval"] == "30s" for e in endpoints.values())
    # Which Services it finds, and on which port each serves /metrics.
    scraped = {}
    for service in (o for o in objects if o["kind"] == "Service"):
        labels = service["metadata"]["labels"]
        if all(labels.get(k) == v for k, v in selector.items()):
            ports = {p["name"] for p in service["spec"]["ports"]} & set(endpoints)
            if ports:
                scraped[service["metadata"]["name"]] = ports
    assert scraped == {
        "mx-mailexec-ingest": {"http"},
        "mx-mailexec-policy": {"http"},
        "mx-mailexec-notifier": {"http"},
        "mx-mailexec-console": {"http"},
        "mx-mailexec-executor-metrics": {"metrics"},
    }
    # MailexecExecutorDown matches the executor's job, which is its Service's name.
    assert re.fullmatch(".*executor.*", "mx-mailexec-executor-metrics")
