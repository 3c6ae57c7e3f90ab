"""Indexes for the console's reads of schema ``mail`` (issue 15): ingest's message
listing (``GET /v1/messages``, newest first, by sender) and its dashboard numbers
(``GET /v1/status``).

- ``messages_received``: the listing walks messages newest first and stops at its page
  size, instead of sorting the whole table; also "received in the last hour".
- ``messages_sender``: ``sender=`` (exact match on the canonical envelope sender).
- ``recipients_waiting``: only the recipients not yet final (a small set on a healthy
  system): the per-state counts and the oldest waiting recipient read it alone.
- ``recipients_final``: "delivered / bounced in the last hour" by ``final_at``.
- ``recipients_bounced``: the latest bounces without walking every delivery.

Built ``CONCURRENTLY`` (outside a transaction), so ingest keeps accepting mail while a
large ``mail.messages`` is indexed; ``IF NOT EXISTS`` makes an interrupted upgrade
re-runnable (an index left INVALID by an interruption must be dropped by hand first —
``\\d mail.messages`` shows it). The grants stay as they are: ingest already reads
``mail.messages``, ``mail.recipients`` and ``mail.program_runs`` (0001).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-12
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FINAL = "('delivered', 'bounced')"

INDEXES = {
    "mail.messages_received": "mail.messages (received_at DESC, id DESC)",
    "mail.messages_sender": "mail.messages (sender, received_at DESC, id DESC)",
    "mail.recipients_waiting": f"mail.recipients (created_at, state) WHERE state NOT IN {FINAL}",
    "mail.recipients_final": "mail.recipients (final_at) WHERE final_at IS NOT NULL",
    "mail.recipients_bounced": "mail.recipients (final_at DESC) WHERE state = 'bounced'",
}


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, target in INDEXES.items():
            op.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name.split('.', 1)[1]} ON {target}"
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in reversed(INDEXES):
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
