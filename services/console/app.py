"""The console's app: pages (signin, user, admin), static files, /healthz, /readyz
(ready when policy answers), /metrics, and HTML error pages for people.

Every request passes ``ConsoleMiddleware`` (below): security headers, the body cap, a POST
without a session cookie sent to sign-in before its body is read, notices sealed into
the flash cookie, the session cookie's Max-Age renewed, and the request counted. Every
route gets the CSRF check (``csrf.csrf_guard``, an app-wide dependency).

Trust: request bytes come from anyone who can reach the port. Before any page runs, this
module defends against
- an anonymous client making the console read a body: a POST whose session cookie does
  not open is redirected to sign-in unread, the sign-in form excepted
  (tests/console/test_session.py::test_cookie_replayed_after_sign_out_is_refused);
- a signed-in client sending a huge form: ``FORM_BODY_LIMIT`` (1 MiB; multipart uploads
  the program size limit plus that) by Content-Length, and while a body streams in
  (tests/console/test_session.py::test_huge_forms_are_refused);
- framing the pages (clickjacking) and inline script: the CSP and X-Frame-Options headers;
- NUL bytes in the query string (shared.httpapp.RejectNulBytes).
Cookie values are opened by session.py, form fields checked by csrf.py and the pages.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.console import metrics
from services.console.api import SERVICES, new_client
from services.console.csrf import SIGNIN_PATH, UNSAFE_METHODS, csrf_guard
from services.console.errors import (
    ApiError,
    ConsoleError,
    NotSignedIn,
    PageError,
    SessionEnded,
)
from services.console.pages import admin, signin, user
from services.console.session import FLASH_COOKIE, SESSION_COOKIE, Boxes
from services.console.web import (
    FLASH_HEADER,
    STATIC_DIR,
    redirect,
    render,
    signin_url,
)
from shared.httpapp import RejectNulBytes
from shared.metrics import Exposition
from shared.settings import Settings, get_settings

log = logging.getLogger("mailexec.console")

FORM_BODY_LIMIT = 1024 * 1024
STATIC_MAX_AGE_S = 365 * 24 * 3600
SECURITY_HEADERS = (
    ("content-security-policy",
     "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
)
SESSION_ENDED = "Your session ended; sign in again"


class CachedStatic(StaticFiles):
    """Vendored and console files, addressed as /static/<file>?v=<digest>: cached for a year."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = f"public, max-age={STATIC_MAX_AGE_S}, immutable"
        return response


def _cookie_header(name: str, value: str, max_age: int, secure: bool) -> bytes:
    parts = [f"{name}={value}", "HttpOnly", f"Max-Age={max_age}", "Path=/", "SameSite=strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")


def _secure(settings: Settings, scope: Scope) -> bool:
    mode = settings.console_cookie_secure
    return mode == "always" or (mode == "auto" and scope.get("scheme") == "https")


class ConsoleMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, *, boxes: Boxes, settings: Settings) -> None:
        self.app = app
        self.boxes = boxes
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        method = scope["method"]
        early = self._refuse_early(scope)
        if early is not None:
            await early(scope, receive, send)
            self._count(scope, method, early.status_code, started)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                self._finish_headers(scope, MutableHeaders(scope=message))
            await send(message)

        try:
            await self.app(scope, self._capped(scope, receive), send_wrapper)
        finally:
            self._count(scope, method, status[0], started)

    def _body_limit(self, scope: Scope) -> int:
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
        if content_type.startswith(b"multipart/form-data"):
            return self.settings.max_program_bytes + FORM_BODY_LIMIT
        return FORM_BODY_LIMIT

    def _refuse_early(self, scope: Scope) -> Response | None:
        """A response given before the body is read, or None."""
        if scope["method"] not in UNSAFE_METHODS:
            return None
        headers = dict(scope.get("headers", []))
        if scope.get("path") != SIGNIN_PATH:
            cookies = _cookies(headers.get(b"cookie", b""))
            if self.boxes.open_session(cookies.get(SESSION_COOKIE)) is None:
                return RedirectResponse(signin_url(), status_code=303)
        length = headers.get(b"content-length", b"")
        if length.strip().isdigit() and int(length) > self._body_limit(scope):
            limit = self._body_limit(scope)
            return error_page(
                Request(scope), 413, "Too large",
                f"This form sent {int(length):,} bytes; the console accepts {limit:,} "
                "(for a program upload: MAILEXEC_MAX_PROGRAM_BYTES, plus the form). "
                "Go back and choose a smaller file.")
        return None

    def _capped(self, scope: Scope, receive: Receive) -> Receive:
        limit = self._body_limit(scope)
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PageError("The form was too large to accept.", status=413)
            return message

        return capped

    def _finish_headers(self, scope: Scope, headers: MutableHeaders) -> None:
        secure = _secure(self.settings, scope)
        pending = headers.get(FLASH_HEADER)
        if pending is not None:
            del headers[FLASH_HEADER]
            try:
                items = json.loads(pending)
            except ValueError:
                items = []
            sealed = self.boxes.flash.seal({"f": items}, ttl_s=300)
            headers.append("set-cookie", _cookie_header(FLASH_COOKIE, sealed, 300,
                                                        secure).decode("latin-1"))
        state = scope.get("state") or {}
        renewed = state.get("session_cookie")
        if renewed and not any(v.startswith(SESSION_COOKIE + "=")
                               for v in headers.getlist("set-cookie")):
            headers.append("set-cookie", _cookie_header(
                SESSION_COOKIE, renewed, self.settings.console_session_idle_s,
                secure).decode("latin-1"))
        for name, value in SECURITY_HEADERS:
            if name not in headers:
                headers[name] = value

    @staticmethod
    def _count(scope: Scope, method: str, status: int, started: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        if template.startswith("/static"):
            template = "/static"
        metrics.REQUESTS.labels(template, method, str(status)).inc()
        metrics.REQUEST_SECONDS.labels(template).observe(time.perf_counter() - started)


def _cookies(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in raw.decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name and name not in out:
            out[name] = value
    return out


def _person_of(request: Request) -> Any:
    return getattr(request.state, "person", None)


def error_page(request: Request, status: int, heading: str, message: str) -> Response:
    return render(request, _person_of(request), "error.html",
                  {"title": heading, "heading": heading, "message": message,
                   "status": status}, status_code=status)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        target = signin_url(request.url.path) if request.method == "GET" else signin_url()
        response = RedirectResponse(target, status_code=303)
        if SESSION_COOKIE in request.cookies:  # tampered, foreign or sealed with an old key
            signin.clear_cookie(request, response, SESSION_COOKIE)
        return response

    @app.exception_handler(SessionEnded)
    async def _session_ended(request: Request, exc: SessionEnded) -> Response:
        return _to_signin(request)

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> Response:
        return error_page(request, exc.status, exc.heading, exc.message)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        if exc.status == 401:
            return _to_signin(request)
        if exc.status == 403:
            return error_page(request, 403, "Not allowed", exc.message)
        if exc.status == 404:
            return error_page(request, 404, "Not found", exc.message)
        if exc.status >= 500:
            return error_page(request, 503, "Service unavailable",
                              f"{exc.service or 'A service'} is not answering; "
                              "try again in a moment")
        return error_page(request, exc.status, "Not accepted", exc.message)

    @app.exception_handler(ConsoleError)
    async def _console_error(request: Request, exc: ConsoleError) -> Response:
        return error_page(request, 500, "Something went wrong", "The console hit an error.")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(sorted({str(err.get("loc", ("", "?"))[-1])
                                   for err in exc.errors()[:5]}))
        return error_page(request, 400, "Something is wrong with this request",
                          f"These values were missing or not accepted: {fields}.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_page(request, 404, "Page not found",
                              "There is no page at this address.")
        if exc.status_code == 405:
            return error_page(request, 405, "Not available",
                              "This page can't be used that way.")
        return error_page(request, exc.status_code, "Something is wrong with this request",
                          "The request could not be handled.")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on a page: %s", type(exc).__name__,
                  extra={"path": request.url.path}, exc_info=exc)
        return error_page(request, 500, "Something went wrong",
                          "The console hit an error; it is in the console's log.")


def _to_signin(request: Request) -> Response:
    response = redirect("/signin", error=SESSION_ENDED)
    signin.clear_cookie(request, response, SESSION_COOKIE)
    request.state.session_cookie = None
    return response


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    boxes = Boxes(settings.console_secret)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.http = new_client()
        try:
            yield
        finally:
            await app.state.http.aclose()

    app = FastAPI(title="mailexec console", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(csrf_guard)])
    app.state.settings = settings
    app.state.boxes = boxes
    app.state.service_urls = {name: getattr(settings, f"{name}_url") for name in SERVICES}
    _install_handlers(app)
    app.add_middleware(ConsoleMiddleware, boxes=boxes, settings=settings)
    app.add_middleware(RejectNulBytes)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        ok = True
        try:
            answer = await request.app.state.http.get(
                settings.policy_url.rstrip("/") + "/healthz", timeout=2.0)
            ok = answer.status_code == 200
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            ok = False
        return JSONResponse({"status": "ready" if ok else "unavailable",
                             "checks": {"policy": ok}}, status_code=200 if ok else 503)

    exposition = Exposition("console")  # the default registry plus mailexec_build_info

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(await exposition.render(), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", CachedStatic(directory=str(STATIC_DIR)), name="static")
    app.include_router(signin.router)
    app.include_router(user.router)
    app.include_router(admin.router)
    return app
