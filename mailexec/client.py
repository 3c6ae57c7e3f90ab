"""HTTP client for the mailexec REST APIs, used by the operator CLI (not by ``mailexec submit``).

Where things come from (first match wins):

- base URLs: ``--policy-url``/``--ingest-url`` style overrides, then ``MAILEXEC_POLICY_URL``,
  ``MAILEXEC_INGEST_URL``, ``MAILEXEC_NOTIFIER_URL`` (through :mod:`shared.settings`), then the
  config file, then the defaults (127.0.0.1:8026 / 8025 / 8027).
- token: ``--token``, then ``MAILEXEC_ADMIN_TOKEN`` (operator commands) or
  ``MAILEXEC_INGEST_TOKEN`` (``submit``), then the config file's ``token`` / ``ingest_token``.
- config file: ``MAILEXEC_CLI_CONFIG``, else ``~/.config/mailexec/cli.toml``, else
  ``/etc/mailexec/cli.toml`` (the place for an MTA's pipe user, whose HOME is usually unset)::

      policy_url = "http://policy.internal:8026"
      ingest_url = "http://ingest.internal:8025"
      token = "..."          # admin or user token for operator commands
      ingest_token = "..."   # the mta token for `mailexec submit`

Errors: every failure becomes an :class:`ApiError` carrying the HTTP status (``None`` when
the service could not be reached), the server's error code/message, a sentence that explains
what the status means for an operator, and a sysexits exit code. Tokens are never printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

# one definition of the default URLs and config-file lookup: the light `mailexec submit`
# (standard library only) owns them, the operator commands import them
from mailexec.submit import DEFAULT_URLS, ConfigError, read_config_file, resolve_token, resolve_url
from shared.sysexits import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_PROTOCOL,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
)

SERVICES = ("policy", "ingest", "notifier")


class ApiError(Exception):
    """A request that did not succeed, explained for a human and mapped to an exit code."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        explanation: str = "",
        exit_code: int = EX_SOFTWARE,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.explanation = explanation
        self.exit_code = exit_code
        self.details = details

    def one_line(self) -> str:
        head = f"HTTP {self.status}" if self.status is not None else "no answer"
        text = f"{head}: {self.message}"
        if self.explanation:
            text += f" ({self.explanation})"
        return " ".join(text.split())


def load_config_file() -> dict[str, Any]:
    """The first readable config file, parsed; ``{}`` when there is none."""
    try:
        return read_config_file()
    except ConfigError as exc:
        raise ApiError(str(exc), exit_code=EX_CONFIG) from None


@dataclass
class ClientConfig:
    urls: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_URLS))
    token: str = ""
    timeout: float = 30.0

    @classmethod
    def load(
        cls,
        *,
        token: str | None = None,
        token_env: str = "MAILEXEC_ADMIN_TOKEN",
        token_key: str = "token",
        urls: dict[str, str | None] | None = None,
        timeout: float = 30.0,
    ) -> ClientConfig:
        file_cfg = load_config_file()
        resolved = {svc: resolve_url(svc, (urls or {}).get(svc), file_cfg) for svc in SERVICES}
        try:
            tok = resolve_token(token, token_env, token_key, file_cfg)
        except ConfigError as exc:  # MAILEXEC_*_TOKEN and its _FILE form
            raise ApiError(str(exc), exit_code=EX_CONFIG) from None
        return cls(urls=resolved, token=tok, timeout=timeout)


