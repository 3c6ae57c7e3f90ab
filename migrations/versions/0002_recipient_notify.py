"""RFC 3461 NOTIFY per recipient: LMTP (like SMTP) carries NOTIFY on each RCPT.

``mail.recipients.notify`` is NULL when the recipient asked for what the message's
``notify`` says (every HTTP submission, whose ``notify=`` applies to all its recipients,
and every row stored before this revision); readers take ``coalesce(r.notify, m.notify)``.
Adding a nullable column without a default rewrites nothing, so the upgrade is instant
on a large table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE mail.recipients ADD COLUMN notify text[]")


def downgrade() -> None:
    op.execute("ALTER TABLE mail.recipients DROP COLUMN notify")
