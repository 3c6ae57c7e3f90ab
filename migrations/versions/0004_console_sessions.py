"""Console sessions (issue 15): the server-side record that makes signing out real.

``policy.console_sessions``: one row per console sign-in, written and read only by
policy (``POST/GET/DELETE /v1/sessions``). The console keeps the session id in its
encrypted cookie; policy keeps only its SHA-256, the SHA-256 of the bearer token the
session was created with (a session answers only to that token), who signed in, and
the idle expiry. A cookie captured before sign-out (``ended_at`` set) or after the idle
timeout finds no live session: 404.

- No clear secret is stored: ``id_hash`` and ``token_hash`` are SHA-256 hex.
- ``idle_timeout_s`` is bounded (60 s .. 1 day) by the API and by a CHECK.
- ``console_sessions_last_seen`` serves the opportunistic clean-up of rows ended or
  idle-expired more than a day ago (every such row was last seen more than a day ago,
  because the idle timeout is at most a day and a session is not seen once ended).
- Grants: only ``mailexec_policy`` may touch the table (the console reaches it through
  policy's API, never the database).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-12
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE policy.console_sessions (
            id_hash text PRIMARY KEY,
            token_hash text NOT NULL,
            principal text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            last_seen_at timestamptz NOT NULL DEFAULT now(),
            idle_timeout_s integer NOT NULL
                CONSTRAINT console_sessions_idle_check
                CHECK (idle_timeout_s BETWEEN 60 AND 86400),
            ended_at timestamptz
        )
        """
    )
    op.execute(
        "CREATE INDEX console_sessions_last_seen ON policy.console_sessions (last_seen_at)"
    )
    # one token's live sessions, newest first: the cap on sessions per token
    op.execute(
        "CREATE INDEX console_sessions_token ON policy.console_sessions "
        "(token_hash, last_seen_at DESC) WHERE ended_at IS NULL"
    )
    op.execute(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON policy.console_sessions TO mailexec_policy"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS policy.console_sessions")
