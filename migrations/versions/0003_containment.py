"""Containment (issue 13): per-program network and description, idempotency keys bound to content.

- ``policy.programs.description``: shown to users choosing among trusted programs
  (``PATCH /v1/programs/{name}``); NULL when the admin gave none.
- ``policy.programs.network``: ``none`` (default: the shared empty network
  namespace) or ``egress`` (the NAT'd namespace with the control plane dropped).
  Every program registered before this revision gets ``none``: programs that had
  network through a deployment with ``MAILEXEC_SANDBOX_NETWORK=false`` lose it until
  the admin grants ``egress`` (UPGRADING.md says so).
- ``mail.messages.idempotency_hash``: SHA-256 of the envelope and body the
  ``Idempotency-Key`` was first used with; the same key with another message gets
  409 instead of silently answering with the first message's id. NULL for rows
  stored before this revision (those keys keep answering as before).

Adding a column with a constant default rewrites nothing (PostgreSQL >= 11).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE policy.programs ADD COLUMN description text")
    op.execute(
        "ALTER TABLE policy.programs ADD COLUMN network text NOT NULL DEFAULT 'none' "
        "CONSTRAINT programs_network_check CHECK (network IN ('none', 'egress'))"
    )
    op.execute("ALTER TABLE mail.messages ADD COLUMN idempotency_hash text")


def downgrade() -> None:
    op.execute("ALTER TABLE mail.messages DROP COLUMN idempotency_hash")
    op.execute("ALTER TABLE policy.programs DROP COLUMN network")
    op.execute("ALTER TABLE policy.programs DROP COLUMN description")
