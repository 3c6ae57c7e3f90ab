"""FastAPI dependencies of ingest as ``Annotated`` aliases (the routes' vocabulary)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shared.auth import Principal, require

from .runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ReaderDep = Annotated[Principal, Depends(require("mta", "admin", "user"))]
AdminDep = Annotated[Principal, Depends(require("admin"))]
# the listing: admin, and a user for its own account (routes/messages.py narrows it)
ListerDep = Annotated[Principal, Depends(require("admin", "user"))]
