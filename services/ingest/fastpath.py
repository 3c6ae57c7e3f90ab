"""``POST /v1/messages``: submit a message (MTA), without FastAPI's per-request machinery.

Why: submission is the one endpoint an MTA calls for every message, and the profile of
ingest alone put ~40 % of its CPU in FastAPI/Starlette layers (dependency solving,
exception middlewares, parameter models) around a handler that needs none of them.
:class:`SubmitFastPath`, an ASGI middleware, answers exactly ``POST /v1/messages``
itself, with the same authentication and role check (``shared.auth``) and the same
error bodies (``shared.httpapp``) as every FastAPI route; every other method and path
goes on to FastAPI (``routes/messages.py`` reads the status back). It sits inside
``RejectNulBytes``, so NUL bytes in the query string are refused first, as on every
other route. No FastAPI route is declared for it: :data:`SUBMIT_OPERATION` is its
OpenAPI operation, which :func:`add_submit_operation` adds to the app's schema.

The handler checks everything that costs nothing first — auth, content type, envelope,
declared length — and only then reads the body, in chunks, aborting at the size limit:
a huge or endless chunked body never sits in memory.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shared.auth import authenticate, check_role
from shared.bodybudget import Hold
from shared.errors import (
    BadRequest,
    LengthRequired,
    MailexecError,
    PayloadTooLarge,
    UnsupportedMedia,
)
from shared.httpapp import internal_error_response, mailexec_error_response

from . import metrics
from .envelope import SUBMIT_ROLES, parse_envelope
from .runtime import Runtime

log = logging.getLogger("mailexec.http")

PATH = "/v1/messages"
MAX_IDEMPOTENCY_KEY = 255


class SubmitFastPath:
    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            check_role(await authenticate(request), SUBMIT_ROLES)
            response = await accept(request, self.runtime)
        except MailexecError as exc:
            response = mailexec_error_response(exc)
        except Exception:
            log.exception("unhandled error", extra={"path": PATH})
            response = internal_error_response()
        await response(scope, receive, send)


async def accept(request: Request, runtime: Runtime) -> Response:
    """The whole of ``POST /v1/messages`` after authentication: check, read, store, queue.

    Repeated query parameters read the way FastAPI reads them: the last ``from`` (and
    ``envid``, ``ret``, ``notify``) wins, every ``to`` counts.
    """
    query = request.query_params
    limit = runtime.settings.max_message_bytes
    with _counted_rejection():
        _check_content_type(request)
        envelope = parse_envelope(query.get("from"), query.getlist("to"), envid=query.get("envid"),
                                  ret=query.get("ret"), notify=query.get("notify"))
        key = _idempotency_key(request.headers.get("idempotency-key"))
        declared = declared_length(request, limit)
    # the body is read only once the budget has room for it; until then the request
    # waits unread, and TCP holds the client back (shared/bodybudget.py)
    hold = await runtime.body_budget.hold(declared)
    try:
        with _counted_rejection():
            body = await read_body(request, limit, hold)
        accepted = await runtime.outbox.submit(envelope, body, key)
    finally:
        hold.release()
    out: dict[str, Any] = {
        "id": str(accepted.message_id),
        "recipients": [{"address": a, "status": "queued"} for a in accepted.recipients],
    }
    if accepted.duplicate:
        out["duplicate"] = True
    return Response(orjson.dumps(out), status_code=202, media_type="application/json")


# a refusal's reason in mailexec_messages_rejected_total, the first class that matches
_REJECTIONS: tuple[tuple[type[MailexecError], str], ...] = (
    (UnsupportedMedia, "unsupported_media"), (LengthRequired, "length_required"),
    (PayloadTooLarge, "too_large"), (BadRequest, "bad_request"),
)


@contextlib.contextmanager
def _counted_rejection() -> Iterator[None]:
    """A request refused inside the block counts in the rejections metric by its reason."""
    try:
        yield
    except MailexecError as exc:
        reason = next((r for cls, r in _REJECTIONS if isinstance(exc, cls)), None)
        if reason is not None:
            metrics.MESSAGES_REJECTED.labels(reason=reason).inc()
        raise


def _check_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "message/rfc822":
        raise UnsupportedMedia(
            f"Content-Type must be message/rfc822 (the raw RFC 5322 message), not "
            f"{ctype or 'missing'}",
            code="unsupported_media_type",
        )


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"5.2.3 message exceeds the size limit of {limit} bytes (MAILEXEC_MAX_MESSAGE_BYTES)",
        code="message_too_large",
        status="5.2.3",
        limit=limit,
    )


def declared_length(request: Request, limit: int) -> int | None:
    """The body's declared length (None: chunked); 411 without either, 413 over ``limit``."""
    declared = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if declared is None and not chunked:
        raise LengthRequired(
            "send Content-Length or a chunked body", code="length_required"
        )
    if declared is None:
        return None
    if not declared.isdigit():
        raise BadRequest("Content-Length is not a number", code="bad_content_length")
    if int(declared) > limit:
        raise _too_large(limit)
    return int(declared)


