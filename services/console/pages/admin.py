"""The console's admin pages (issue 15): the dashboard, suspend/resume and the settings here;
programs, accounts and the tracking pages (messages, audit, notifications) in their own
modules, all under ``/admin`` and all for an admin only (``AdminDep``: anyone else gets
the 403 page).

Every page is built from the other services' APIs, called with the signed-in admin's own
token (``Api``); nothing is stored here. Forms post back to the page that shows them,
are checked by the pure functions of ``services/console/admin_forms.py`` first and then
by the API, and end in a redirect with a notice (POST/redirect/GET); a form with errors
is shown again with each error next to its field.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.console.admin_forms import (
    FORM_ERROR,
    SETTING_FIELDS,
    SHOWN_FIELD,
    attach_setting_errors,
    parse_settings_form,
    settings_form_values,
    shown_value,
)
from services.console.api import Api
from services.console.errors import ApiError
from services.console.pages import admin_accounts, admin_programs, admin_tracking
from services.console.pages.admin_common import form_fields, page
from services.console.web import AdminDep, redirect

router = APIRouter(prefix="/admin")

SUSPEND_TEXT = {
    True: ("Suspend program delivery?",
           "Messages will be held, not bounced, until you resume.", "Yes, suspend",
           "Program delivery is suspended: messages are held until you resume."),
    False: ("Resume program delivery?",
            "Held messages will be delivered again, starting now.", "Yes, resume",
            "Program delivery is resumed: held messages are being delivered."),
}


async def _optional(api: Api, service: Any, path: str) -> tuple[Any, str | None]:
    """A dashboard panel's data, or why it is missing (the rest of the page still shows)."""
    try:
        return await api.get(service, path), None
    except ApiError as exc:
        if exc.status == 401:
            raise
        return None, exc.message


@router.get("", name="admin_dashboard")
async def dashboard(request: Request, person: AdminDep) -> Response:
    api = Api(request, person)
    status = await api.get("policy", "/v1/status")
    ingest, ingest_error = await _optional(api, "ingest", "/v1/status")
    return page(request, person, "admin/dashboard.html", status=status, ingest=ingest,
                ingest_error=ingest_error)


def _confirm_suspend(request: Request, person: AdminDep, suspend: bool) -> Response:
    heading, text, button, _ = SUSPEND_TEXT[suspend]
    return page(request, person, "admin/confirm.html", heading=heading, text=text,
                button=button, action=request.url.path, cancel="/admin",
                destructive=suspend)


async def _set_suspended(request: Request, person: AdminDep, suspend: bool) -> Response:
    await Api(request, person).patch("policy", "/v1/settings", json={"suspended": suspend})
    return redirect("/admin", notice=SUSPEND_TEXT[suspend][3])


@router.get("/suspend")
async def suspend_confirm(request: Request, person: AdminDep) -> Response:
    return _confirm_suspend(request, person, True)


@router.post("/suspend")
async def suspend(request: Request, person: AdminDep) -> Response:
    return await _set_suspended(request, person, True)


@router.get("/resume")
async def resume_confirm(request: Request, person: AdminDep) -> Response:
    return _confirm_suspend(request, person, False)


@router.post("/resume")
async def resume(request: Request, person: AdminDep) -> Response:
    return await _set_suspended(request, person, False)


# --- settings ------------------------------------------------------------------------------


def _settings_page(request: Request, person: AdminDep, values: dict[str, str],
                   errors: dict[str, str], shown: str, status_code: int = 200) -> Response:
    return page(request, person, "admin/settings.html", status_code, fields=SETTING_FIELDS,
                values=values, errors=errors, shown=shown, shown_field=SHOWN_FIELD)


@router.get("/settings")
async def settings_form(request: Request, person: AdminDep) -> Response:
    current = await Api(request, person).get("policy", "/v1/settings")
    return _settings_page(request, person, settings_form_values(current), {},
                          shown_value(current))


@router.post("/settings")
async def settings_save(request: Request, person: AdminDep) -> Response:
    api = Api(request, person)
    submitted = await form_fields(request)
    current = await api.get("policy", "/v1/settings")
    changes, errors = parse_settings_form(submitted, current)
    if not errors and changes:
        try:
            await api.patch("policy", "/v1/settings", json=changes)
        except ApiError as exc:
            if exc.status not in (400, 422):
                raise
            errors = attach_setting_errors(exc.message, changes) or {FORM_ERROR: exc.message}
    if errors:
        return _settings_page(request, person, submitted, errors,
                              submitted.get(SHOWN_FIELD) or shown_value(current), 400)
    if not changes:
        return redirect("/admin/settings", notice="Nothing to save: no setting was changed.")
    labels = {f.name: f.label for f in SETTING_FIELDS}
    return redirect("/admin/settings",
                    notice="Settings saved: " + ", ".join(labels.get(k, k) for k in changes) + ".")


router.include_router(admin_programs.router)
router.include_router(admin_accounts.router)
router.include_router(admin_tracking.router)
