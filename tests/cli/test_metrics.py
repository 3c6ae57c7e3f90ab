"""Every metric the docs (and the Grafana dashboard) name exists on the services' /metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx

from tests.cli.conftest import Pipeline
from tests.cli.helpers import ROOT, mx

HERE = Path(__file__).resolve().parent
METRIC_RE = re.compile(r"\bmailexec_[a-z0-9_]+[a-z0-9]\b")
HEADING_RE = re.compile(r"^#{1,6}\s+(.*)$")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def documented_metrics() -> dict[str, str]:
    """name → where: `mailexec_*` names in the docs' "Metrics" sections and in the dashboard."""
    found: dict[str, str] = {}
    for doc in sorted((ROOT / "docs").glob("**/*.md")):
        in_metrics = False
        in_code = False
        for line in doc.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
            m = HEADING_RE.match(line) if not in_code else None
            if m:
                in_metrics = "metric" in m.group(1).lower()
                continue
            if in_metrics:
                for name in METRIC_RE.findall(line):
                    found.setdefault(name, str(doc.relative_to(ROOT)))
    dashboard = ROOT / "deploy" / "grafana-dashboard.json"
    for panel in json.loads(dashboard.read_text()).get("panels", []):
        for target in panel.get("targets", []):
            for name in METRIC_RE.findall(target.get("expr", "")):
                found.setdefault(name, f"{dashboard.name}: {panel.get('title')}")
    return found


def exposed(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_documented_metrics_exist_after_a_delivery(
    pipeline: Pipeline, env: dict[str, str], world_dir: Path
) -> None:
    documented = documented_metrics()
    assert len(documented) >= 10, documented  # the docs do name the metrics

    prog = world_dir / "deliver"
    subprocess.run(["cc", "-O2", "-o", str(prog), str(HERE / "data" / "deliver.c")], check=True)
    assert mx(env, "programs", "add", "deliver", str(prog)).returncode == 0
    home = world_dir / "home"
    home.mkdir(mode=0o700)
    os.chown(home, 64950, 64950)
    assert (
        mx(env, "settings", "set", "suspended=false", "mode=secure", "valid_shells=/bin/sh").returncode == 0
    )
    r = mx(
        env,
        "accounts",
        "set",
        "metrics@example.org",
        "--uid",
        "64950",
        "--gid",
        "64950",
        "--home",
        str(home),
        "--shell",
        "/bin/sh",
        "--owner-name",
        "metrics",
        "--program",
        "deliver",
    )
    assert r.returncode == 0, r.stderr
    r = mx(
        env,
        "submit",
        "--from",
        "a@example.net",
        "--to",
        "metrics@example.org",
        "-v",
        input=b"Subject: metrics\r\n\r\nhi\r\n",
        subprocess_=True,
    )
    assert r.returncode == 0, r.stderr
    mid = r.stdout.split()[-1]
    deadline = time.monotonic() + 30
    while True:
        msg = json.loads(mx(env, "messages", "show", mid, "--json").stdout)
        if msg["recipients"][0]["state"] == "delivered":
            break
        assert time.monotonic() < deadline, f"{msg}\n{pipeline.logs()}"
        time.sleep(0.2)

    names: set[str] = set()
    for service, url in pipeline.metrics_urls().items():
        resp = httpx.get(url, timeout=10)
        assert resp.status_code == 200, service
        names |= exposed(resp.text)
    delivered = [
        line
        for line in httpx.get(pipeline.metrics_urls()["executor"]).text.splitlines()
        if line.startswith('mailexec_deliveries_total{outcome="delivered"}')
    ]
    assert delivered and float(delivered[0].split()[-1]) >= 1

    def exists(name: str) -> bool:
        return name in names or any(name.endswith(s) and name[: -len(s)] in names for s in SUFFIXES)

    missing = {n: where for n, where in documented.items() if not exists(n)}
    assert not missing, f"documented but not exposed: {missing}"
