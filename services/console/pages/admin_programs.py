"""Trusted programs: the list with SHA-256 and size, upload, description/network, delete.

The upload is streamed from the console's spooled copy of the form's file to policy's
``PUT /v1/programs/{name}`` (never held in memory whole); policy checks the size limit
and refuses command interpreters unless the form's waiver is ticked (audited there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from services.console.admin_forms import (
    FORM_ERROR,
    Errors,
    parse_program_meta,
    parse_program_upload,
    program_name_problem,
    too_large_message,
)
from services.console.api import Api, seg
from services.console.errors import ApiError, PageNotFound
from services.console.pages.admin_common import form_fields, page
from services.console.web import AdminDep, redirect
from shared.programs import NETWORK_NAMES
from shared.settings import get_settings

router = APIRouter()
CHUNK = 256 * 1024
INTERPRETER_HINT = ("If you have inspected this program and accept that it can run "
                    "commands it reads, tick \u201cThis program is an interpreter; allow it "
                    "anyway\u201d and upload it again.")


def _checked_name(name: str) -> str:
    if program_name_problem(name):
        raise PageNotFound(f"No trusted program can be called {name!r}.")
    return name


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    await upload.seek(0)
    while chunk := await upload.read(CHUNK):
        yield chunk


def _upload_file(form: Any) -> UploadFile | None:
    file = form.get("file")
    if isinstance(file, UploadFile) and (file.filename or file.size):
        return file
    return None


async def _programs_page(request: Request, person: AdminDep, values: dict[str, str],
                         errors: Errors, status_code: int = 200) -> Response:
    listing = await Api(request, person).get("policy", "/v1/programs")
    return page(request, person, "admin/programs.html", status_code,
                programs=listing.get("items", []), values=values, errors=errors,
                networks=NETWORK_NAMES, limit=get_settings().max_program_bytes)


@router.get("/programs")
async def programs(request: Request, person: AdminDep) -> Response:
    return await _programs_page(request, person, {}, {})


@router.post("/programs")
async def upload_program(request: Request, person: AdminDep) -> Response:
    form = await request.form()
    values = await form_fields(request)
    file = _upload_file(form)
    upload, errors = parse_program_upload(values, file.filename if file else None,
                                          file.size if file else None)
    limit = get_settings().max_program_bytes
    if file is not None and file.size is not None and file.size > limit:
        errors["file"] = too_large_message(limit)
    if errors or file is None:
        return await _programs_page(request, person, values, errors, 400)
    api = Api(request, person)
    params = {"allow_interpreter": "true"} if upload.allow_interpreter else None
    headers = {"Content-Type": "application/octet-stream"}
    if file.size is not None:
        headers["Content-Length"] = str(file.size)
    try:
        meta = await api.put(
            "policy", f"/v1/programs/{seg(upload.name)}",
            content=_chunks(file),
            headers=headers, params=params,
        )
    except ApiError as exc:
        if exc.code == "interpreter_refused":
            errors["allow_interpreter"] = f"{exc.message} {INTERPRETER_HINT}"
        elif exc.status == 413:
            errors["file"] = f"The file is too large for a trusted program: {exc.message}"
        elif exc.status in (400, 415, 422):
            errors["name" if exc.code == "invalid_name" else FORM_ERROR] = exc.message
        else:
            raise
        return await _programs_page(request, person, values, errors, 400)
    changes = {k: v for k, v in upload.meta.items() if meta.get(k) != v}
    if changes:
        await api.patch("policy", f"/v1/programs/{seg(upload.name)}", json=changes)
    return redirect("/admin/programs",
                    notice=f"Program {upload.name} registered (SHA-256 {meta.get('sha256')}).")


@router.get("/programs/{name}")
async def program(request: Request, person: AdminDep, name: str) -> Response:
    meta = await Api(request, person).get("policy", f"/v1/programs/{seg(_checked_name(name))}")
    values = {"description": meta.get("description") or "", "network": meta.get("network", "none")}
    return page(request, person, "admin/program.html", program=meta, values=values,
                networks=NETWORK_NAMES)


@router.post("/programs/{name}")
async def program_save(request: Request, person: AdminDep, name: str) -> Response:
    api = Api(request, person)
    path = f"/v1/programs/{seg(_checked_name(name))}"
    values = await form_fields(request)
    body, errors = parse_program_meta(values)
    if not errors:
        try:
            await api.patch("policy", path, json=body)
        except ApiError as exc:
            if exc.status not in (400, 422):
                raise
            errors[FORM_ERROR] = exc.message
    if errors:
        meta = await api.get("policy", path)
        return page(request, person, "admin/program.html", 400, program=meta, values=values,
                    networks=NETWORK_NAMES, errors=errors)
    return redirect(f"/admin/programs/{seg(name)}", notice=f"Program {name} saved.")


@router.get("/programs/{name}/delete")
async def program_delete_confirm(request: Request, person: AdminDep, name: str) -> Response:
    meta = await Api(request, person).get("policy", f"/v1/programs/{seg(_checked_name(name))}")
    return page(request, person, "admin/confirm.html",
                heading=f"Delete the trusted program {meta['name']}?",
                text=("Accounts that list it will have their program deliveries fail until "
                      "a program of that name is registered again."),
                button="Yes, delete it", action=request.url.path,
                cancel=f"/admin/programs/{seg(name)}", destructive=True)


@router.post("/programs/{name}/delete")
async def program_delete(request: Request, person: AdminDep, name: str) -> Response:
    await Api(request, person).delete("policy", f"/v1/programs/{seg(_checked_name(name))}")
    return redirect("/admin/programs", notice=f"Program {name} deleted.")
