"""Process configuration: every ``MAILEXEC_*`` environment variable, read once.

Use :func:`get_settings`; never read ``os.environ`` elsewhere. Tests change the
environment and call ``get_settings.cache_clear()``.

Every secret (``SECRET_FIELDS``) may instead be given as ``MAILEXEC_<NAME>_FILE``, the
path of a file holding it (SPEC §2); the rule is :mod:`shared.secretfile`'s.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.secretfile import SecretFileError, secret_from_env

# Settings that hold secrets (tokens, URLs that may carry a password): each may be given
# as MAILEXEC_<NAME>_FILE instead.
SECRET_FIELDS = ("admin_token", "ingest_token", "service_token", "database_url", "amqp_url",
                 "smtp_url", "console_secret")
__all__ = ["SECRET_FIELDS", "SecretFileError", "Settings", "get_settings"]


class SecretFiles(PydanticBaseSettingsSource):
    """The ``MAILEXEC_<NAME>_FILE`` forms of ``SECRET_FIELDS`` (ahead of plain variables)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in SECRET_FIELDS:
            var = f"MAILEXEC_{name.upper()}"
            if os.environ.get(f"{var}_FILE"):
                found[name] = secret_from_env(var)
        return found


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILEXEC_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, SecretFiles(settings_cls), env_settings, dotenv_settings,
                file_secret_settings)

    # Connections
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/mailexec"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    policy_url: str = "http://127.0.0.1:8026"
    ingest_url: str = "http://127.0.0.1:8025"
    notifier_url: str = "http://127.0.0.1:8027"
    smtp_url: str = "smtp://127.0.0.1:25"
    # PostgreSQL pools (shared.db): connections of the SQLAlchemy engine (as many again in
    # a burst), of ingest's and the executor's asyncpg pools; seconds to open a
    # connection, to run one statement, to wait for a free pooled connection.
    database_pool_size: int = 10
    ingest_database_pool_size: int = 8
    executor_database_pool_size: int = 4
    database_connect_timeout_s: float = 5.0
    database_command_timeout_s: float = 30.0
    database_acquire_timeout_s: float = 10.0

    # Bootstrap tokens (roles admin, mta, service). Empty means "no such bootstrap token".
    admin_token: str = ""
    ingest_token: str = ""
    service_token: str = ""

    # Listening
    bind_host: str = "127.0.0.1"
    ingest_port: int = 8025
    # ingest HTTP worker processes (each with its own batcher and relay); 1 = one process
    ingest_workers: int = 1
    policy_port: int = 8026
    # LMTP (RFC 2033) in ingest: TCP port (0 = off) and an optional Unix socket for an MTA
    # on the same host. Who may connect without AUTH: clients in the trusted networks and
    # the Unix socket (its mode and group keep account uids out); everyone else only after
    # STARTTLS + AUTH PLAIN (user "mta", an mta token as the password).
    lmtp_port: int = 8024
    lmtp_socket: str = ""
    lmtp_socket_mode: str = "0660"
    lmtp_socket_group: str = ""
    lmtp_trusted_networks: str = "127.0.0.0/8,::1"
    lmtp_tls_cert: str = ""
    lmtp_tls_key: str = ""
    # Connections one ingest process serves at once (more get 421 4.3.2) and how long an
    # idle connection is kept (RFC 5321 §4.5.3.2.7 asks servers for at least 5 minutes).
    lmtp_max_connections: int = 256
    lmtp_idle_timeout_s: float = 300.0
    notifier_port: int = 8027
    executor_metrics_port: int = 8028

    # Console (services/console): the web pages. It holds no token of its own: every page
    # is fetched with the signed-in person's token. The secret keys the encryption of
    # session cookies (any length; `make run` generates one); empty = the console refuses
    # to start. Idle expiry of a session (kept server-side by policy). Cookies are marked
    # Secure when the request came over https ("auto"), always ("always") or never
    # ("never", plain-http development only).
    console_port: int = 8029
    console_secret: str = ""
    console_session_idle_s: int = 1800
    console_cookie_secure: str = "auto"

    # Limits
    max_message_bytes: int = 26214400
    max_program_bytes: int = 64 * 1024 * 1024
    inline_body_bytes: int = 65536
    # Bytes of message bodies one ingest process holds while receiving and storing them
    # (HTTP and LMTP); further messages wait unread, so TCP holds their senders back.
    # A message larger than this is received when nothing else is held.
    ingest_body_memory_bytes: int = 6 * 1024 * 1024

    # Executor
    trusted_dir: str = "/var/lib/mailexec/trusted"
    # The unprivileged service user the executor's Python process drops to once the
    # spawner is started (services/executor/privdrop.py): a passwd name, or uid[:gid].
    # Empty = the passwd entry "mailexec" if there is one, else 10001:10001 (the image's
    # mailexec user). Never an account's uid: the spawner refuses to run programs as it.
    executor_user: str = ""
    executor_concurrency: int = 64
    executor_prefetch: int = 128
    # Bytes of message bodies (those too large to travel inline in the job) one executor
    # holds in memory at once; jobs of further large messages wait. A message larger than
    # this runs when nothing else is held.
    executor_body_memory_bytes: int = 32 * 1024 * 1024
    # Retry delays (comma-separated seconds) shorter than the retry queues' TTLs, set as a
    # per-message expiration; empty = the ladder of shared.topology. For tests and drills.
    executor_retry_delays_s: str = ""
    # How often held (suspended) jobs are re-checked; at most the held queue's 60 s TTL.
    executor_held_recheck_s: float = 60.0
    # How long a starting executor waits for PostgreSQL and RabbitMQ before it gives up with
    # 69 (EX_UNAVAILABLE), so that its supervisor restarts it and says why.
    executor_start_timeout_s: float = 30.0
    sandbox_network: bool = True
    # Programs registered with network "egress" run in one NAT'd namespace per executor
    # (services/executor/egress.py), built at start only when this is on (it switches on
    # IPv4 forwarding in the executor's network namespace – the host's, outside a
    # container – and needs CAP_NET_ADMIN); off, egress programs are deferred (4.x).
    sandbox_egress: bool = False
    # Its /30 is the first free one of this range on the
    # host (RFC 6598 shared space, the top of it: not the internet, rarely a pod or LAN
    # range). Extra destinations it may never reach, comma-separated CIDRs: the
    # cluster's pod and service CIDRs, the node's address (the pod's own addresses,
    # its attached subnets, 127/8 and 169.254/16 are always dropped).
    sandbox_egress_subnet: str = "100.64.255.0/24"
    sandbox_egress_blocked: str = ""
    # cgroup v2 directory under which each executor makes per-run cgroups (cgroup.kill on
    # timeout). Empty = the executor's own cgroup (from /proc/self/cgroup) + "/mailexec";
    # unusable → each run's PID namespace alone ends its processes.
    sandbox_cgroup_root: str = ""
    # Size of each run's private /tmp and /dev/shm (tmpfs; memory, not disk).
    sandbox_tmp_bytes: int = 64 * 1024 * 1024
    # Names this executor on the host: starting it kills the runs that dead executors of
    # the same instance left in their cgroups (never those of a live executor).
    executor_instance: str = Field(default_factory=socket.gethostname)
    # Programs never run as a uid below this (nor 0, nor the executor's service uid, nor
    # the owners of PostgreSQL and RabbitMQ): accounts owned by system users bounce.
    min_uid: int = 1000
    rlimit_cpu_s: int = 60
    rlimit_as_bytes: int = 1024 * 1024 * 1024
    rlimit_nproc: int = 256
    rlimit_fsize_bytes: int = 100 * 1024 * 1024
    rlimit_nofile: int = 256
    tz: str = "UTC"

    # Notifier
    reporting_mta: str = Field(default_factory=socket.getfqdn)
    dsn_max_returned_body_bytes: int = 262144
    dsn_aggregate_window_s: float = 2.0
    postmaster_notice_interval_s: int = 300
    # Outbox retries after a relay failure/4xx: base * 2**(attempt-1), capped at max; after
    # give_up_after_s a still-undeliverable notification is marked failed.
    notifier_retry_base_s: float = 60.0
    notifier_retry_max_s: float = 3600.0
    notifier_give_up_after_s: int = 432000
    notifier_smtp_timeout_s: float = 60.0

    # Retention (services/ingest/retention.py, services/notifier/retention.py): how often
    # each purger runs and how many rows one of its statements touches at most (small
    # batches with SKIP LOCKED: a delivery never waits for a purge).
    retention_interval_s: float = 60.0
    retention_batch: int = 500
    # Test installs only (``make soak``): keep records this many seconds instead of the
    # policy's record_retention_days (1 day at least), so that a run of minutes sees
    # records expire and the database reach its steady size. Unset in production.
    record_retention_s: float | None = None
    # Seconds each of the body table's ring partitions takes the new bodies
    # (shared/bodies.py, services/ingest/bodyring.py): a body still needed when its
    # slot's turn comes round, 2-3 of these after it was stored, is moved to the kept
    # partition; the ring holds at most RING (4) of these of new mail.
    body_slot_s: float = Field(default=10.0, gt=0)

    log_level: str = "info"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
