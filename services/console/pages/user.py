"""Users' pages: the start page, an account's Delivery Options (the seed's "Filter all
incoming messages through one or more programs" form) and its messages.

A user sees only its own account (another address: the 403 page, before any API call;
the APIs refuse it too); an admin may open any account's pages. The form's fields are
untrusted: program_list.py validates the editing actions (its header says how).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from services.console import messages as msgs
from services.console import program_list
from services.console.api import Api, seg
from services.console.errors import ApiError, Forbidden, PageNotFound
from services.console.web import Person, PersonDep, flash, redirect, render
from shared.addresses import AddressError, normalize_account
from shared.contract import MAX_PROGRAM_ENTRIES
from shared.programs import entry_basename

router = APIRouter()

UNSAVED = "You have changes that are not saved yet: press Save to keep them."


@router.get("/")
async def home(person: PersonDep) -> RedirectResponse:
    if person.is_admin:
        return RedirectResponse("/admin", status_code=303)
    if not person.account:
        raise Forbidden("This token is not bound to an account.")
    return RedirectResponse(f"/account/{seg(person.account)}", status_code=303)


def account_of(person: Person, address: str) -> str:
    """The account key of ``address`` if ``person`` may see its pages."""
    try:
        key = normalize_account(address)
    except AddressError:
        raise PageNotFound(f"{address} is not an account address.") from None
    if not person.is_admin and key != (person.account or "").lower():
        raise Forbidden("You can only see and change your own account's delivery options.")
    return key


def _registry(programs: Any) -> list[dict[str, Any]]:
    items = programs.get("items", []) if isinstance(programs, dict) else programs or []
    return sorted((p for p in items if isinstance(p, dict) and p.get("name")),
                  key=lambda p: str(p["name"]).lower())


async def _load(api: Api, key: str) -> tuple[dict[str, Any], list[dict[str, Any]],
                                             dict[str, Any]]:
    status, programs, account = await asyncio.gather(
        api.get("policy", "/v1/status"),
        api.get("policy", "/v1/programs"),
        api.get("policy", f"/v1/accounts/{seg(key)}"),
    )
    return status, _registry(programs), account


def _delivery_page(request: Request, person: Person, key: str, *, status: dict[str, Any],
                   registry: list[dict[str, Any]], account: dict[str, Any], enabled: bool,
                   programs: list[str], recent: msgs.MessagePage | None,
                   add_error: str | None = None, add_value: str = "",
                   status_code: int = 200) -> Response:
    mode = str(status.get("mode") or "secure")
    saved = account.get("program_delivery") or {}
    dirty = (enabled != bool(saved.get("enabled"))
             or programs != list(saved.get("programs") or []))
    described = {str(p["name"]): p.get("description") for p in registry}
    rows = [{"entry": entry, "name": entry_basename(entry),
             "description": described.get(entry_basename(entry)) if mode == "secure" else None}
            for entry in programs]
    warnings = [program_list.seed_warning(name) for name in
                program_list.unregistered(programs, described, mode)]
    return render(request, person, "account.html", {
        "title": f"Delivery Options for {key}",
        "address": key,
        "address_path": seg(key),
        "mode": mode,
        "delivery_status": status.get("program_delivery"),
        "enabled": enabled,
        "rows": rows,
        "registry": registry,
        "warnings": warnings,
        "mailbox_delivery": bool(account.get("mailbox_delivery")),
        "dirty": dirty,
        "unsaved_text": UNSAVED,
        "add_error": add_error,
        "add_value": add_value,
        "full": len(programs) >= MAX_PROGRAM_ENTRIES,
        "recent": recent,
        "owner_name": (account.get("owner") or {}).get("name"),
    }, status_code=status_code)


@router.get("/account/{address}")
async def delivery_options(request: Request, address: str, person: PersonDep) -> Response:
    key = account_of(person, address)
    api = Api(request, person)
    (status, registry, account), recent = await asyncio.gather(
        _load(api, key), msgs.recent(api, key))
    delivery = account.get("program_delivery") or {}
    return _delivery_page(request, person, key, status=status, registry=registry,
                          account=account, enabled=bool(delivery.get("enabled")),
                          programs=[str(p) for p in delivery.get("programs") or []],
                          recent=recent)


@router.post("/account/{address}")
async def edit_delivery_options(
    request: Request,
    address: str,
    person: PersonDep,
    action: Annotated[str, Form(max_length=32)] = "",
    enabled: Annotated[str | None, Form(max_length=8)] = None,
    programs: Annotated[list[str] | None, Form()] = None,
    trusted: Annotated[str, Form(max_length=4096)] = "",
    other: Annotated[str, Form(max_length=4096)] = "",
    path: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    key = account_of(person, address)
    api = Api(request, person)
    listed = [p for p in (programs or []) if p][: MAX_PROGRAM_ENTRIES + 1]
    is_enabled = enabled is not None
    status, registry, account = await _load(api, key)
    mode = str(status.get("mode") or "secure")
    new_entry = path if mode == "insecure" else (other.strip() or trusted)
    edited = program_list.apply(listed, action, new_entry, mode)
    if edited.save:
        return await _save(request, person, api, key, is_enabled, edited.programs, status,
                           registry, account)
    if edited.notice:
        flash(request, edited.notice)
    return _delivery_page(
        request, person, key, status=status, registry=registry, account=account,
        enabled=is_enabled, programs=edited.programs, recent=None,
        add_error=edited.error, add_value=new_entry if edited.error else "",
        status_code=400 if edited.error else 200)


async def _save(request: Request, person: Person, api: Api, key: str, enabled: bool,
                programs: list[str], status: dict[str, Any], registry: list[dict[str, Any]],
                account: dict[str, Any]) -> Response:
    try:
        written = await api.put("policy", f"/v1/accounts/{seg(key)}/programs",
                                json={"enabled": enabled, "programs": programs})
    except ApiError as exc:
        if exc.status not in (400, 409, 422):
            raise
        flash(request, f"Not saved: {exc.message}", "error")
        return _delivery_page(request, person, key, status=status, registry=registry,
                              account=account, enabled=enabled, programs=programs,
                              recent=None, status_code=400)
    response = redirect(f"/account/{seg(key)}", notice="Delivery options saved.")
    for warning in (written or {}).get("warnings") or []:
        if "not a registered trusted program" in str(warning):
            continue  # the page shows the guide's own words for these
        flash(response, f"Note: {warning}", "error")
    return response


@router.get("/account/{address}/messages")
async def account_messages(
    request: Request, address: str, person: PersonDep,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    key = account_of(person, address)
    page = await msgs.recent(Api(request, person), key, cursor)
    return render(request, person, "messages.html", {
        "title": f"Messages to {key}", "address": key, "address_path": seg(key),
        "page": page, "older": cursor is not None,
    })


@router.get("/account/{address}/messages/{message_id}")
async def account_message(request: Request, address: str, message_id: str,
                          person: PersonDep) -> Response:
    key = account_of(person, address)
    try:
        message = await msgs.one_message(Api(request, person), key, message_id)
    except ApiError as exc:
        if exc.status in (400, 404):
            raise PageNotFound(f"There is no message {message_id} to {key}.") from None
        raise
    return render(request, person, "message.html", {
        "title": f"Message {message.id}", "address": key, "address_path": seg(key),
        "message": message,
    })