def explain(status: int, service: str, body: dict[str, Any] | None) -> tuple[str, int]:
    """What an HTTP status means for the operator, and the sysexits code for it."""
    code = ((body or {}).get("error") or {}).get("code", "") if isinstance(body, dict) else ""
    if status == 401:
        return (
            "the token was refused: set MAILEXEC_ADMIN_TOKEN or --token "
            "(or `token` in ~/.config/mailexec/cli.toml)",
            EX_NOPERM,
        )
    if status == 403:
        return ("the token is valid but its role may not do this (admin token needed?)", EX_NOPERM)
    if status == 404:
        return ("no such object", EX_NOINPUT)
    if status == 409:
        return ("conflicts with the current state", EX_DATAERR)
    if status in (400, 411, 413, 415, 422):
        return ("the request was refused as invalid; see the message", EX_DATAERR)
    if status == 429:
        return ("too many requests or bad tokens from this address; wait a minute", EX_TEMPFAIL)
    if status == 503:
        what = "its database or broker" if code != "policy_unavailable" else "policy"
        return (f"{service} is up but {what} is down; retry later", EX_UNAVAILABLE)
    if status >= 500:
        return (f"{service} failed internally; its log has the details", EX_SOFTWARE)
    return (f"unexpected answer from {service}", EX_PROTOCOL)


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


class Client:
    """Synchronous client for policy, ingest and notifier; raises :class:`ApiError`."""

    def __init__(self, config: ClientConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        headers = {"User-Agent": "mailexec-cli"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self._http = httpx.Client(headers=headers, timeout=config.timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, service: str, path: str) -> str:
        return self.config.urls[service] + path

    def request(
        self,
        method: str,
        service: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | Iterable[bytes] | None = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
        ok: Iterable[int] = (200, 201, 202, 204),
    ) -> httpx.Response:
        url = self.url(service, path)
        try:
            resp = self._http.request(method, url, json=json, content=content, params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise ApiError(
                f"{service} at {self.config.urls[service]} did not answer in time ({type(exc).__name__})",
                explanation="retry later",
                exit_code=EX_TEMPFAIL,
            ) from None
        except httpx.TransportError as exc:
            raise ApiError(
                f"cannot reach {service} at {self.config.urls[service]}: {exc or type(exc).__name__}",
                explanation=f"is `mailexec serve {service}` running? check MAILEXEC_{service.upper()}_URL",
                exit_code=EX_UNAVAILABLE,
            ) from None
        if resp.status_code in set(ok):
            return resp
        body = _body(resp)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("code") or resp.reason_phrase)
            code = err.get("code")
            details = err.get("details")
        elif isinstance(body, dict) and "detail" in body:
            message, code, details = str(body["detail"]), None, None
        else:
            message = (resp.text or resp.reason_phrase).strip()[:300]
            code, details = None, None
        explanation, exit_code = explain(resp.status_code, service, body)
        raise ApiError(
            message,
            status=resp.status_code,
            code=code,
            explanation=explanation,
            exit_code=exit_code,
            details=details,
        )

    def get(self, service: str, path: str, **kw: Any) -> Any:
        return _body(self.request("GET", service, path, **kw))

    def put(self, service: str, path: str, **kw: Any) -> Any:
        return _body(self.request("PUT", service, path, **kw))

    def patch(self, service: str, path: str, **kw: Any) -> Any:
        return _body(self.request("PATCH", service, path, **kw))

    def post(self, service: str, path: str, **kw: Any) -> Any:
        return _body(self.request("POST", service, path, **kw))

    def delete(self, service: str, path: str, **kw: Any) -> Any:
        return _body(self.request("DELETE", service, path, **kw))

    def paginate(
        self, service: str, path: str, *, limit: int = 100, params: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Follow ``cursor`` pages until the server stops returning one (``params``: filters)."""
        filters = {k: v for k, v in (params or {}).items() if v is not None}
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            query: dict[str, Any] = {**filters, "limit": limit}
            if cursor:
                query["cursor"] = cursor
            page = self.get(service, path, params=query)
            if isinstance(page, list):
                yield from page
                return
            items: list[dict[str, Any]] = next(
                (page[k] for k in ("items", "accounts", "data", "results") if k in page), []
            )
            yield from items
            cursor = next((page[k] for k in ("next_cursor", "cursor", "next") if page.get(k)), None)
            if not cursor or cursor in seen or not items:
                return
            seen.add(cursor)
