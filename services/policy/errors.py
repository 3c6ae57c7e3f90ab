"""Errors of the policy service, on top of :mod:`shared.errors`.

Hierarchy::

    shared.errors.MailexecError
    ├── shared.errors.BadRequest           400
    │   ├── InvalidName                    a program name breaks the name rule
    │   ├── InvalidProgramEntry            an account's program entry whose name can never
    │   │                                  be a program (its basename breaks the name rule)
    │   ├── InvalidAddress                 an account address is not local@domain
    │   └── InvalidCursor                  a pagination cursor we did not issue
    ├── shared.errors.NotFound             404 (no such program / account / token)
    ├── shared.errors.PayloadTooLarge      413 (program over ``max_program_bytes``)
    ├── shared.errors.UnsupportedMedia     415 (program upload not application/octet-stream)
    ├── InterpreterRefused                 422 a command interpreter without allow_interpreter
    └── Unprocessable                      422 a well-formed body with invalid values

Routes raise these; ``shared.httpapp`` renders them in the SPEC error shape.
"""

from __future__ import annotations

from shared.errors import BadRequest, MailexecError


class InvalidName(BadRequest):
    code = "invalid_name"


class InvalidProgramEntry(BadRequest):
    code = "invalid_program_entry"


class InvalidAddress(BadRequest):
    code = "invalid_address"


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


class Unprocessable(MailexecError):
    status_code = 422
    code = "invalid_request"


class InterpreterRefused(MailexecError):
    status_code = 422
    code = "interpreter_refused"
