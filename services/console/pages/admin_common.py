"""What the admin pages share: reading a submitted form, rendering with errors, paging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from services.console.admin_forms import FORM_ERROR, Errors, cursor_param
from services.console.web import Person, render

PAGE_SIZE = 50


async def form_fields(request: Request) -> dict[str, str]:
    """The submitted form's text fields (files left out), first value of each name."""
    form = await request.form()
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, str) and key not in fields:
            fields[key] = value
    return fields


def query_fields(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items()}


def summary(errors: Errors) -> list[tuple[str, str]]:
    """The error summary's rows: (input name, message); form-wide errors link nowhere."""
    return [(name, message) for name, message in errors.items()]


def page(
    request: Request, person: Person, template: str, status_code: int = 200, **context: Any
) -> Response:
    """Render an admin page; ``errors`` (input name → message) also fills the summary."""
    errors: Errors = context.setdefault("errors", {})
    context.setdefault("error_summary", summary(errors))
    context.setdefault("form_error", errors.get(FORM_ERROR))
    response: Response = render(request, person, template, context, status_code=status_code)
    return response


def next_page_url(path: str, filters: Mapping[str, str | None], cursor: str | None) -> str | None:
    """The "Next page" link: the same filters plus the API's next cursor."""
    if not cursor:
        return None
    params = {k: v for k, v in filters.items() if v}
    params["cursor"] = cursor
    return f"{path}?{urlencode(params)}"


def page_cursor(request: Request) -> str | None:
    return cursor_param(query_fields(request))
