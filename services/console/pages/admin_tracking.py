"""What happened: message tracking (by id, sender or recipient, down to each program run),
the audit log and the notifications (DSNs, admin notices) the notifier sent."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.console.admin_forms import (
    AUDIT_KINDS,
    MESSAGE_STATES,
    NOTIFICATION_STATES,
    Errors,
    parse_audit_query,
    parse_message_query,
    parse_notification_query,
)
from services.console.api import Api, seg
from services.console.errors import ApiError, PageNotFound
from services.console.pages.admin_common import (
    PAGE_SIZE,
    next_page_url,
    page,
    page_cursor,
    query_fields,
)
from services.console.web import AdminDep, redirect

router = APIRouter()


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise PageNotFound(f"There is no {what} {value!r}.") from None


def _paged(params: dict[str, Any], request: Request) -> dict[str, Any]:
    cursor = page_cursor(request)
    return {**params, "limit": PAGE_SIZE, **({"cursor": cursor} if cursor else {})}


async def _listing(api: Api, service: Any, path: str, params: dict[str, Any],
                   errors: Errors, field: str) -> Any:
    """A filtered listing; a filter the API refuses (400/422) is shown at ``field``."""
    try:
        return await api.get(service, path, params=params)
    except ApiError as exc:
        if exc.status not in (400, 422):
            raise
        named = [k for k in params if k != "limit" and exc.message.startswith(k)]
        errors[named[0] if named else field] = exc.message
        return None


@router.get("/messages")
async def messages(request: Request, person: AdminDep) -> Response:
    query = query_fields(request)
    q, errors = parse_message_query(query)
    if q.message_id and not errors:
        return redirect(f"/admin/messages/{q.message_id}")
    items: list[dict[str, Any]] = []
    next_url = None
    if not errors:
        listing = await _listing(Api(request, person), "ingest", "/v1/messages",
                                 _paged(q.params(), request), errors,
                                 "sender" if q.sender is not None else "recipient")
        if listing is not None:
            items = listing.get("messages", listing.get("items", []))
            filters = {k: query.get(k) for k in ("sender", "recipient", "state")}
            next_url = next_page_url("/admin/messages", filters, listing.get("next_cursor"))
    return page(request, person, "admin/messages.html", 400 if errors else 200,
                values=query, messages=items, next_url=next_url, states=MESSAGE_STATES,
                later_page=bool(page_cursor(request)), errors=errors,
                filtered=bool(q.params()))


@router.get("/messages/{message_id}")
async def message(request: Request, person: AdminDep, message_id: str) -> Response:
    mid = _uuid(message_id, "message")
    api = Api(request, person)
    msg = await api.get("ingest", f"/v1/messages/{mid}")
    try:
        sent = await api.get("notifier", "/v1/notifications",
                             params={"message_id": mid, "limit": 100})
        notifications, notifications_error = sent.get("items", []), None
    except ApiError as exc:
        if exc.status == 401:
            raise
        notifications, notifications_error = [], exc.message
    return page(request, person, "admin/message.html", message=msg,
                notifications=notifications, notifications_error=notifications_error)


@router.get("/audit")
async def audit(request: Request, person: AdminDep) -> Response:
    query = query_fields(request)
    params, errors = parse_audit_query(query)
    entries: list[dict[str, Any]] = []
    next_url = None
    if not errors:
        listing = await _listing(Api(request, person), "policy", "/v1/audit",
                                 _paged(params, request), errors, "target")
        if listing is not None:
            entries = listing.get("items", [])
            next_url = next_page_url("/admin/audit", params, listing.get("next_cursor"))
    return page(request, person, "admin/audit.html", 400 if errors else 200, values=query,
                entries=entries, kinds=AUDIT_KINDS, next_url=next_url,
                later_page=bool(page_cursor(request)), errors=errors)


@router.get("/notifications")
async def notifications(request: Request, person: AdminDep) -> Response:
    query = query_fields(request)
    params, errors = parse_notification_query(query)
    items: list[dict[str, Any]] = []
    next_url = None
    if not errors:
        listing = await _listing(Api(request, person), "notifier", "/v1/notifications",
                                 _paged(params, request), errors, "message_id")
        if listing is not None:
            items = listing.get("items", [])
            next_url = next_page_url("/admin/notifications", params, listing.get("next_cursor"))
    return page(request, person, "admin/notifications.html", 400 if errors else 200,
                values=query, notifications=items, states=NOTIFICATION_STATES,
                next_url=next_url, later_page=bool(page_cursor(request)), errors=errors)


@router.get("/notifications/{notification_id}")
async def notification(request: Request, person: AdminDep, notification_id: str) -> Response:
    nid = _uuid(notification_id, "notification")
    item = await Api(request, person).get("notifier", f"/v1/notifications/{seg(nid)}")
    return page(request, person, "admin/notification.html", notification=item)
