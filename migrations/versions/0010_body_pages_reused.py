"""``mail.bodies`` keeps its pages for the next bodies, and its vacuum is not throttled
(issue 17): in a running system a body is written into pages that deleted bodies left,
and autovacuum frees the space of deleted bodies as fast as the machine allows.

Why, measured on the CI machine (1 MiB, incompressible, ``COPY`` of the rows as ingest
writes them, CPU of the backend):

- ``vacuum_truncate = false``. A vacuum that finds the table's last pages empty (after a
  quiet spell every page is: bodies go as soon as they are delivered) gives them back
  to the file system under an ACCESS EXCLUSIVE lock, which ingest's store and the
  executor's read of a body wait for; the next bodies then grow the table again, and
  PostgreSQL 15 extends a table by writing every new 8 KiB page twice (zeros, then the
  data). ``python -m bench.bodystore``: storing 1 MiB costs 2.7 ms when it grows the
  table, 2.0 ms into pages deleted bodies left (store + read + delete + vacuum 6.7 vs
  4.8 ms); with other backends writing at the same time the difference was larger
  (3.7–5.9 vs 2.2–2.4 ms). The space stays the table's and is reused (sized by the queue and the
  bodies delivered while their space waits for a vacuum pass).
- ``autovacuum_vacuum_cost_delay = 0``. Autovacuum's default throttle (200 cost units
  per 2 ms; 20 per page it dirties) frees at most ~5,000 pages — ~40 MB of bodies — a
  second, whatever the machine; in a 1 MiB soak offered 90/s without this revision, its
  pass over ``mail.bodies`` spent over two and a half minutes in its second heap phase,
  while those pages could not take new bodies.
  Its rows are mail nobody needs any more. This makes a pass as fast as the machine
  allows; it does not bound the table under sustained large mail by itself: a pass
  reads the whole table, so above a rate the machine's vacuum cannot keep up with (on
  the CI machine, between 40 and 78 MiB/s of bodies: ``make soak`` with
  ``SOAK_KIB=1024``) the table keeps growing (docs/admin-guide.md "How bodies are stored").

Together, 1 MiB mail at 40/s for 5 minutes (``make soak``, ``SOAK_KIB=1024 SOAK_RATE=40
SOAK_MINUTES=5``): ``mail.bodies`` levels off at 3.9 GB after 2.5 minutes and stays;
without this revision it grew all the way, to 9.7 GB at the end.

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
