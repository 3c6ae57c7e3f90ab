"""What every API service's ``/openapi.json`` says about tokens and errors, in one place.

``document_security_and_errors`` post-processes the schema FastAPI generates (``create_app``
in ``shared.httpapp`` calls it once, when ``/openapi.json`` is first asked for):

- ``components.securitySchemes.bearerAuth`` (HTTP bearer), and ``security: [{bearerAuth: []}]``
  on every operation outside ``PUBLIC_PATHS``, so ``/docs`` has its Authorize button and
  try-it-out sends the token; the open ops routes declare no security.
- every 4xx/5xx response carries the real error body, :class:`ErrorBody`
  (``{"error": {"code", "message"}}``, the one ``shared.errors`` and ``shared.httpapp``
  produce), instead of FastAPI's ``HTTPValidationError``.
- the codes an operation can really answer, derived from its shape rather than written on
  each route: 401/403/429/503 behind a token (``shared.auth``: missing/wrong token, wrong
  role, the bad-token rate limit, the token lookup's database), 400 with parameters or a
  body (the routes' own validation, NUL bytes), 404 with a path parameter, 413 with a body
  (``BodyGuard``'s cap or the upload's own limit), 422 where FastAPI validates. Codes only
  some routes answer (415, 411, 409) come from the service as ``extra_responses``.

A response that already documents its own content (``/readyz``'s 503) keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SECURITY_SCHEME = "bearerAuth"
ERROR_SCHEMA_REF = "#/components/schemas/ErrorBody"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})

# "METHOD /path" → {status: description}, for the codes only some operations answer.
ExtraResponses = Mapping[str, Mapping[int, str]]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="stable machine-readable code, e.g. `not_found`, `unauthorized`")
    message: str = Field(description="what went wrong and, where it can be fixed, how")
    details: dict[str, Any] | None = Field(
        default=None, description="more about the error, when there is more (e.g. a limit)")


class ErrorBody(BaseModel):
    """Every error answer of every mailexec API (SPEC §2)."""

    error: ErrorDetail


DESCRIPTIONS: dict[int, str] = {
    400: "bad request: a parameter or the body can't be used (the message says which)",
    401: "missing or wrong bearer token",
    403: "the token's role (or account) may not do this",
    404: "no such object",
    409: "conflict with the current state",
    411: "length required",
    413: "request body too large",
    415: "unsupported content type",
    422: "a parameter or the body does not match the schema",
    429: "too many failed token attempts from this client; retry later",
    500: "internal error; see the service log",
    503: "a dependency (database, broker, policy) is down; retry later (Retry-After)",
}

TOKEN_CODES = (401, 403, 429, 503)


def _codes_for(path: str, method: str, op: dict[str, Any], secured: bool,
               extra: Mapping[int, str]) -> dict[int, str | None]:
    """Status → description (None: the generic one) this operation answers with an error."""
    codes: dict[int, str | None] = {}
    params = op.get("parameters", [])
    has_body = "requestBody" in op
    if secured:
        codes.update(dict.fromkeys(TOKEN_CODES))
    if params or has_body:
        codes[400] = None
    if any(p.get("in") == "path" for p in params):
        codes[404] = None
    if has_body:
        codes[413] = None
    codes.update(extra)
    return codes


def _operation_key(key: str) -> str:
    method, _, path = key.partition(" ")
    return f"{method.upper()} {path.strip()}"


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}}


def document_security_and_errors(schema: dict[str, Any], *, public_paths: Iterable[str],
                                  extra_responses: ExtraResponses | None = None) -> dict[str, Any]:
    """Rewrite ``schema`` (an ``app.openapi()`` result) in place and return it."""
    public = frozenset(public_paths)
    extra = {_operation_key(key): value for key, value in (extra_responses or {}).items()}
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "a mailexec token (admin, mta, service or user): "
                       "`Authorization: Bearer <token>`",
    }
    schemas = components.setdefault("schemas", {})
    body_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(body_schema.pop("$defs", {}))
    schemas["ErrorBody"] = body_schema
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            secured = path not in public
            if secured:
                op["security"] = [{SECURITY_SCHEME: []}]
            else:
                op.pop("security", None)
            responses: dict[str, Any] = op.setdefault("responses", {})
            wanted = _codes_for(path, method, op, secured,
                                extra.get(_operation_key(f"{method} {path}"), {}))
            for status, description in wanted.items():
                entry = responses.setdefault(str(status), {})
                if description is not None:
                    entry["description"] = description
            for code, entry in responses.items():
                if not code.startswith(("4", "5")):
                    continue
                entry.setdefault("description", DESCRIPTIONS.get(int(code), "error"))
                content = entry.get("content") or {}
                refs_fastapi = "HTTPValidationError" in str(content)
                if not content or refs_fastapi:
                    entry["content"] = _error_content()
                if refs_fastapi and entry["description"] == "Validation Error":
                    entry["description"] = DESCRIPTIONS[422]
            op["responses"] = dict(sorted(responses.items()))
    _drop_unreferenced(schema, ("HTTPValidationError", "ValidationError"))
    return schema


def _drop_unreferenced(schema: dict[str, Any], names: Iterable[str]) -> None:
    schemas = schema.get("components", {}).get("schemas", {})
    for name in names:
        if name not in schemas:
            continue
        others = {k: v for k, v in schemas.items() if k != name}
        text = str(schema.get("paths", {})) + str(others)
        if f"#/components/schemas/{name}'" not in text:
            del schemas[name]
