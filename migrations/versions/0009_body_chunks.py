"""Message bodies in a table of their own, as 8,000-byte rows (issue 17): a large body
costs PostgreSQL a quarter of the rows it cost in TOAST.

Why: 0007 stopped PostgreSQL compressing bodies, but a body in ``mail.messages.body``
still went out of line as TOAST chunks of ~2 KiB — 525 heap tuples and 525 TOAST-index
entries per MiB, each written, WAL-logged, read back, deleted and vacuumed. Measured on
the CI machine (1 MiB, incompressible, one backend, CPU of the backend): insert
4.5 → 2.1 ms, read 1.0 → 1.0, delete 0.7 → 0.4, vacuum 0.6 → 0.5 (``bench/bodystore.py``
repeats it). Large objects were worse than either (2 KiB pages again, 11 ms in all).

- ``mail.bodies (message_id, off, chunk)``: a body is the ``chunk`` rows of its message
  in ``off`` (byte offset) order, each at most :data:`CHUNK` bytes, ``STORAGE PLAIN``
  (never compressed, never TOASTed: a row fits a page). The offset as the key lets a
  reader take only the first *n* bytes (the notifier's returned headers) by
  ``off < n``. No foreign key: its per-row trigger would cost a lookup per chunk;
  every statement that deletes a message or its body deletes the chunks with it.
- ``mail.messages.body_held`` replaces ``body``: true from storing until the body is
  deleted (retention, ``mailexec queue delete``). The purge's partial index follows it.
- Autovacuum of ``mail.bodies`` starts after 10,000 dead rows (~80 MB of deleted
  bodies) whatever the table's size, so deleted bodies' pages are reused instead of
  the table growing between default-scaled passes.

Upgrade copies every stored body into chunks (one statement; run it in a quiet
moment on a big queue); downgrade joins them back.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

CHUNK = 8000  # == services/ingest/repo.BODY_CHUNK (a test checks they agree)


def upgrade() -> None:
    op.execute("""
        CREATE TABLE mail.bodies (
            message_id uuid NOT NULL,
            off bigint NOT NULL,
            chunk bytea NOT NULL,
            PRIMARY KEY (message_id, off)
        ) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
                autovacuum_vacuum_insert_scale_factor = 0,
                autovacuum_vacuum_insert_threshold = 100000)
    """)
    op.execute("ALTER TABLE mail.bodies ALTER COLUMN chunk SET STORAGE PLAIN")
    op.execute("ALTER TABLE mail.messages ADD COLUMN body_held boolean NOT NULL DEFAULT true")
    op.execute(f"""
        INSERT INTO mail.bodies (message_id, off, chunk)
        SELECT m.id, o.off, substring(m.body FROM o.off + 1 FOR {CHUNK})
        FROM mail.messages m,
             generate_series(0, greatest(length(m.body) - 1, 0), {CHUNK}) AS o(off)
        WHERE m.body IS NOT NULL
    """)
    op.execute("UPDATE mail.messages SET body_held = false WHERE body IS NULL")
    op.execute("DROP INDEX IF EXISTS mail.messages_body_held")
    op.execute("ALTER TABLE mail.messages DROP COLUMN body")
    op.execute("CREATE INDEX messages_body_held ON mail.messages (received_at, id) WHERE body_held")
    op.execute("GRANT SELECT, INSERT, DELETE ON mail.bodies TO mailexec_ingest")
    op.execute("GRANT SELECT ON mail.bodies TO mailexec_executor, mailexec_notifier")


def downgrade() -> None:
    op.execute("ALTER TABLE mail.messages ADD COLUMN body bytea")
    op.execute("ALTER TABLE mail.messages ALTER COLUMN body SET STORAGE EXTERNAL")
    op.execute("""
        UPDATE mail.messages m SET body = b.body
        FROM (SELECT message_id, string_agg(chunk, ''::bytea ORDER BY off) AS body
              FROM mail.bodies GROUP BY message_id) b
        WHERE b.message_id = m.id AND m.body_held
    """)
    op.execute("DROP INDEX IF EXISTS mail.messages_body_held")
    op.execute("ALTER TABLE mail.messages DROP COLUMN body_held")
    op.execute("CREATE INDEX messages_body_held ON mail.messages (received_at, id) "
               "WHERE body IS NOT NULL")
    op.execute("DROP TABLE mail.bodies")
