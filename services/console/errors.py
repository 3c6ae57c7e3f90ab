"""What goes wrong while building a page, and which page says so.

::

    ConsoleError                 rendered by app.py's handlers, never as a traceback
    ├── NotSignedIn              no (valid) session cookie → /signin?next=<path>
    ├── SessionEnded             policy no longer knows the session → cookie cleared, /signin
    ├── PageError(status, msg)   an HTML error page: 403, 404, 400 …
    │   ├── Forbidden            403 ("Administrators only", someone else's account)
    │   ├── PageNotFound         404
    │   └── CsrfRejected         403: a POST without the form's CSRF value
    └── ApiError(status, code, message, service)
                                 a call to policy/ingest/notifier failed: 401 → SessionEnded,
                                 403/404 → their pages, 5xx or unreachable → 503 naming it

Translated once, at the boundary: ``api.py`` turns httpx errors and error bodies into
``ApiError``; only ``app.py`` turns errors into responses.
"""

from __future__ import annotations

CSRF_MESSAGE = ("This form has expired or did not come from the console. "
                "Reload the page and try again.")


class ConsoleError(Exception):
    """Base of everything the console's handlers turn into a page."""


class NotSignedIn(ConsoleError):
    """No session cookie, or one this console cannot open (tampered, foreign, old key)."""


class SessionEnded(ConsoleError):
    """The cookie opened, but policy says the session is over (idle, signed out, revoked)."""


class PageError(ConsoleError):
    status = 400
    heading = "Something is wrong with this request"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class Forbidden(PageError):
    status = 403
    heading = "Not allowed"


class PageNotFound(PageError):
    status = 404
    heading = "Page not found"


class CsrfRejected(Forbidden):
    heading = "Form not accepted"

    def __init__(self) -> None:
        super().__init__(CSRF_MESSAGE)


class ApiError(ConsoleError):
    """A service answered an error (``{"error": {"code", "message"}}``) or did not answer
    (``status`` 503, ``code`` "unreachable")."""

    def __init__(self, status: int, code: str, message: str, service: str = "") -> None:
        super().__init__(f"{service} {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.service = service
