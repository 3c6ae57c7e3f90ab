"""Errors shared by every service, and the one JSON error shape of SPEC §2.

Hierarchy::

    MailexecError                 base; carries an HTTP status and a stable code
    ├── BadRequest        400     the client sent something we cannot use (say what to fix)
    ├── Unauthorized      401     missing or wrong bearer token
    ├── Forbidden         403     valid token, wrong role or wrong account
    ├── NotFound          404
    ├── Conflict          409
    ├── LengthRequired    411
    ├── PayloadTooLarge   413
    ├── UnsupportedMedia  415
    ├── TooManyRequests   429
    └── Unavailable       503     a dependency (database, broker, policy) is down; retry later
        └── DatabaseUnavailable   PostgreSQL is not there (``shared.db.is_outage``): the
                                  HTTP layer answers 503, LMTP 451, workers defer/requeue

Only the HTTP layer (``shared.httpapp``) turns these into responses.
"""

from __future__ import annotations

from typing import Any


class MailexecError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


class BadRequest(MailexecError):
    status_code = 400
    code = "bad_request"


class Unauthorized(MailexecError):
    status_code = 401
    code = "unauthorized"


class Forbidden(MailexecError):
    status_code = 403
    code = "forbidden"


class NotFound(MailexecError):
    status_code = 404
    code = "not_found"


class Conflict(MailexecError):
    status_code = 409
    code = "conflict"


class LengthRequired(MailexecError):
    status_code = 411
    code = "length_required"


class PayloadTooLarge(MailexecError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMedia(MailexecError):
    status_code = 415
    code = "unsupported_media_type"


class TooManyRequests(MailexecError):
    status_code = 429
    code = "too_many_requests"


class Unavailable(MailexecError):
    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class DatabaseUnavailable(Unavailable):
    """Raised only by :func:`shared.db.translate_db_errors`, for an outage; a constraint
    violation or any other database error is never this."""

    code = "database_unavailable"
