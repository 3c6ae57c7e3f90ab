"""Queue control (issue 16): hold, release, retry-now, delete and dead-letter requeue.

- ``mail.recipients.generation``: bumped by every operator action on the recipient.
  A job carries the generation it was published with (absent = 0) and the executor
  claims it only while the row still has that generation, so copies already waiting
  in a retry or held queue (which RabbitMQ can't take back) are dropped as stale.
  ``NOT NULL DEFAULT 0`` is a catalogue-only change since PostgreSQL 11: no rewrite.
- ``mail.recipients.dead_lettered_at``: set by the executor's dead-letter handler
  (``deliveries.dead``) when it finalises a recipient; ``mailexec queue dead`` lists
  these rows (the queue itself is drained at once by the executor).
- two states: ``on_hold`` (SPEC §2: put on hold by an operator, never tried until
  released) and ``deleted`` (final: removed from the queue by an operator without a DSN).
- ``mail.queue_actions``: ingest's audit of operator actions on the queue (who, what,
  when, which message and recipients), and the outbox of the bounce events a
  ``delete --bounce`` owes the sender (``events_pending``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STATES_OLD = "('queued', 'running', 'suspended', 'deferred', 'delivered', 'bounced')"
STATES_NEW = ("('queued', 'running', 'suspended', 'deferred', 'on_hold', 'delivered', "
              "'bounced', 'deleted')")

UPGRADE = [
    "ALTER TABLE mail.recipients ADD COLUMN generation integer NOT NULL DEFAULT 0",
    "ALTER TABLE mail.recipients ADD COLUMN dead_lettered_at timestamptz",
    "ALTER TABLE mail.recipients DROP CONSTRAINT IF EXISTS recipients_state_check",
    f"ALTER TABLE mail.recipients ADD CONSTRAINT recipients_state_check "
    f"CHECK (state IN {STATES_NEW}) NOT VALID",
    "ALTER TABLE mail.recipients VALIDATE CONSTRAINT recipients_state_check",
    "CREATE INDEX recipients_dead ON mail.recipients (dead_lettered_at DESC) "
    "WHERE dead_lettered_at IS NOT NULL",
    """CREATE TABLE mail.queue_actions (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        actor text NOT NULL,
        action text NOT NULL,
        message_id uuid,
        recipients text[] NOT NULL DEFAULT '{}',
        detail jsonb NOT NULL DEFAULT '{}',
        events jsonb,
        events_pending boolean NOT NULL DEFAULT false
    )""",
    "CREATE INDEX queue_actions_message ON mail.queue_actions (message_id)",
    "CREATE INDEX queue_actions_pending ON mail.queue_actions (at) WHERE events_pending",
    "GRANT SELECT, INSERT, UPDATE ON mail.queue_actions TO mailexec_ingest",
    "GRANT USAGE, SELECT ON SEQUENCE mail.queue_actions_id_seq TO mailexec_ingest",
]


def upgrade() -> None:
    for stmt in UPGRADE:
        op.execute(stmt)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS mail.queue_actions")
    op.execute("UPDATE mail.recipients SET state = 'queued' WHERE state = 'on_hold'")
    op.execute("UPDATE mail.recipients SET state = 'bounced' WHERE state = 'deleted'")
    op.execute("ALTER TABLE mail.recipients DROP CONSTRAINT IF EXISTS recipients_state_check")
    op.execute(f"ALTER TABLE mail.recipients ADD CONSTRAINT recipients_state_check "
               f"CHECK (state IN {STATES_OLD})")
    op.execute("DROP INDEX IF EXISTS mail.recipients_dead")
    op.execute("ALTER TABLE mail.recipients DROP COLUMN dead_lettered_at")
    op.execute("ALTER TABLE mail.recipients DROP COLUMN generation")
