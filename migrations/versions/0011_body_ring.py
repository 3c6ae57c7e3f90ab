"""``mail.bodies`` becomes a ring of partitions emptied by ``TRUNCATE`` (issue 17): the
space of delivered bodies comes back whatever the rate of large mail, without a
``DELETE`` or a vacuum pass over them.

Why: with 0009/0010 every body was deleted row by row and its space freed by autovacuum,
whose pass reads the whole table. Under sustained large mail the table grows while a
pass runs, so the next pass is longer: on the CI machine 1 MiB mail at 40/s levelled off
at 3.9 GB, at 78–84/s it grew for as long as the load lasted (``make soak`` with
``SOAK_KIB=1024``). Postfix unlinks a queue file; ``TRUNCATE`` is PostgreSQL's unlink:
its cost does not depend on the partition's size, it gives the space back at once, and
pages not yet written are never written. ``python -m bench.bodystore``, backend CPU per
1 MiB body: store + read + delete + vacuum 4.4 ms (rows, 0010), store + read + truncate
3.8 ms (ring).

- ``mail.bodies (slot, message_id, off, chunk)``, ``PARTITION BY LIST (slot)``:
  ``bodies_ring1`` .. ``bodies_ring4`` (:data:`RING`) take new bodies a turn each
  (``MAILEXEC_BODY_SLOT_S``); ``bodies_kept`` (slot 0) holds the bodies that were still
  needed when their slot's turn came round (a deferred recipient, a DSN not rendered yet,
  a dead letter), deleted by retention and vacuumed as 0010 set up. Autovacuum is off
  for the ring partitions: nothing there is deleted but by ``TRUNCATE`` (a
  ``mailexec queue delete`` leaves its few dead rows until then).
- ``mail.messages.body_slot``: the slot of the message's body (0 for every body stored
  before this revision: they move to ``bodies_kept``). Index ``messages_body_slot``
  finds the bodies still held in a slot when its turn comes.
- ``mail.body_ring``: one row per ring slot, the start of the turn it was last emptied
  for (a time, so that a changed ``MAILEXEC_BODY_SLOT_S`` compares), so that one ingest
  replica empties it once per turn.
- Grants: ingest writes and truncates the ring partitions, writes and deletes in
  ``bodies_kept``; the executor and the notifier read through ``mail.bodies`` only.

Upgrade copies every stored body into ``bodies_kept`` (one statement; run it in a quiet
moment on a big queue); downgrade copies the held bodies back into one table as 0010
left it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

RING = 4  # == shared/bodies.RING (a unit test checks they agree)

# 0009's autovacuum settings and 0010's, for the one partition that still deletes
KEPT_OPTIONS = ("autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000, "
                "autovacuum_vacuum_insert_scale_factor = 0, "
                "autovacuum_vacuum_insert_threshold = 100000, "
                "vacuum_truncate = false, autovacuum_vacuum_cost_delay = 0")


def _ring() -> list[str]:
    return [f"mail.bodies_ring{s}" for s in range(1, RING + 1)]


def upgrade() -> None:
    op.execute("ALTER TABLE mail.messages ADD COLUMN body_slot smallint NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE mail.bodies RENAME TO bodies_0010")
    op.execute("ALTER INDEX mail.bodies_pkey RENAME TO bodies_0010_pkey")
    op.execute("""
        CREATE TABLE mail.bodies (
            slot smallint NOT NULL,
            message_id uuid NOT NULL,
            off bigint NOT NULL,
            chunk bytea NOT NULL,
            PRIMARY KEY (slot, message_id, off)
        ) PARTITION BY LIST (slot)
    """)
    op.execute("ALTER TABLE mail.bodies ALTER COLUMN chunk SET STORAGE PLAIN")
    op.execute("CREATE TABLE mail.bodies_kept PARTITION OF mail.bodies FOR VALUES IN (0) "
               f"WITH ({KEPT_OPTIONS})")
    for slot, name in enumerate(_ring(), start=1):
        op.execute(f"CREATE TABLE {name} PARTITION OF mail.bodies FOR VALUES IN ({slot}) "
                   "WITH (autovacuum_enabled = false)")
    op.execute("INSERT INTO mail.bodies_kept (slot, message_id, off, chunk) "
               "SELECT 0, message_id, off, chunk FROM mail.bodies_0010")
    op.execute("DROP TABLE mail.bodies_0010")
    op.execute("""
        CREATE TABLE mail.body_ring (
            slot smallint PRIMARY KEY,
            for_turn_at timestamptz NOT NULL DEFAULT '-infinity',  -- start of the turn
                                                                  -- it was emptied for
            emptied_at timestamptz
        )
    """)
    op.execute(f"INSERT INTO mail.body_ring (slot) SELECT generate_series(1, {RING})")
    op.execute("CREATE INDEX messages_body_slot ON mail.messages (body_slot) WHERE body_held")
    ring = ", ".join(_ring())
    op.execute("GRANT SELECT, INSERT, DELETE ON mail.bodies, mail.bodies_kept TO mailexec_ingest")
    op.execute(f"GRANT SELECT, INSERT, DELETE, TRUNCATE ON {ring} TO mailexec_ingest")
    op.execute("GRANT SELECT, UPDATE ON mail.body_ring TO mailexec_ingest")
    op.execute("GRANT SELECT ON mail.bodies TO mailexec_executor, mailexec_notifier")


def downgrade() -> None:
    op.execute("""
        CREATE TABLE mail.bodies_0010 (
            message_id uuid NOT NULL,
            off bigint NOT NULL,
            chunk bytea NOT NULL,
            PRIMARY KEY (message_id, off)
        ) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
                autovacuum_vacuum_insert_scale_factor = 0,
                autovacuum_vacuum_insert_threshold = 100000,
                vacuum_truncate = false, autovacuum_vacuum_cost_delay = 0)
    """)
    op.execute("ALTER TABLE mail.bodies_0010 ALTER COLUMN chunk SET STORAGE PLAIN")
    op.execute("""
        INSERT INTO mail.bodies_0010 (message_id, off, chunk)
        SELECT b.message_id, b.off, b.chunk FROM mail.bodies b
        JOIN mail.messages m ON m.id = b.message_id AND m.body_slot = b.slot
        WHERE m.body_held
    """)
    op.execute("DROP TABLE mail.bodies")
    op.execute("DROP TABLE mail.body_ring")
    op.execute("ALTER TABLE mail.bodies_0010 RENAME TO bodies")
    op.execute("ALTER INDEX mail.bodies_0010_pkey RENAME TO bodies_pkey")
    op.execute("DROP INDEX IF EXISTS mail.messages_body_slot")
    op.execute("ALTER TABLE mail.messages DROP COLUMN body_slot")
    op.execute("GRANT SELECT, INSERT, DELETE ON mail.bodies TO mailexec_ingest")
    op.execute("GRANT SELECT ON mail.bodies TO mailexec_executor, mailexec_notifier")
