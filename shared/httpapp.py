"""The HTTP skeleton every service shares: /healthz, /readyz, /metrics, JSON errors.

``create_app`` wires the SPEC error shape ``{"error": {"code", "message"}}`` for our own
errors, FastAPI validation errors (422, with the offending field named), unknown routes
and anything unexpected (500, logged with a traceback, no internals in the body).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import MailexecError, Unavailable

log = logging.getLogger("mailexec.http")

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


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


def create_app(
    *,
    title: str,
    routers: Sequence[APIRouter],
    ready_check: ReadyCheck,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    version: str = "0.1.0",
    inner_middleware: Sequence[tuple[Any, dict[str, Any]]] = (),
) -> FastAPI:
    """``inner_middleware``: (ASGI middleware class, options) run after ``RejectNulBytes``
    and before routing, first listed outermost."""
    app = FastAPI(title=title, version=version, lifespan=lifespan)
    for cls, options in reversed(inner_middleware):
        app.add_middleware(cls, **options)
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
        log.exception("unhandled error", extra={"path": request.url.path})
        return internal_error_response()

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "a dependency is down"}})
    async def readyz() -> Response:
        checks = await ready_check()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app
