"""The console's admin pages (issue 15): dashboard, settings, programs, accounts, messages, audit, notifications."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/admin")
