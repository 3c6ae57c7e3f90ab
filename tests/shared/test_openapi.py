"""Every API service's /openapi.json (shared/openapi.py): a valid OpenAPI 3.1 document
(openapi-spec-validator), the bearer scheme declared, ``security`` on exactly the
operations that answer 401 without a token (found by calling each one, not from a list),
and the real error body on every 4xx/5xx response. The console (cookies) is exempt.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate

from shared.auth import reset_rate_limit
from shared.httpapp import create_app
from shared.openapi import ERROR_SCHEMA_REF, SECURITY_SCHEME

BEARER = {"type": "http", "scheme": "bearer"}
# /readyz's 503 is its readiness document (what is down), not an error body: SPEC §2.
OWN_ERROR_BODIES = {("get", "/readyz", "503")}


def _ingest() -> FastAPI:
    from services.ingest.app import build_app

    return build_app()


def _policy() -> FastAPI:
    from services.policy.app import create_policy_app

    return create_policy_app()


def _notifier() -> FastAPI:
    from services.notifier.app import create_app as create_notifier_app

    return create_notifier_app(run_background=False)


def _executor() -> FastAPI:
    """As services/executor/main.py builds its metrics app."""
    async def ready() -> dict[str, bool]:
        return {"broker": False}

    return create_app(title="mailexec executor", routers=[], ready_check=ready)


SERVICES: dict[str, Callable[[], FastAPI]] = {
    "ingest": _ingest, "policy": _policy, "notifier": _notifier, "executor": _executor,
}


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in {"get", "put", "post", "delete", "patch"}:
                yield method, path, op


def _concrete(path: str) -> str:
    """A path template with plausible values (the route must get as far as its auth)."""
    return re.sub(r"\{([^}:]+)(:[^}]*)?\}",
                  lambda m: "alice@example.org" if "address" in m.group(1)
                  else "00000000-0000-4000-8000-000000000000", path)


async def _status_without_token(app: FastAPI, method: str, path: str, op: dict[str, Any]) -> int:
    content = list(op.get("requestBody", {}).get("content", {"application/json": {}}))[0]
    body = b"{}" if "requestBody" in op else None
    headers = {"content-type": content} if body is not None else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.request(method.upper(), _concrete(path), content=body,
                                        headers=headers)
    return response.status_code


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_schema_is_valid_openapi_31_with_security_and_error_bodies(service: str) -> None:
    reset_rate_limit()
    app = SERVICES[service]()
    schema = app.openapi()
    assert schema["openapi"].startswith("3.1")
    validate(schema)  # raises with the offending part named
    assert schema["components"]["securitySchemes"][SECURITY_SCHEME] | BEARER == \
        schema["components"]["securitySchemes"][SECURITY_SCHEME]
    assert "HTTPValidationError" not in str(schema)

    secured = 0
    for method, path, op in operations(schema):
        status = await _status_without_token(app, method, path, op)
        declared = op.get("security")
        where = f"{service}: {method.upper()} {path} answered {status} without a token"
        if status == 401:
            secured += 1
            assert declared == [{SECURITY_SCHEME: []}], where + " but declares no bearerAuth"
            assert "401" in op["responses"], where + " but does not document 401"
        else:
            assert not declared, where + f" yet declares security {declared}"
        for code, response in op["responses"].items():
            if code[0] not in "45" or (method, path, code) in OWN_ERROR_BODIES:
                continue
            schema_of = response.get("content", {}).get("application/json", {}).get("schema")
            assert schema_of == {"$ref": ERROR_SCHEMA_REF}, \
                f"{service}: {method.upper()} {path} {code} is not documented as the error body"
    if service != "executor":  # the executor's port serves only the open ops routes
        assert secured >= 2


def test_the_error_body_is_the_one_the_services_send() -> None:
    from shared.errors import NotFound
    from shared.openapi import ErrorBody

    assert ErrorBody.model_validate(NotFound("no message x", code="message_not_found").to_body())
    schema = _executor().openapi()["components"]["schemas"]
    assert schema["ErrorBody"]["required"] == ["error"]
    assert set(schema["ErrorDetail"]["required"]) == {"code", "message"}


def test_ingest_submission_documents_its_body_and_codes() -> None:
    op = _ingest().openapi()["paths"]["/v1/messages"]["post"]
    assert "message/rfc822" in op["requestBody"]["content"]
    assert {"400", "401", "403", "409", "411", "413", "415", "429", "503"} <= set(op["responses"])
    assert "422" not in op["responses"]  # the fast path answers 400 for a bad envelope
