"""Initial schema: policy, mail and notifier schemas, least-privilege roles.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


UPGRADE = r"""
CREATE SCHEMA IF NOT EXISTS policy;
CREATE SCHEMA IF NOT EXISTS mail;
CREATE SCHEMA IF NOT EXISTS notifier;

CREATE TABLE policy.programs (
    name text PRIMARY KEY,
    sha256 text NOT NULL,
    size integer NOT NULL,
    content bytea NOT NULL,
    interpreter boolean NOT NULL DEFAULT false,
    registered_by text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE policy.settings (
    id integer PRIMARY KEY CHECK (id = 1),
    data jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text
);
INSERT INTO policy.settings (id, data) VALUES (1, '{}'::jsonb);

CREATE TABLE policy.accounts (
    address text PRIMARY KEY,
    owner_name text NOT NULL,
    uid bigint NOT NULL CHECK (uid >= 0),
    gid bigint NOT NULL CHECK (gid >= 0),
    home text NOT NULL,
    shell text NOT NULL,
    program_delivery_enabled boolean NOT NULL DEFAULT false,
    programs text[] NOT NULL DEFAULT '{}',
    mailbox_delivery boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE policy.tokens (
    id uuid PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    role text NOT NULL CHECK (role IN ('admin', 'mta', 'user', 'service')),
    account text,
    label text,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    revoked_at timestamptz,
    last_used_at timestamptz
);
CREATE INDEX tokens_account ON policy.tokens (account);

CREATE TABLE policy.audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    target_kind text NOT NULL,
    target text NOT NULL,
    old jsonb,
    new jsonb
);
CREATE INDEX audit_at ON policy.audit (at);

CREATE TABLE mail.messages (
    id uuid PRIMARY KEY,
    sender text NOT NULL,
    envid text,
    ret text CHECK (ret IN ('FULL', 'HDRS')),
    notify text[] NOT NULL,
    size integer NOT NULL,
    body bytea NOT NULL,
    idempotency_key text UNIQUE,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mail.recipients (
    id uuid PRIMARY KEY,
    message_id uuid NOT NULL REFERENCES mail.messages (id) ON DELETE CASCADE,
    address text NOT NULL,
    orcpt text,
    account text NOT NULL,
    state text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'suspended', 'deferred', 'delivered', 'bounced')),
    attempts integer NOT NULL DEFAULT 0,
    next_program integer NOT NULL DEFAULT 0,
    published boolean NOT NULL DEFAULT false,
    status text,
    diagnostic text,
    delay_notified_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    final_at timestamptz
);
CREATE INDEX recipients_message ON mail.recipients (message_id);
CREATE INDEX recipients_unpublished ON mail.recipients (created_at) WHERE NOT published;
CREATE INDEX recipients_account ON mail.recipients (account);

CREATE TABLE mail.program_runs (
    id bigserial PRIMARY KEY,
    recipient_id uuid NOT NULL REFERENCES mail.recipients (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    program text NOT NULL,
    position integer NOT NULL,
    exit_status integer,
    signal integer,
    timed_out boolean NOT NULL DEFAULT false,
    output_excerpt text NOT NULL DEFAULT '',
    duration_ms integer NOT NULL,
    started_at timestamptz NOT NULL
);
CREATE INDEX program_runs_recipient ON mail.program_runs (recipient_id);

CREATE TABLE notifier.notifications (
    id uuid PRIMARY KEY,
    message_id uuid,
    kind text NOT NULL,
    rcpt text NOT NULL,
    event_ids text[] NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    content bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz
);
CREATE INDEX notifications_pending ON notifier.notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_message ON notifier.notifications (message_id);

CREATE TABLE notifier.seen_events (
    event_id uuid PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
"""

GRANTS = r"""
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['mailexec_policy','mailexec_ingest','mailexec_executor','mailexec_notifier'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    END IF;
  END LOOP;
END $$;

GRANT USAGE ON SCHEMA policy TO mailexec_policy, mailexec_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA policy TO mailexec_policy;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA policy TO mailexec_policy;
GRANT SELECT ON policy.tokens TO mailexec_ingest;
GRANT SELECT ON policy.tokens TO mailexec_notifier;
GRANT USAGE ON SCHEMA policy TO mailexec_notifier;
GRANT SELECT ON mail.recipients TO mailexec_policy;
GRANT USAGE ON SCHEMA mail TO mailexec_policy;

GRANT USAGE ON SCHEMA mail TO mailexec_ingest, mailexec_executor, mailexec_notifier;
GRANT SELECT, INSERT, UPDATE, DELETE ON mail.messages, mail.recipients TO mailexec_ingest;
GRANT SELECT ON mail.program_runs TO mailexec_ingest;
GRANT SELECT ON mail.messages TO mailexec_executor;
GRANT SELECT, UPDATE ON mail.recipients TO mailexec_executor;
GRANT SELECT, INSERT ON mail.program_runs TO mailexec_executor;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA mail TO mailexec_executor;
GRANT SELECT ON mail.messages, mail.recipients TO mailexec_notifier;

GRANT USAGE ON SCHEMA notifier TO mailexec_notifier;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA notifier TO mailexec_notifier;
"""


def _statements(script: str) -> list[str]:
    """Split a script on top-level semicolons (asyncpg runs one statement at a time)."""
    out, buf, in_dollar = [], [], False
    for line in script.splitlines():
        buf.append(line)
        if line.count("$$") % 2:
            in_dollar = not in_dollar
        if not in_dollar and line.rstrip().endswith(";"):
            stmt = "\n".join(buf).strip()
            if stmt.strip(";"):
                out.append(stmt)
            buf = []
    return out


def upgrade() -> None:
    for stmt in _statements(UPGRADE) + _statements(GRANTS):
        op.execute(stmt)


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS notifier CASCADE")
    op.execute("DROP SCHEMA IF EXISTS mail CASCADE")
    op.execute("DROP SCHEMA IF EXISTS policy CASCADE")
