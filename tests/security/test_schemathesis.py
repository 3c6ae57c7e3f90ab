"""Schemathesis against every service's OpenAPI schema, with and without valid tokens.

For each service that serves ``/openapi.json`` (policy, ingest, notifier; the executor's
metrics port too if it ever grows one), every operation is fuzzed by Schemathesis as
each identity: no token, a wrong token, and every role's valid token (admin, mta,
service, a user). Two checks must hold for every generated case: no 5xx, and any
response whose status the schema documents conforms to the documented schema.

Failures are collected across all operations and reported together, with a curl line
to reproduce each. ``SECURITY_FUZZ_EXAMPLES`` (default 15) bounds the examples per
operation and identity so the file stays well under 90 s; the number of cases run is
printed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.executor.helpers import Pipeline
from tests.security.conftest import ADMIN, MTA, SERVICE, issue_user_token, service_url

EXAMPLES = int(os.environ.get("SECURITY_FUZZ_EXAMPLES", "15"))

# ingest's submission documents its body (the raw message, message/rfc822): sent as bytes.
schemathesis.serializer.alias("message/rfc822", "application/octet-stream")
CHECKS = [not_a_server_error, response_schema_conformance]


def _identities(user_token: str) -> list[tuple[str, dict[str, str], int]]:
    """(label, headers, max_examples). The wrong token gets one example per operation:
    more would trip the bad-token rate limit (30/min per client) and turn the rest of
    the run into 429s (that limit has its own test)."""
    return [
        ("admin", ADMIN, EXAMPLES),
        ("mta", MTA, max(2, EXAMPLES // 2)),
        ("service", SERVICE, max(2, EXAMPLES // 2)),
        ("user", {"Authorization": f"Bearer {user_token}"}, max(2, EXAMPLES // 2)),
        ("anonymous", {}, max(2, EXAMPLES // 4)),
        ("wrong-token", {"Authorization": "Bearer mxu_" + "x" * 43}, 1),
    ]


def fuzz_operation(op: Any, base_url: str, headers: dict[str, str], n: int,
                   failures: list[str], label: str) -> int:
    count = 0

    @settings(max_examples=n, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def run(case: Any) -> None:
        nonlocal count
        count += 1
        response = case.call(base_url=base_url, headers=headers, timeout=15)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except Exception as exc:  # noqa: BLE001 - collected, reported at the end
            failures.append(
                f"[{label}] {op.method.upper()} {op.path} -> {response.status_code}: "
                f"{str(exc).strip()[:600]}\n    {case.as_curl_command(headers=headers)}"
            )

    run()
    return count


@pytest.mark.timeout(240)
async def test_every_schema_every_identity_no_5xx_no_schema_violation(stack: Pipeline) -> None:
    user_token = await issue_user_token(stack.policy_url, "fuzz-user@example.org")
    failures: list[str] = []
    total = 0
    per_service: dict[str, int] = {}
    started = time.monotonic()
    for name in ("policy", "ingest", "notifier"):
        base = service_url(stack, name)
        raw = httpx.get(base + "/openapi.json", timeout=10)  # noqa: ASYNC210
        assert raw.status_code == 200, f"{name} serves no OpenAPI schema"
        schema = schemathesis.openapi.from_dict(raw.json())
        ops = [r.ok() for r in schema.get_all_operations()]
        assert ops, f"{name}: no operations in its schema"
        n_service = 0
        for label, headers, n in _identities(user_token):
            for op in ops:
                n_service += await _in_thread(fuzz_operation, op, base, headers, n, failures,
                                              f"{name}/{label}")
        per_service[name] = n_service
        total += n_service
        # Fuzzed submissions queue jobs; keep the vhost small for later modules.
    elapsed = time.monotonic() - started
    print(f"\nschemathesis: {total} cases in {elapsed:.1f}s; per service: {per_service}")
    assert not failures, f"{len(failures)} failing case(s):\n" + "\n".join(failures[:30])


async def _in_thread(fn: Any, *args: Any) -> int:
    """Schemathesis calls are blocking (requests); keep the test's event loop free."""
    import asyncio

    return int(await asyncio.to_thread(fn, *args))
