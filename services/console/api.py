"""The console's one way to reach policy, ingest and notifier: their REST APIs, with the
signed-in person's token, through one shared ``httpx.AsyncClient`` (``app.state.http``).

``Api(request, person)`` is what pages use; ``call`` is the same without a person (sign-in,
which has only the token typed into the form). Errors come back as ``ApiError`` (see
errors.py); the token is only ever put in the Authorization header, never in a URL, a log
line or an exception's text.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import httpx
from fastapi import Request

from services.console.errors import ApiError

if TYPE_CHECKING:
    from services.console.web import Person

log = logging.getLogger("mailexec.console.api")

Service = Literal["policy", "ingest", "notifier"]
SERVICES: tuple[Service, ...] = ("policy", "ingest", "notifier")
TIMEOUT = httpx.Timeout(10.0, connect=3.0)
Params = Mapping[str, Any] | list[tuple[str, Any]] | None
# A body sent as it is: bytes, or an async stream of them (a program upload, never held whole).
RequestBody = bytes | AsyncIterable[bytes] | None


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False,
                             limits=httpx.Limits(max_connections=100,
                                                 max_keepalive_connections=20),
                             headers={"User-Agent": "mailexec-console"})


def seg(value: str) -> str:
    """One path segment, quoted (an address from a URL never adds a path of its own)."""
    return quote(value, safe="@")


def unreachable(service: str) -> ApiError:
    return ApiError(503, "unreachable", f"{service} is not answering; try again in a moment",
                    service)


def _error_of(service: str, response: httpx.Response) -> ApiError:
    code, message = "http_error", response.reason_phrase or f"HTTP {response.status_code}"
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
    except ValueError:
        pass
    if response.status_code >= 500:
        log.warning("%s answered %s", service, response.status_code,
                    extra={"service_called": service, "code": code})
        return ApiError(503, code, f"{service} is not answering; try again in a moment",
                        service)
    return ApiError(response.status_code, code, message, service)


async def call(
    request: Request, token: str, method: str, service: Service, path: str, *,
    params: Params = None, json: Any = None, content: RequestBody = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """Parsed JSON of the answer (None for 204), or ApiError."""
    client: httpx.AsyncClient = request.app.state.http
    base: str = request.app.state.service_urls[service]
    sent = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if headers:
        sent.update({k: v for k, v in headers.items() if k.lower() != "authorization"})
    try:
        response = await client.request(method, base.rstrip("/") + path, params=params,
                                        json=json, content=content, headers=sent)
    except httpx.HTTPError as exc:
        log.warning("%s did not answer: %s", service, type(exc).__name__,
                    extra={"service_called": service})
        raise unreachable(service) from None
    if response.status_code >= 400:
        raise _error_of(service, response)
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise ApiError(503, "bad_answer", f"{service} answered something that is not JSON",
                       service) from None


class Api:
    """``await Api(request, person).get("policy", "/v1/status")``."""

    def __init__(self, request: Request, person: Person) -> None:
        self._request = request
        self._token = person._token

    def __repr__(self) -> str:
        return "Api(<token hidden>)"

    async def get(self, service: Service, path: str, params: Params = None) -> Any:
        return await call(self._request, self._token, "GET", service, path, params=params)

    async def post(self, service: Service, path: str, json: Any = None,
                   content: RequestBody = None, headers: Mapping[str, str] | None = None,
                   params: Params = None) -> Any:
        return await call(self._request, self._token, "POST", service, path, json=json,
                          content=content, headers=headers, params=params)

    async def put(self, service: Service, path: str, json: Any = None,
                  content: RequestBody = None, headers: Mapping[str, str] | None = None,
                  params: Params = None) -> Any:
        return await call(self._request, self._token, "PUT", service, path, json=json,
                          content=content, headers=headers, params=params)

    async def patch(self, service: Service, path: str, json: Any = None,
                    content: RequestBody = None, headers: Mapping[str, str] | None = None,
                    params: Params = None) -> Any:
        return await call(self._request, self._token, "PATCH", service, path, json=json,
                          content=content, headers=headers, params=params)

    async def delete(self, service: Service, path: str, json: Any = None,
                     content: RequestBody = None, headers: Mapping[str, str] | None = None,
                     params: Params = None) -> Any:
        return await call(self._request, self._token, "DELETE", service, path, json=json,
                          content=content, headers=headers, params=params)
