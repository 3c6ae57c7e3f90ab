"""The HTTP skeleton every service shares: /healthz, /readyz, /metrics, JSON errors,
and the gate every request body passes.

``create_app`` wires the SPEC error shape ``{"error": {"code", "message"}}`` for our own
errors, FastAPI validation errors (422, with the offending field named), unknown routes
and anything unexpected (500, logged with a traceback, no internals in the body).

Trust: request bytes come from anyone who can reach the port. What this module defends
against, before any route or FastAPI's body parsing runs (``BodyGuard``):
- an unauthenticated client making the process read and hold a huge body: a request
  with a body is answered 401/429 from its headers alone, before one body byte is read
  (tests/security/test_body_limits.py::test_unauthenticated_huge_body_*);
- an authenticated client sending a huge JSON body: every body but the declared raw
  uploads is capped at ``JSON_BODY_LIMIT`` bytes, by Content-Length or while a chunked
  body streams in, with 413 in the SPEC error shape
  (tests/security/test_body_limits.py::test_json_bodies_are_capped*);
- NUL bytes in the query string (``RejectNulBytes``, tests/security/test_regressions.py).
The raw uploads (ingest's message submission, policy's program bytes) are declared by
the service (``raw_bodies``); they still pass the token check first and enforce their
own limits while streaming.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth import authenticate
from shared.errors import MailexecError, PayloadTooLarge, Unavailable
from shared.metrics import Exposition
from shared.openapi import ExtraResponses, document_security_and_errors

log = logging.getLogger("mailexec.http")

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
OpenAPIHook = Callable[[dict[str, Any]], None]


class Readiness(BaseModel):
    """``/readyz``'s body, 200 and 503 alike (not an error body: it says what is down)."""

    status: str
    checks: dict[str, bool]


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(extra)
    return JSONResponse({"error": body}, status_code=status)


def mailexec_error_response(exc: MailexecError) -> JSONResponse:
    """The SPEC error shape for one of our errors, with Retry-After / WWW-Authenticate."""
    resp = JSONResponse(exc.to_body(), status_code=exc.status_code)
    if isinstance(exc, Unavailable):
        resp.headers["Retry-After"] = str(exc.retry_after)
    if exc.status_code == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


# Path segments that are secrets (a console session id) and never reach a log line.
_SECRET_SEGMENTS = re.compile(r"^(/v1/sessions/)[^/]+")


def loggable_path(path: str) -> str:
    return _SECRET_SEGMENTS.sub(r"\1…", path)


def internal_error_response() -> JSONResponse:
    return error_response(500, "internal_error", "internal error; see the service log")


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


class RejectNulBytes:
    """400 for a NUL byte in the query string, before any route runs.

    No query parameter of ours may hold one, and PostgreSQL refuses them in text (it
    would be a 500). Path parameters are validated by their routes, which say more
    precisely what is wrong (e.g. ``invalid_address``).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"")
            if b"\x00" in query or b"%00" in query.lower():
                response = error_response(
                    400, "bad_nul_byte", "NUL bytes are not allowed in the query string"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


JSON_BODY_LIMIT = 64 * 1024
# Paths anyone may call (no token): the ops endpoints and the API description.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs",
                          "/docs/oauth2-redirect", "/redoc"})
RawBody = tuple[str, str]  # (method, path regex): an upload route with its own size limit


def body_too_large(limit: int = JSON_BODY_LIMIT) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body too large: JSON bodies are limited to {limit} bytes "
        f"({limit // 1024} KiB)",
        code="body_too_large",
        limit=limit,
    )


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() not in (b"0", b""):
            return True
    return False


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


class BodyGuard:
    """Auth before body, and the one cap on JSON bodies (module docstring).

    For a request that carries a body, outside ``PUBLIC_PATHS``: the bearer token is
    checked from the headers (``shared.auth.authenticate``, which leaves the principal
    in the scope for the route's own role check); a failure is answered at once, the
    body unread. Then, unless the route is one of ``raw_bodies``, the body is read here
    up to ``limit`` bytes (413 beyond) and replayed to the app, so nothing downstream
    can buffer more. Requests without a body pass untouched: their routes authenticate
    as before, with nothing to read first.
    """

    def __init__(self, app: Any, raw_bodies: Sequence[RawBody] = (),
                 limit: int = JSON_BODY_LIMIT) -> None:
        self.app = app
        self.limit = limit
        self.raw = [(method.upper(), re.compile(pattern)) for method, pattern in raw_bodies]

    def _is_raw(self, method: str, path: str) -> bool:
        return any(m == method and rx.fullmatch(path) for m, rx in self.raw)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _has_body(scope.get("headers", [])):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        try:
            if path not in PUBLIC_PATHS:
                await authenticate(Request(scope))
            if self._is_raw(scope["method"], path):
                await self.app(scope, receive, send)
                return
            declared = _content_length(scope.get("headers", []))
            if declared is not None and declared > self.limit:
                raise body_too_large(self.limit)
            replay = await self._read_capped(receive)
        except MailexecError as exc:
            await mailexec_error_response(exc)(scope, receive, send)
            return
        await self.app(scope, replay, send)

    async def _read_capped(self, receive: Any) -> Any:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                pending: dict[str, Any] | None = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise body_too_large(self.limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                pending = None
                break
        first: dict[str, Any] | None = (
            pending if pending is not None
            else {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        )

        async def replay() -> Any:
            nonlocal first
            if first is not None:
                message, first = first, None
                return message
            return await receive()

        return replay


def create_app(
    *,
    title: str,
    routers: Sequence[APIRouter],
    ready_check: ReadyCheck,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    version: str = "0.1.0",
    inner_middleware: Sequence[tuple[Any, dict[str, Any]]] = (),
    raw_bodies: Sequence[RawBody] = (),
    metrics: Exposition | None = None,
    openapi_hooks: Sequence[OpenAPIHook] = (),
    extra_responses: ExtraResponses | None = None,
) -> FastAPI:
    """``inner_middleware``: (ASGI middleware class, options) run after ``RejectNulBytes``
    and ``BodyGuard`` and before routing, first listed outermost. ``raw_bodies``: the
    (method, path regex) of upload routes that stream and limit their own bodies.
    ``metrics``: what ``/metrics`` serves (default: the default registry and
    ``mailexec_build_info``, ``shared.metrics``). ``openapi_hooks`` change the generated
    schema (an operation served outside FastAPI's routing) before ``shared.openapi``
    documents security and errors; ``extra_responses``: codes only some operations answer."""
    app = FastAPI(title=title, version=version, lifespan=lifespan)
    exposition = metrics or Exposition(title.removeprefix("mailexec "))
    for cls, options in reversed(inner_middleware):
        app.add_middleware(cls, **options)
    app.add_middleware(BodyGuard, raw_bodies=raw_bodies)
    app.add_middleware(RejectNulBytes)  # added last = outermost

    @app.exception_handler(MailexecError)
    async def _our_errors(request: Request, exc: MailexecError) -> JSONResponse:
        return mailexec_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": loggable_path(request.url.path)})
        return internal_error_response()

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], response_model=Readiness,
             responses={503: {"description": "a dependency is down", "model": Readiness}})
    async def readyz() -> Response:
        checks = await ready_check()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", tags=["ops"], response_class=Response, name="metrics")
    async def metrics_text() -> Response:
        return Response(await exposition.render(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for hook in openapi_hooks:
                hook(schema)
            app.openapi_schema = document_security_and_errors(
                schema, public_paths=PUBLIC_PATHS, extra_responses=extra_responses)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.metrics = exposition
    return app
