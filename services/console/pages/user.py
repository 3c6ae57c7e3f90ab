"""Users' pages: the home redirect and the Delivery Options page of an account."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from services.console.api import seg
from services.console.web import PersonDep

router = APIRouter()


@router.get("/")
async def home(person: PersonDep) -> RedirectResponse:
    if person.is_admin:
        return RedirectResponse("/admin", status_code=303)
    return RedirectResponse(f"/account/{seg(person.account or '')}", status_code=303)
