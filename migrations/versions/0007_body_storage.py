"""Message bodies cost their bytes (issue 17): no compression on the way into TOAST, and
a body may be gone while its records stay.

- ``mail.messages.body`` ``SET STORAGE EXTERNAL``: a body over the TOAST threshold
  (~2 KiB) goes out of line *uncompressed*. With the default (``EXTENDED``) PostgreSQL
  ran pglz over every large body on its way in — ~20 ms of CPU per 1 MiB, most of a
  large delivery's database cost — to save a quarter of base64 attachments and nothing
  of already compressed ones. Uncompressed out-of-line values also let
  ``substring(body FROM 1 FOR n)`` (the notifier's returned content) read only the
  chunks it needs. Applies to rows written from now on; existing rows stay as stored.
  A catalogue-only change: no rewrite, no lock beyond a moment's ACCESS EXCLUSIVE.
- ``body`` may be NULL: the body is deleted once nobody needs it any more (retention,
  ``mailexec queue delete``), the envelope and outcomes stay for the record period.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE mail.messages ALTER COLUMN body SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE mail.messages ALTER COLUMN body DROP NOT NULL")


def downgrade() -> None:
    # bodies deleted meanwhile can't come back: keep their rows valid with an empty body
    op.execute("UPDATE mail.messages SET body = ''::bytea WHERE body IS NULL")
    op.execute("ALTER TABLE mail.messages ALTER COLUMN body SET NOT NULL")
    op.execute("ALTER TABLE mail.messages ALTER COLUMN body SET STORAGE EXTENDED")
