"""``/v1/messages``: submit a message (MTA), read its delivery status (MTA, admin, user).

The POST checks everything that costs nothing first — auth, content type, envelope,
declared length — and only then reads the body, in chunks, aborting at the size limit:
a huge or endless chunked body never sits in memory.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from shared.errors import BadRequest, LengthRequired, NotFound, PayloadTooLarge, UnsupportedMedia

from .. import metrics
from ..deps import AdminDep, ReaderDep, RuntimeDep, SubmitterDep
from ..envelope import parse_envelope
from ..runtime import Runtime

router = APIRouter(prefix="/v1/messages", tags=["messages"])

MAX_IDEMPOTENCY_KEY = 255
STATES = ("queued", "running", "suspended", "deferred", "delivered", "bounced")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


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


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read as it streams in; 411 without a length, 413 at ``limit``."""
    declared = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if declared is None and not chunked:
        raise LengthRequired(
            "send Content-Length or a chunked body", code="length_required"
        )
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number", code="bad_content_length")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if chunk:
            chunks.append(chunk)
    if size == 0:
        raise BadRequest("empty message body", code="empty_message")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


@router.post(
    "",
    status_code=202,
    summary="Submit a message (SMTP envelope in the query, raw message in the body)",
    responses={
        202: {"description": "stored, and one job per recipient confirmed by the broker"},
        400: {"description": "bad address or envelope"},
        409: {"description": "Idempotency-Key already used for a different envelope or body"},
        411: {"description": "no Content-Length and not chunked"},
        413: {"description": "larger than MAILEXEC_MAX_MESSAGE_BYTES (5.2.3)"},
        415: {"description": "Content-Type is not message/rfc822"},
        503: {"description": "database or broker down; nothing accepted, retry"},
    },
)
async def submit_message(
    request: Request,
    principal: SubmitterDep,
    runtime: RuntimeDep,
    sender: Annotated[str | None, Query(alias="from", description="'' = null sender <>")] = None,
    to: Annotated[list[str] | None, Query(description="one per recipient, ≤ 1000")] = None,
    envid: Annotated[str | None, Query(description="RFC 3461 ENVID (xtext)")] = None,
    ret: Annotated[str | None, Query(description="FULL or HDRS")] = None,
    notify: Annotated[str | None, Query(description="NEVER or SUCCESS,FAILURE,DELAY")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    # The parameters above document the endpoint (OpenAPI); in the running service
    # ``services.ingest.fastpath`` answers this route before FastAPI does, with the
    # same function below, so both paths read the request the same way.
    return await accept(request, runtime)


async def accept(request: Request, runtime: Runtime) -> Response:
    """The whole of ``POST /v1/messages`` after authentication: check, read, store, queue."""
    query = request.query_params
    limit = runtime.settings.max_message_bytes
    try:
        _check_content_type(request)
        envelope = parse_envelope(query.get("from"), query.getlist("to"), envid=query.get("envid"),
                                  ret=query.get("ret"), notify=query.get("notify"))
        key = _idempotency_key(request.headers.get("idempotency-key"))
        body = await read_body(request, limit)
    except UnsupportedMedia:
        metrics.MESSAGES_REJECTED.labels(reason="unsupported_media").inc()
        raise
    except LengthRequired:
        metrics.MESSAGES_REJECTED.labels(reason="length_required").inc()
        raise
    except PayloadTooLarge:
        metrics.MESSAGES_REJECTED.labels(reason="too_large").inc()
        raise
    except BadRequest:
        metrics.MESSAGES_REJECTED.labels(reason="bad_request").inc()
        raise
    accepted = await runtime.outbox.submit(envelope, body, key)
    out: dict[str, Any] = {
        "id": str(accepted.message_id),
        "recipients": [{"address": a, "status": "queued"} for a in accepted.recipients],
    }
    if accepted.duplicate:
        out["duplicate"] = True
    return _json(out, 202)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@router.get("/{message_id}", summary="Envelope and per-recipient delivery status")
async def get_message(message_id: str, principal: ReaderDep, runtime: RuntimeDep) -> Response:
    try:
        mid = uuid.UUID(message_id)
    except ValueError:
        raise NotFound(f"no message {message_id!r}", code="message_not_found") from None
    account = principal.account if principal.role == "user" else None
    if principal.role == "user" and not account:
        raise NotFound(f"no message {message_id}", code="message_not_found")
    msg, rcpts, runs = await runtime.db.get_message(mid, account)
    if msg is None or (principal.role == "user" and not rcpts):
        raise NotFound(f"no message {message_id}", code="message_not_found")
    by_rcpt: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for run in runs:
        by_rcpt.setdefault(run["recipient_id"], []).append(
            {
                "program": run["program"],
                "position": run["position"],
                "attempt": run["attempt"],
                "exit_status": run["exit_status"],
                "signal": run["signal"],
                "timed_out": run["timed_out"],
                "output_excerpt": run["output_excerpt"],
                "duration_ms": run["duration_ms"],
                "started_at": _iso(run["started_at"]),
            }
        )
    return _json(
        {
            "id": str(msg["id"]),
            "envelope": {
                "from": msg["sender"],
                "to": [r["address"] for r in rcpts],
                "envid": msg["envid"],
                "ret": msg["ret"],
                "notify": list(msg["notify"]),
            },
            "size": msg["size"],
            "received_at": _iso(msg["received_at"]),
            "recipients": [
                {
                    "address": r["address"],
                    "account": r["account"],
                    "notify": list(r["notify"]),
                    "orcpt": r["orcpt"],
                    "state": r["state"],
                    "attempts": r["attempts"],
                    "status": r["status"],
                    "diagnostic": r["diagnostic"],
                    "created_at": _iso(r["created_at"]),
                    "updated_at": _iso(r["updated_at"]),
                    "final_at": _iso(r["final_at"]),
                    "programs": by_rcpt.get(r["id"], []),
                }
                for r in rcpts
            ],
        }
    )


def _cursor(received_at: datetime, mid: uuid.UUID) -> str:
    raw = f"{received_at.isoformat()}|{mid}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, mid = raw.split("|", 1)
        return datetime.fromisoformat(when), uuid.UUID(mid)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("cursor: not a cursor this endpoint returned", code="bad_cursor") from None


@router.get("", summary="List messages, newest first (admin; for operators)")
async def list_messages(
    principal: AdminDep,
    runtime: RuntimeDep,
    recipient: Annotated[str | None, Query(description="account address")] = None,
    state: Annotated[str | None, Query(description="recipient state")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    if state is not None and state not in STATES:
        raise BadRequest(f"state: one of {', '.join(STATES)}", code="bad_state")
    rows = await runtime.db.list_messages(
        account=recipient.lower() if recipient else None,
        state=state,
        before=_parse_cursor(cursor) if cursor else None,
        limit=limit,
    )
    items = [
        {"id": str(r["id"]), "from": r["sender"], "size": r["size"],
         "received_at": _iso(r["received_at"])}
        for r in rows
    ]
    nxt = _cursor(rows[-1]["received_at"], rows[-1]["id"]) if len(rows) == limit else None
    return _json({"messages": items, "next_cursor": nxt})
