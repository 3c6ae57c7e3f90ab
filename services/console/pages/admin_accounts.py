"""Accounts: look up, page through, create, edit, delete; their user tokens (issue, revoke).

A new token is shown once, on the page that answers the POST that issued it, sent with
``Cache-Control: no-store``; it never travels in a URL, a redirect or a flash cookie, and
no later page can show it again (policy stores only its hash).

Search: policy's ``GET /v1/accounts?q=`` (addresses containing the text, any case), paged
with its cursor like the full list; nothing is filtered here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.console.admin_forms import (
    FORM_ERROR,
    Errors,
    account_form_values,
    address_problem,
    parse_account_form,
    parse_token_label,
)
from services.console.api import Api, seg
from services.console.errors import ApiError, PageNotFound
from services.console.pages.admin_common import (
    PAGE_SIZE,
    form_fields,
    next_page_url,
    page,
    page_cursor,
    query_fields,
)
from services.console.web import AdminDep, redirect
from shared.addresses import normalize_account

router = APIRouter()
MAX_NOTICE_CHARS = 1500  # the flash cookie's room for policy's warnings
NEW_ACCOUNT = {"owner": {"shell": "/bin/sh"}, "program_delivery": {"enabled": True},
               "mailbox_delivery": True}


def _key(address: str) -> str:
    if address_problem(address):
        raise PageNotFound(f"No account can have the address {address!r}.")
    return normalize_account(address)


def _saved_notice(what: str, warnings: list[str]) -> str:
    notice = what
    if warnings:
        notice += " Warning: " + " ".join(f"{w}." if not w.endswith(".") else w for w in warnings)
    return notice if len(notice) <= MAX_NOTICE_CHARS else notice[: MAX_NOTICE_CHARS - 1] + "\u2026"


@router.get("/accounts")
async def accounts(request: Request, person: AdminDep) -> Response:
    api = Api(request, person)
    q = query_fields(request).get("q", "").strip()
    errors: Errors = {}
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    if q:
        params["q"] = q
    if page_cursor(request):
        params["cursor"] = page_cursor(request)
    try:
        listing = await api.get("policy", "/v1/accounts", params=params)
    except ApiError as exc:
        if exc.status not in (400, 422):
            raise
        errors["q"] = exc.message
        listing = {}
    items: list[dict[str, Any]] = listing.get("items", [])
    next_url = next_page_url("/admin/accounts", {"q": q}, listing.get("next_cursor"))
    return page(request, person, "admin/accounts.html", 200, q=q, accounts=items,
                next_url=next_url, later_page=bool(page_cursor(request)), errors=errors)


def _account_page(request: Request, person: AdminDep, *, values: dict[str, str],
                  errors: Errors, address: str | None, tokens: list[dict[str, Any]],
                  status_code: int = 200, **extra: Any) -> Response:
    return page(request, person, "admin/account.html", status_code, values=values,
                errors=errors, address=address, tokens=tokens, **extra)


@router.get("/accounts/new")
async def account_new(request: Request, person: AdminDep) -> Response:
    return _account_page(request, person, values=account_form_values(NEW_ACCOUNT), errors={},
                         address=None, tokens=[])


async def _put_account(api: Api, key: str, body: dict[str, Any], errors: Errors) -> list[str]:
    try:
        written = await api.put("policy", f"/v1/accounts/{seg(key)}", json=body)
    except ApiError as exc:
        if exc.status not in (400, 422):
            raise
        field = {"invalid_program_entry": "programs", "invalid_address": "address"}
        errors[field.get(exc.code, FORM_ERROR)] = exc.message
        return []
    return list(written.get("warnings") or [])


@router.post("/accounts/new")
async def account_create(request: Request, person: AdminDep) -> Response:
    api = Api(request, person)
    values = await form_fields(request)
    key, body, errors = parse_account_form(values)
    if not errors:
        try:
            await api.get("policy", f"/v1/accounts/{seg(key)}")
            errors["address"] = f"The account {key} exists already; edit it instead."
        except ApiError as exc:
            if exc.status != 404:
                raise
    warnings = [] if errors else await _put_account(api, key, body, errors)
    if errors:
        return _account_page(request, person, values=values, errors=errors, address=None,
                             tokens=[], status_code=400)
    return redirect(f"/admin/accounts/{seg(key)}",
                    notice=_saved_notice(f"Account {key} created.", warnings))


async def _tokens(api: Api, key: str) -> list[dict[str, Any]]:
    listing = await api.get("policy", f"/v1/accounts/{seg(key)}/tokens")
    return list(listing.get("items", []))


@router.get("/accounts/{address}")
async def account(request: Request, person: AdminDep, address: str) -> Response:
    api = Api(request, person)
    key = _key(address)
    current = await api.get("policy", f"/v1/accounts/{seg(key)}")
    return _account_page(request, person, values=account_form_values(current), errors={},
                         address=key, tokens=await _tokens(api, key), account=current)


@router.post("/accounts/{address}")
async def account_save(request: Request, person: AdminDep, address: str) -> Response:
    api = Api(request, person)
    key = _key(address)
    values = await form_fields(request)
    values["address"] = key  # the URL names the account; the form cannot rename it
    _, body, errors = parse_account_form(values)
    current = await api.get("policy", f"/v1/accounts/{seg(key)}")  # 404 page if deleted
    warnings = [] if errors else await _put_account(api, key, body, errors)
    if errors:
        return _account_page(request, person, values=values, errors=errors, address=key,
                             tokens=await _tokens(api, key), account=current, status_code=400)
    return redirect(f"/admin/accounts/{seg(key)}",
                    notice=_saved_notice(f"Account {key} saved.", warnings))


@router.get("/accounts/{address}/delete")
async def account_delete_confirm(request: Request, person: AdminDep, address: str) -> Response:
    key = _key(address)
    await Api(request, person).get("policy", f"/v1/accounts/{seg(key)}")
    return page(request, person, "admin/confirm.html",
                heading=f"Delete the account {key}?",
                text=("Mail to it will be refused from now on, and every user token "
                      "issued for it is revoked."),
                button="Yes, delete the account", action=request.url.path,
                cancel=f"/admin/accounts/{seg(key)}", destructive=True)


@router.post("/accounts/{address}/delete")
async def account_delete(request: Request, person: AdminDep, address: str) -> Response:
    key = _key(address)
    await Api(request, person).delete("policy", f"/v1/accounts/{seg(key)}")
    return redirect("/admin/accounts", notice=f"Account {key} deleted; its tokens are revoked.")


@router.post("/accounts/{address}/tokens")
async def token_issue(request: Request, person: AdminDep, address: str) -> Response:
    api = Api(request, person)
    key = _key(address)
    label, errors = parse_token_label(await form_fields(request))
    if errors:
        current = await api.get("policy", f"/v1/accounts/{seg(key)}")
        return _account_page(request, person, values=account_form_values(current),
                             errors=errors, address=key, tokens=await _tokens(api, key),
                             account=current, status_code=400)
    issued = await api.post("policy", f"/v1/accounts/{seg(key)}/tokens",
                            json={"label": label} if label else None)
    response = page(request, person, "admin/token_issued.html", address=key,
                    issued={k: v for k, v in issued.items() if k != "token"},
                    new_token=issued["token"])
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@router.get("/tokens/{token_id}/revoke")
async def token_revoke_confirm(request: Request, person: AdminDep, token_id: str) -> Response:
    account_key = _key(query_fields(request).get("account", ""))
    tokens = await _tokens(Api(request, person), account_key)
    token = next((t for t in tokens if str(t.get("id")) == token_id), None)
    if token is None:
        raise PageNotFound(f"The account {account_key} has no token {token_id}.")
    label = f" \u201c{token['label']}\u201d" if token.get("label") else ""
    return page(request, person, "admin/confirm.html",
                heading=f"Revoke the token{label} of {account_key}?",
                text="Whoever uses it is signed out at once and cannot sign in with it again.",
                button="Yes, revoke it", action=request.url.path,
                hidden={"account": account_key},
                cancel=f"/admin/accounts/{seg(account_key)}", destructive=True)


@router.post("/tokens/{token_id}/revoke")
async def token_revoke(request: Request, person: AdminDep, token_id: str) -> Response:
    account_key = _key((await form_fields(request)).get("account", ""))
    try:
        await Api(request, person).delete("policy", f"/v1/tokens/{seg(token_id)}")
    except ApiError as exc:
        if exc.status not in (400, 404, 422):
            raise
        return redirect(f"/admin/accounts/{seg(account_key)}", error=exc.message)
    return redirect(f"/admin/accounts/{seg(account_key)}", notice="Token revoked.")
