"""Trusted programs: upload (raw bytes), metadata (description, network), content, removal.

Who may do what: the admin everything; the service role reads metadata and bytes (the
executor runs them); a ``user`` lists programs and reads their metadata, never their
bytes, so it can choose among them (SPEC §2). ``network`` is what a program may reach
when it runs (``none`` | ``egress``, SPEC §3 rule 6): changing it is audited with the
old and new value, and announced on ``policy.changed`` so executors refetch the
program's entry before its next run, without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy.engine import RowMapping

from services.policy import interpreters, repo
from services.policy import tables as t
from services.policy.deps import (
    AdminDep,
    BrokerDep,
    ProgramsReaderDep,
    ReaderDep,
    SessionDep,
    transaction,
)
from services.policy.errors import InterpreterRefused
from services.policy.events import announce
from services.policy.metrics import INTERPRETER_REFUSALS, INTERPRETERS_ALLOWED, PROGRAMS
from services.policy.models import ProgramList, ProgramMeta, ProgramPatch
from services.policy.validation import check_program_name
from shared.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMedia
from shared.settings import get_settings

log = logging.getLogger("mailexec.policy.programs")
router = APIRouter(prefix="/v1/programs", tags=["programs"])
CLASSIFY_IN_THREAD_BYTES = 1 << 20


def _meta(row: RowMapping) -> ProgramMeta:
    return ProgramMeta.model_validate(dict(row))


def _audit_view(row: RowMapping | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"sha256": row["sha256"], "size": row["size"], "interpreter": row["interpreter"]}


async def _read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    ctype = request.headers.get("content-type", "")
    if ctype and ctype.split(";", 1)[0].strip().lower() != "application/octet-stream":
        raise UnsupportedMedia(
            f"send the program's bytes as Content-Type: application/octet-stream (got {ctype!r})"
        )
    too_big = PayloadTooLarge(
        f"program too large: the limit is {limit} bytes (MAILEXEC_MAX_PROGRAM_BYTES)",
        limit=limit,
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise too_big
    buf = bytearray()
    digest = hashlib.sha256()
    async for chunk in request.stream():
        if len(buf) + len(chunk) > limit:
            raise too_big
        buf += chunk
        digest.update(chunk)
    if not buf:
        raise BadRequest("empty body: send the program's bytes", code="empty_program")
    return bytes(buf), digest.hexdigest()


@router.get("", response_model=ProgramList)
async def list_programs(principal: ProgramsReaderDep, session: SessionDep) -> ProgramList:
    async with transaction(session):
        rows = await repo.list_programs(session)
    items = [_meta(r) for r in rows]
    return ProgramList(items=items, count=len(items))


@router.get(
    "/{name}/content",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def program_content(name: str, principal: ReaderDep, session: SessionDep) -> Response:
    check_program_name(name)
    async with transaction(session):
        meta = await repo.get_program(session, name)
        content = await repo.program_content(session, name)
    if meta is None or content is None:
        raise NotFound(f"no trusted program named {name!r}", code="no_such_program")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"X-Content-SHA256": meta["sha256"], "ETag": f'"{meta["sha256"]}"'},
    )


@router.get("/{name:raw}", response_model=ProgramMeta)
async def get_program(name: str, principal: ProgramsReaderDep, session: SessionDep) -> ProgramMeta:
    check_program_name(name)
    async with transaction(session):
        row = await repo.get_program(session, name)
    if row is None:
        raise NotFound(f"no trusted program named {name!r}", code="no_such_program")
    return _meta(row)


@router.put(
    "/{name:raw}",
    response_model=ProgramMeta,
    status_code=status.HTTP_200_OK,
    responses={201: {"description": "registered"}, 200: {"description": "replaced"},
               413: {"description": "over MAILEXEC_MAX_PROGRAM_BYTES"},
               422: {"description": "a command interpreter, refused"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def put_program(
    name: str,
    request: Request,
    response: Response,
    principal: AdminDep,
    session: SessionDep,
    broker: BrokerDep,
    allow_interpreter: bool = Query(
        False, description="register it although it is a command interpreter (audited)"
    ),
) -> ProgramMeta:
    check_program_name(name)
    content, sha256 = await _read_upload(request, get_settings().max_program_bytes)
    if len(content) > CLASSIFY_IN_THREAD_BYTES:
        verdict = await asyncio.to_thread(interpreters.classify, name, content, sha256)
    else:
        verdict = interpreters.classify(name, content, sha256)
    if verdict.interpreter and not allow_interpreter:
        INTERPRETER_REFUSALS.inc()
        log.warning("interpreter refused", extra={"program": name, "reason": verdict.reason,
                                                  "actor": principal.name})
        raise InterpreterRefused(
            f"refused: {verdict.reason}. A program that interprets its input as commands "
            "must not be a trusted program (an inspected '#!' script is fine). If you have "
            "inspected it and accept the risk, repeat with ?allow_interpreter=true (audited).",
            reason=verdict.reason,
        )
    async with transaction(session):
        old = await repo.get_program(session, name, for_update=True)
        row = await repo.put_program(session, name=name, sha256=sha256, content=content,
                                     interpreter=verdict.interpreter, actor=principal.name)
        new = _audit_view(row) or {}
        if verdict.interpreter:
            new.update(allow_interpreter=True, interpreter_reason=verdict.reason)
        await repo.add_audit(session, actor=principal.name, action="put", kind="program",
                             target=name, old=_audit_view(old), new=new)
        total = await repo.count(session, t.programs)
        suspended = (await repo.load_settings(session)).suspended
    PROGRAMS.set(total)
    if verdict.interpreter:
        INTERPRETERS_ALLOWED.inc()
        log.warning("interpreter registered with allow_interpreter",
                    extra={"program": name, "reason": verdict.reason, "actor": principal.name})
    await announce(broker, what="program", key=name, action="put", suspended=suspended)
    response.status_code = status.HTTP_201_CREATED if old is None else status.HTTP_200_OK
    return _meta(row)


@router.patch(
    "/{name:raw}",
    response_model=ProgramMeta,
    responses={404: {"description": "no such program"},
               422: {"description": "unknown field or invalid value"}},
)
async def patch_program(
    name: str, patch: ProgramPatch, principal: AdminDep, session: SessionDep, broker: BrokerDep
) -> ProgramMeta:
    check_program_name(name)
    changes = patch.model_dump(mode="json", exclude_unset=True)
    async with transaction(session):
        old = await repo.get_program(session, name, for_update=True)
        if old is None:
            raise NotFound(f"no trusted program named {name!r}", code="no_such_program")
        changed = sorted(k for k, v in changes.items() if old[k] != v)
        if not changed:
            return _meta(old)
        row = await repo.set_program_meta(session, name, {k: changes[k] for k in changed})
        await repo.add_audit(session, actor=principal.name, action="patch", kind="program",
                             target=name, old={k: old[k] for k in changed},
                             new={k: row[k] for k in changed})
        suspended = (await repo.load_settings(session)).suspended
    if "network" in changed:
        log.warning("program network changed", extra={
            "program": name, "actor": principal.name, "old": old["network"],
            "new": row["network"]})
    await announce(broker, what="program", key=name, action="patch", suspended=suspended)
    return _meta(row)


@router.delete("/{name:raw}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_program(
    name: str, principal: AdminDep, session: SessionDep, broker: BrokerDep
) -> Response:
    check_program_name(name)
    async with transaction(session):
        old = await repo.get_program(session, name, for_update=True)
        if old is None:
            raise NotFound(f"no trusted program named {name!r}", code="no_such_program")
        await repo.delete_program(session, name)
        await repo.add_audit(session, actor=principal.name, action="delete", kind="program",
                             target=name, old=_audit_view(old), new=None)
        total = await repo.count(session, t.programs)
        suspended = (await repo.load_settings(session)).suspended
    PROGRAMS.set(total)
    await announce(broker, what="program", key=name, action="delete", suspended=suspended)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