async def read_body(request: Request, limit: int, hold: Hold) -> list[bytes]:
    """The body, read as it streams in, in the pieces it arrived in (the one copy ingest
    holds: they are stored as they are, never joined), each byte covered by ``hold``
    before it is kept; 413 at ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if chunk:
            hold.cover(size)
            chunks.append(chunk)
    if size == 0:
        raise BadRequest("empty message body", code="empty_message")
    return chunks


def _idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise BadRequest(
            f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            code="bad_idempotency_key",
        )
    return key


# --- OpenAPI ------------------------------------------------------------------------------


def _optional(name: str, where: str, *, title: str, description: str | None = None,
              items: bool = False) -> dict[str, Any]:
    """An optional string (or list of strings) parameter, as FastAPI writes one."""
    value: dict[str, Any] = {"type": "array", "items": {"type": "string"}} if items else {
        "type": "string"
    }
    schema: dict[str, Any] = {"anyOf": [value, {"type": "null"}]}
    if description is not None:
        schema["description"] = description
    schema["title"] = title
    param: dict[str, Any] = {"name": name, "in": where, "required": False, "schema": schema}
    if description is not None:
        param["description"] = description
    return param


SUBMIT_OPERATION: dict[str, Any] = {
    "tags": ["messages"],
    "summary": "Submit a message (SMTP envelope in the query, raw message in the body)",
    "operationId": "submit_message_v1_messages_post",
    "parameters": [
        _optional("from", "query", title="From", description="'' = null sender <>"),
        _optional("to", "query", title="To", description="one per recipient, ≤ 1000", items=True),
        _optional("envid", "query", title="Envid", description="RFC 3461 ENVID (xtext)"),
        _optional("ret", "query", title="Ret", description="FULL or HDRS"),
        _optional("notify", "query", title="Notify", description="NEVER or SUCCESS,FAILURE,DELAY"),
        _optional("Idempotency-Key", "header", title="Idempotency-Key"),
    ],
    "requestBody": {
        "required": True,
        "description": "the raw RFC 5322 message, at most MAILEXEC_MAX_MESSAGE_BYTES",
        "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    },
    # Descriptions only: shared.openapi adds the error body, the bearer scheme and the
    # token's own codes (401, 403, 429), as for every route FastAPI declares.
    "responses": {
        "202": {
            "description": "stored, and one job per recipient confirmed by the broker",
            "content": {"application/json": {"schema": {}}},
        },
        "400": {"description": "bad address or envelope"},
        "409": {"description": "Idempotency-Key already used for a different envelope or body"},
        "411": {"description": "no Content-Length and not chunked"},
        "413": {"description": "larger than MAILEXEC_MAX_MESSAGE_BYTES (5.2.3)"},
        "415": {"description": "Content-Type is not message/rfc822"},
        "503": {"description": "database or broker down; nothing accepted, retry"},
    },
}


def add_submit_operation(schema: dict[str, Any]) -> None:
    """Put :data:`SUBMIT_OPERATION` into ``schema`` (the app's ``openapi_hooks``), listed
    where FastAPI puts a route declared first: before the other operations under
    :data:`PATH`."""
    paths: dict[str, Any] = schema.get("paths", {})
    item = {"post": copy.deepcopy(SUBMIT_OPERATION), **paths.pop(PATH, {})}
    ordered: dict[str, Any] = {}
    for path, other in paths.items():
        if path.startswith(PATH + "/") and PATH not in ordered:
            ordered[PATH] = item
        ordered[path] = other
    ordered.setdefault(PATH, item)
    schema["paths"] = ordered
