"""``mail.bodies`` keeps its pages for the next bodies, and its vacuum is not throttled
(issue 17): in a running system a body is written into pages that deleted bodies left,
and the space of deleted bodies is freed as fast as large mail arrives.

Why, measured on the CI machine (1 MiB, incompressible, one backend, ``COPY`` of the
rows, CPU of the backend):

- ``vacuum_truncate = false``. A vacuum that finds the table's last pages empty (after a
  quiet spell every page is: bodies go as soon as they are delivered) gives them back
  to the file system under an ACCESS EXCLUSIVE lock, which ingest's store and the
  executor's read of a body wait for; the next bodies then grow the table again, and
  PostgreSQL 15 extends a table by writing every new 8 KiB page twice (zeros, then the
  data). Storing 1 MiB into a grown table cost 3.7–5.9 ms, into pages deleted bodies
  left 2.2–2.4 ms. The space stays the table's, sized by the bodies held at the busiest
  time (the queue and a retention interval's worth of delivered mail), and is reused.
- ``autovacuum_vacuum_cost_delay = 0``. Autovacuum's default throttle (200 cost units
  per 2 ms; 20 per page it dirties) frees at most ~5,000 pages — ~40 MB of bodies — a
  second, whatever the machine; 1 MiB mail delivered at 100/s deletes ~100 MB a second,
  so the table would grow for as long as such mail keeps coming. Its rows are mail
  nobody needs any more; freeing them as fast as they die is what keeps the table's
  size bounded (``make soak`` with ``SOAK_KIB=1024`` shows it).

Storage parameters only: no rewrite, no lock beyond the ``ALTER TABLE``'s moment.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE mail.bodies SET (vacuum_truncate = false, "
               "autovacuum_vacuum_cost_delay = 0)")


def downgrade() -> None:
    op.execute("ALTER TABLE mail.bodies RESET (vacuum_truncate, autovacuum_vacuum_cost_delay)")
