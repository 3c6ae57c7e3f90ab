"""A recipient's states (SPEC §2 `GET /v1/messages/{id}`), one list for every service that
reads or writes ``mail.recipients.state`` (ingest, executor); the database's CHECK
constraint (migration 0006) is the same list.

``deleted`` extends SPEC's names: removed from the queue by an operator, no DSN
(``mailexec queue delete``).
"""

from __future__ import annotations

STATES = ("queued", "running", "suspended", "deferred", "on_hold", "delivered", "bounced",
          "deleted")
# never tried again, never counted as waiting
FINAL_STATES = ("delivered", "bounced", "deleted")
# waiting for a run, in a run, or parked: the dashboard's and the oldest-job metric's states
NOT_FINAL_STATES = tuple(s for s in STATES if s not in FINAL_STATES)
