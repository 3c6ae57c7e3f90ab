"""``POST /v1/messages`` without FastAPI's per-request machinery.

Why: submission is the one endpoint an MTA calls for every message, and the profile of
ingest alone put ~40 % of its CPU in FastAPI/Starlette layers (dependency solving,
exception middlewares, parameter models) around a handler that needs none of them.
This ASGI middleware answers exactly ``POST /v1/messages`` itself: the same
authentication and role check (``shared.auth``), the same handler
(``routes.messages.accept``) and the same error bodies (``shared.httpapp``) as the
FastAPI route, which stays declared for the OpenAPI schema and answers everything
else under the path. It sits inside ``RejectNulBytes``, so NUL bytes in the query
string are refused first, as on every other route.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request

from shared.auth import authenticate, check_role
from shared.errors import MailexecError
from shared.httpapp import internal_error_response, mailexec_error_response

from .envelope import SUBMIT_ROLES
from .routes.messages import accept, router
from .runtime import Runtime

log = logging.getLogger("mailexec.http")

PATH = router.prefix  # POST "" under it is the submit route


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
