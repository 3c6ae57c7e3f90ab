"""Deterministic regressions for what the fuzzers found, so they fail every run until
fixed (the fuzzers only find them when the random draw happens to hit them).

Found by Schemathesis: a NUL byte in a query string parameter reaches PostgreSQL, which
refuses it ("invalid byte sequence for encoding UTF8: 0x00") and the service answers
500 instead of 400. Checked for every string query parameter of every operation.
"""

from __future__ import annotations

import httpx

from tests.executor.helpers import Pipeline
from tests.security.conftest import ADMIN, service_url


async def test_nul_in_any_query_parameter_is_4xx_not_5xx(stack: Pipeline) -> None:
    problems = []
    tried = 0
    async with httpx.AsyncClient(timeout=15, headers=ADMIN) as c:
        for name in ("policy", "ingest", "notifier"):
            base = service_url(stack, name)
            schema = (await c.get(base + "/openapi.json")).json()
            for path, item in schema["paths"].items():
                if "{" in path:
                    continue
                for method, op in item.items():
                    if method != "get":
                        continue
                    for p in op.get("parameters", []):
                        if p["in"] != "query":
                            continue
                        tried += 1
                        r = await c.get(base + path, params={p["name"]: "a\x00b@example.org"})
                        if r.status_code >= 500:
                            problems.append(f"{name}: GET {path}?{p['name']}=a%00b... -> "
                                            f"{r.status_code} {r.text[:120]}")
    assert tried >= 5
    assert not problems, "\n".join(problems)
