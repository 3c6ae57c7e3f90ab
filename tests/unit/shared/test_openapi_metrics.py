"""shared/openapi.py (what the schema says about tokens and errors, derived from each
operation's shape) and shared/metrics.py / ingest's scrape-time gauge, without servers."""

from __future__ import annotations

import asyncio
from typing import Any

from services.ingest.metrics import WAITING_STATES, OldestJobAge, oldest_ages
from services.ingest.repo import Waiting
from shared.errors import DatabaseUnavailable
from shared.metrics import BuildInfo, Exposition
from shared.openapi import ERROR_SCHEMA_REF, document_security_and_errors

ERROR = {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}}
FASTAPI_422 = {"description": "Validation Error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}


def _schema() -> dict[str, Any]:
    return {
        "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {
            "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"responses": {"503": {"description": "down", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}}}},
            "/v1/things": {"get": {"responses": {"200": {"description": "ok"}}}},
            "/v1/things/{name}": {"put": {
                "parameters": [{"name": "name", "in": "path", "required": True}],
                "requestBody": {"content": {"application/json": {"schema": {}}}},
                "responses": {"200": {"description": "ok"}, "422": FASTAPI_422}}},
        },
        "components": {"schemas": {"HTTPValidationError": {"properties": {"detail": {
            "items": {"$ref": "#/components/schemas/ValidationError"}}}},
            "ValidationError": {}, "Readiness": {}}},
    }


def test_codes_follow_the_operations_shape() -> None:
    schema = document_security_and_errors(
        _schema(), public_paths={"/healthz", "/readyz"},
        extra_responses={"put /v1/things/{name}": {415: "not JSON"}})
    paths = schema["paths"]
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "security" not in paths["/healthz"]["get"] and "security" not in paths["/readyz"]["get"]
    assert set(paths["/healthz"]["get"]["responses"]) == {"200"}
    listing = paths["/v1/things"]["get"]
    assert listing["security"] == [{"bearerAuth": []}]
    assert set(listing["responses"]) == {"200", "401", "403", "429", "503"}
    put = paths["/v1/things/{name}"]["put"]
    assert set(put["responses"]) == {"200", "400", "401", "403", "404", "413", "415", "422",
                                     "429", "503"}
    assert put["responses"]["415"]["description"] == "not JSON"
    for code, response in put["responses"].items():
        if code != "200":
            assert response["content"] == ERROR, code
    # an error that documents its own body keeps it; FastAPI's validation schemas go
    assert "Readiness" in str(paths["/readyz"]["get"]["responses"]["503"])
    assert {"HTTPValidationError", "ValidationError"}.isdisjoint(schema["components"]["schemas"])
    assert {"ErrorBody", "ErrorDetail"} <= set(schema["components"]["schemas"])


def test_build_info_names_version_python_and_service() -> None:
    (family,) = BuildInfo("policy").collect()
    (sample,) = family.samples
    assert sample.name == "mailexec_build_info" and sample.value == 1
    assert sample.labels["service"] == "policy" and sample.labels["python"].count(".") == 2


def test_oldest_age_per_waiting_state_zero_when_none_waits() -> None:
    ages = oldest_ages({"deferred": Waiting(3, 120.5), "queued": Waiting(1, None)})
    assert ages == {**dict.fromkeys(WAITING_STATES, 0.0), "deferred": 120.5}


def test_oldest_age_is_read_at_most_once_per_cache_period_and_absent_in_an_outage() -> None:
    calls = 0
    outage = False

    async def read() -> dict[str, Waiting]:
        nonlocal calls
        calls += 1
        if outage:
            raise DatabaseUnavailable("down")
        return {"queued": Waiting(2, 30.0)}

    gauge = OldestJobAge(read, cache_s=60)
    exposition = Exposition("ingest", extra=[gauge], before_scrape=[gauge.refresh])
    text = asyncio.run(exposition.render()).decode()
    asyncio.run(exposition.render())
    assert calls == 1
    assert 'mailexec_oldest_job_age_seconds{state="queued"} 30.0' in text
    assert 'mailexec_build_info{' in text and 'service="ingest"' in text
    assert "mailexec_messages_accepted_total" in text  # the default registry comes first

    gauge.cache_s, outage = 0, True
    text = asyncio.run(exposition.render()).decode()
    assert calls == 2 and "mailexec_oldest_job_age_seconds{" not in text
