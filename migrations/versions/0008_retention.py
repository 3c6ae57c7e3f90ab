"""Retention (issue 17): bodies deleted once nobody needs them, records after
``record_retention_days``, the notifier's content once sent (docs/admin-guide.md "What
is kept, where, and for how long").

- ``mail.recipients.notifier_pending`` (text[], NULL = nothing pending): the kinds of
  notification (``bounce``, ``delayed``, ``delivered``, ``admin_notice``) announced for
  this recipient that the notifier has not handled yet, each of which reads the
  message's body. Set in the transaction that records the outcome (executor, ingest's
  ``delete --bounce``) by the rule of ``shared/notify.py``; cleared by the notifier in
  the transaction that stores what it rendered. A body is deleted only when every
  recipient is final and none has anything pending, so a DSN's returned content is
  never lost to a purge that runs between the two.
- ``mail.messages.discarded_at``: set by ``mailexec queue delete`` when it leaves no
  recipient to deliver; such a body goes even though a dead letter could otherwise be
  requeued (dead letters keep their message's body until then).
- ``notifier.notifications.content`` may be NULL (deleted once the notification is
  final: sent, or failed for good); ``reported`` keeps the lower-cased
  ``Final-Recipient`` addresses of a DSN, which is what a user's visibility and the
  once-per-window delay warnings read (they parsed the content before). NULL in rows
  written before this revision: those are parsed once more when their content goes.
- Partial indexes for the purges (each batch walks an index, never the table):
  bodies still held by arrival, queue actions not bound to a message by time,
  notifications with content and final notifications by age, ``seen_events`` by age.
  Built ``CONCURRENTLY`` like 0005, so mail keeps flowing while they build.
- Grants, least privilege: the notifier may update that one column of
  ``mail.recipients``; ingest may delete the queue actions it purges (it already
  deletes messages, which cascades to recipients and program runs).

Adding nullable columns and dropping NOT NULL rewrite nothing.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = [
    "ALTER TABLE mail.recipients ADD COLUMN notifier_pending text[]",
    "ALTER TABLE mail.messages ADD COLUMN discarded_at timestamptz",
    "ALTER TABLE notifier.notifications ALTER COLUMN content DROP NOT NULL",
    "ALTER TABLE notifier.notifications ADD COLUMN reported text[]",
    "GRANT UPDATE (notifier_pending) ON mail.recipients TO mailexec_notifier",
    "GRANT DELETE ON mail.queue_actions TO mailexec_ingest",
]

INDEXES = {
    "mail.messages_body_held": "mail.messages (received_at, id) WHERE body IS NOT NULL",
    "mail.queue_actions_unbound": "mail.queue_actions (at) WHERE message_id IS NULL",
    "notifier.notifications_content_held":
        "notifier.notifications (created_at) WHERE content IS NOT NULL AND state <> 'pending'",
    "notifier.notifications_final": "notifier.notifications (created_at) WHERE state <> 'pending'",
    "notifier.seen_events_at": "notifier.seen_events (at)",
}


def upgrade() -> None:
    for stmt in COLUMNS:
        op.execute(stmt)
    with op.get_context().autocommit_block():
        for name, target in INDEXES.items():
            op.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name.split('.', 1)[1]} ON {target}"
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in reversed(INDEXES):
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    op.execute("REVOKE DELETE ON mail.queue_actions FROM mailexec_ingest")
    op.execute("REVOKE UPDATE (notifier_pending) ON mail.recipients FROM mailexec_notifier")
    op.execute("ALTER TABLE notifier.notifications DROP COLUMN reported")
    # content deleted meanwhile can't come back: keep those rows valid with an empty one
    op.execute("UPDATE notifier.notifications SET content = ''::bytea WHERE content IS NULL")
    op.execute("ALTER TABLE notifier.notifications ALTER COLUMN content SET NOT NULL")
    op.execute("ALTER TABLE mail.messages DROP COLUMN discarded_at")
    op.execute("ALTER TABLE mail.recipients DROP COLUMN notifier_pending")
