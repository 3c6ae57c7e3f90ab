"""SQLAlchemy Core tables of schema ``policy`` (created by the migrations; never here)."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData(schema="policy")

programs = Table(
    "programs",
    metadata,
    Column("name", Text, primary_key=True),
    Column("sha256", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("interpreter", Boolean, nullable=False),
    Column("registered_by", Text, nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("description", Text),  # migration 0003
    Column("network", Text, nullable=False, server_default="none"),  # 'none' | 'egress'
)

settings = Table(
    "settings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("data", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", Text),
)

accounts = Table(
    "accounts",
    metadata,
    Column("address", Text, primary_key=True),
    Column("owner_name", Text, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("gid", BigInteger, nullable=False),
    Column("home", Text, nullable=False),
    Column("shell", Text, nullable=False),
    Column("program_delivery_enabled", Boolean, nullable=False),
    Column("programs", ARRAY(Text), nullable=False),
    Column("mailbox_delivery", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("token_hash", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("account", Text),
    Column("label", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", Text, nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)

audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target_kind", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("old", JSONB),
    Column("new", JSONB),
)

# migration 0004: console sign-ins (routes/sessions.py); only hashes, never a clear secret
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", Text, primary_key=True),
    Column("token_hash", Text, nullable=False),
    Column("principal", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("idle_timeout_s", Integer, nullable=False),
    Column("ended_at", DateTime(timezone=True)),
)
