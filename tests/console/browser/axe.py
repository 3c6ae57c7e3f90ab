"""axe-core in the page: inject the vendored axe.min.js, run it, fail on what matters.

``assert_accessible(page)`` fails with one readable paragraph per serious or critical
violation: the rule's id, its help text and link, and the CSS targets of every node
that breaks it. Minor and moderate findings are not failures (they are returned by
``audit`` for whoever wants to look).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

VENDOR = Path(__file__).resolve().parent / "vendor"
AXE_JS = VENDOR / "axe.min.js"
AXE_VERSION = "4.14.1"
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
FAILING_IMPACTS = ("serious", "critical")


@cache
def axe_path() -> Path:
    """The vendored file, once checked against VENDOR.md's hash."""
    digest = hashlib.sha256(AXE_JS.read_bytes()).hexdigest()
    assert digest == AXE_SHA256, (
        f"{AXE_JS} is not axe-core {AXE_VERSION} as vendored (sha256 {digest}); "
        "see vendor/VENDOR.md to refresh it")
    return AXE_JS


def audit(page: Page) -> list[dict[str, Any]]:
    """Every violation axe finds in the page as it is now (all impacts)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(path=str(axe_path()))
    version = page.evaluate("() => window.axe.version")
    assert version == AXE_VERSION, f"axe {version} in the page, expected {AXE_VERSION}"
    result = page.evaluate(
        "async () => { const r = await window.axe.run(document, {resultTypes: ['violations']});"
        " return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " helpUrl: v.helpUrl, nodes: v.nodes.map(n => ({target: n.target,"
        " summary: n.failureSummary, html: n.html}))})); }")
    return list(result)


def serious(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in violations if v.get("impact") in FAILING_IMPACTS]


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"- [{v['impact']}] {v['id']}: {v['help']} ({v['helpUrl']})")
        for node in v["nodes"]:
            target = " ".join(str(t) for t in node["target"])
            lines.append(f"    {target}: {node['html'][:160]}")
            for detail in (node.get("summary") or "").splitlines():
                lines.append(f"      {detail.strip()}")
    return "\n".join(lines)


def assert_accessible(page: Page, what: str) -> None:
    """Fail with every serious or critical axe violation on ``page``."""
    found = serious(audit(page))
    assert not found, (
        f"axe-core {AXE_VERSION}: {len(found)} serious or critical violation(s) on {what} "
        f"({page.url}):\n{describe(found)}")
