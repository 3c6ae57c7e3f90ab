"""`mailexec serve executor`: the only mailexec process that starts as root.

What it does
    Before consuming anything (like Postfix pipe(8)'s ``get_service_attr()``), it
    refuses to start – exit status 77 (not root) or 78 (unsafe configuration), with a
    clear message – unless: it runs as root; the trusted directory is root's or the
    service user's and its parents root's, none writable by others (``ProgramStore``);
    the sandbox can be built as configured (spawner, namespaces, cgroups:
    ``Sandbox.start``, with the egress namespace of ``egress.py`` when
    ``MAILEXEC_SANDBOX_EGRESS`` is on); and its own settings are sane (service token set, concurrency
    and limits positive). Then it logs ONE line naming the isolation layers that are
    active, drops for good to its service user with no capabilities left
    (``privdrop.py``: before any connection is made; it refuses to go on if anything
    is left), binds ``executor_metrics_port`` (71 if it is taken), connects to
    PostgreSQL and RabbitMQ (69 if either can't be reached), serves /healthz, /readyz and
    /metrics there and consumes ``deliveries`` (prefetch
    ``executor_prefetch``, ``executor_concurrency`` jobs at once), ``deliveries.dead``
    and an exclusive auto-delete queue on ``policy.changed`` – all on one uvloop.
    SIGTERM: no new jobs, the running ones finish (``SHUTDOWN_GRACE_S``), exit 0. The
    statuses are ``shared.service``'s, as for every service.

What it guarantees
    Broker and database outages are survived without losing a job: the AMQP
    connection is aio-pika's robust one (reconnects, restores queues and consumers),
    database errors defer the job (see ``worker.py``).

Settings
    Everything under "Executor" in ``shared.settings`` (``executor_user`` included) plus
    ``database_url``,
    ``amqp_url``, ``policy_url``, ``service_token``, ``executor_metrics_port``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any

from services.executor import egress
from services.executor.chain import Deps
from services.executor.dead import DeadLetters
from services.executor.errors import SandboxUnavailable
from services.executor.privdrop import (
    ServiceUser,
    drop_to_service_user,
    forbidden_uids,
    resolve_service_user,
)
from services.executor.programs import ProgramStore
from services.executor.publishing import Publisher
from services.executor.repo import Repo
from services.executor.sandbox import Sandbox
from services.executor.worker import Worker
from shared import topology
from shared.amqp import Broker, cancel_consumer
from shared.httpapp import create_app
from shared.policy_client import PolicyClient
from shared.service import http_server, listen, refuse, run_service
from shared.settings import Settings
from shared.sysexits import EX_CONFIG, EX_NOPERM, EX_OK, EX_UNAVAILABLE

log = logging.getLogger("mailexec.executor")

SHUTDOWN_GRACE_S = 10.0


class UnsafeConfig(Exception):
    pass


def check_settings(s: Settings) -> None:
    problems = []
    if not s.service_token:
        problems.append("MAILEXEC_SERVICE_TOKEN is empty: the executor can't read policy")
    if s.executor_concurrency < 1 or s.executor_prefetch < 1:
        problems.append("executor_concurrency and executor_prefetch must be >= 1")
    for name in ("rlimit_cpu_s", "rlimit_as_bytes", "rlimit_nproc", "rlimit_fsize_bytes", "rlimit_nofile"):
        if getattr(s, name) < 1:
            problems.append(f"{name} must be >= 1")
    if not os.path.isabs(s.trusted_dir):
        problems.append(f"trusted_dir {s.trusted_dir!r} is not an absolute path")
    if problems:
        raise UnsafeConfig("; ".join(problems))


def prepare(s: Settings, service_user: ServiceUser | None = None) -> tuple[ProgramStore, Sandbox]:
    """The privileged set-up; raises UnsafeConfig/SandboxUnavailable to refuse to start.

    With ``service_user``: the store accepts a trusted dir that user owns, and the
    spawner never runs programs as it nor as the database's or broker's owners."""
    check_settings(s)
    store = ProgramStore(s.trusted_dir, owner_uid=service_user.uid if service_user else 0)
    forbidden = forbidden_uids(service_user.uid) if service_user else ()
    try:
        # before the drop: the veth, NAT and nftables of network=egress runs need root
        sandbox = Sandbox.start(s, forbidden_uids=forbidden, egress=egress.maybe_create(s))
    except BaseException:
        store.close()
        raise
    return store, sandbox


def _refuse(message: str, code: int) -> int:
    return refuse("executor", message, code)


def run() -> int:
    return run_service("executor", _run)


def _run(settings: Settings) -> int:
    if os.geteuid() != 0:
        return _refuse("it must run as root (it drops to each account's uid to run programs)",
                       EX_NOPERM)
    try:
        service_user = resolve_service_user(settings.executor_user)
        store, sandbox = prepare(settings, service_user)
    except (UnsafeConfig, SandboxUnavailable) as exc:
        return _refuse(str(exc), EX_CONFIG)
    layers = {k: v for k, v in sandbox.isolation.items() if k != "cgroup_dir"}
    active = ", ".join(k for k, v in layers.items() if v) or "none"
    inactive = ", ".join(k for k, v in layers.items() if not v) or "none"
    log.info("sandbox ready: active isolation layers: %s; not active: %s", active, inactive,
             extra={"isolation": sandbox.isolation, "trusted_dir": settings.trusted_dir})
    try:
        # last privileged step: from here on only the spawner holds any privilege
        dropped = drop_to_service_user(
            service_user, trusted_dir_fd=store.dir_fd, trusted_dir=str(store.dir),
            cgroup_dir=sandbox.isolation.get("cgroup_dir"))  # type: ignore[arg-type]
    except SandboxUnavailable as exc:
        sandbox.close()
        store.close()
        return _refuse(str(exc), EX_CONFIG)
    log.info("privileges dropped for good: running as %s, no capabilities", service_user,
             extra={**dropped, "forbidden_uids": sorted(sandbox.forbidden_uids)})
    import uvloop

    try:
        return uvloop.run(serve(settings, store, sandbox))
    finally:
        sandbox.close()
        store.close()


async def serve(settings: Settings, store: ProgramStore, sandbox: Sandbox) -> int:
    """Exit status: 0 after a clean stop; 69 or 71 refusing to start (``shared.service``)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # bound before anything is consumed: a taken port refuses the start (StartupError, 71)
    http_socket = listen(settings.bind_host, settings.executor_metrics_port,
                         "MAILEXEC_EXECUTOR_METRICS_PORT")

    repo = Repo(settings.database_url, body_memory_bytes=settings.executor_body_memory_bytes)
    broker = Broker(settings.amqp_url)
    policy = PolicyClient(settings.policy_url, settings.service_token)
    try:
        await repo.start(timeout=settings.executor_start_timeout_s)
        await broker.connect(declare=True, timeout=settings.executor_start_timeout_s)
    except Exception as exc:
        http_socket.close()
        await policy.close()
        await repo.close()
        return _refuse(f"cannot reach the database or the broker: {exc}", EX_UNAVAILABLE)
    publisher = Publisher(broker, settings)
    worker = Worker(Deps(policy=policy, store=store, sandbox=sandbox, settings=settings), repo,
                    publisher, settings.executor_concurrency)
    dead = DeadLetters(repo, publisher)

    async def ready() -> dict[str, bool]:
        return {"database": await repo.ping(), "broker": broker.ready}

    app = create_app(title="mailexec executor", routers=[], ready_check=ready)
    server = http_server(app, own_signals=False,  # the executor owns SIGTERM/SIGINT
                         host=settings.bind_host, port=settings.executor_metrics_port,
                         lifespan="off")
    http_task = loop.create_task(server.serve(sockets=[http_socket]), name="metrics-http")

    def on_policy_changed(body: dict[str, Any]) -> None:
        what = body.get("what")
        policy.invalidate(what, body.get("key"))
        if body.get("suspended") is False and (what == "settings" or worker.held_since_drain):
            loop.create_task(worker.release_held())

    jobs_ch = await broker.new_channel(prefetch=settings.executor_prefetch)
    jobs_q = await jobs_ch.declare_queue(topology.DELIVERIES_QUEUE, passive=True)
    dead_ch = await broker.new_channel(prefetch=4)
    dead_q = await dead_ch.declare_queue(topology.DELIVERIES_DEAD, passive=True)
    await broker.on_policy_changed("executor", on_policy_changed)
    await dead_q.consume(dead.on_message)
    jobs_tag = await jobs_q.consume(worker.on_message)
    # A resume that happened while no executor was running: held jobs would wait 60 s.
    loop.create_task(worker.release_held())
    log.info("executor consuming", extra={"concurrency": settings.executor_concurrency,
                                          "prefetch": settings.executor_prefetch})

    await stop.wait()
    log.info("executor stopping: no new jobs; waiting for the ones running")
    await cancel_consumer(jobs_q, jobs_tag)
    await worker.drain(SHUTDOWN_GRACE_S)
    server.should_exit = True
    await asyncio.gather(http_task, return_exceptions=True)
    await broker.close()
    await repo.close()
    await policy.close()
    return EX_OK


def self_check() -> int:
    """`mailexec serve executor --self-check`: the start-up checks and one sandboxed run."""
    return run_service("executor", _self_check)


def _self_check(settings: Settings) -> int:
    if os.geteuid() != 0:
        return _refuse("it must run as root", EX_NOPERM)
    try:  # the same checks as a real start: the service user may own the trusted dir
        store, sandbox = prepare(settings, resolve_service_user(settings.executor_user))
    except (UnsafeConfig, SandboxUnavailable) as exc:
        return _refuse(str(exc), EX_CONFIG)
    report: dict[str, Any] = {"isolation": sandbox.isolation, "trusted_dir": settings.trusted_dir}
    try:
        from services.executor import sandbox as sandbox_mod

        check = getattr(sandbox_mod, "self_check", None)
        if check is not None:
            report["self_check"] = check(settings)
    finally:
        sandbox.close()
        store.close()
    print(json.dumps(report, indent=2, default=str))
    # The sandbox's own verdict: privilege drop and no_new_privs are required; cgroup kill
    # and network namespaces are optional layers (containers often lack them).
    ok = bool((report.get("self_check") or {}).get("ok", False))
    return 0 if ok else 1
