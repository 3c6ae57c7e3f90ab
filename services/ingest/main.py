"""`mailexec serve ingest`: HTTP (uvicorn: uvloop + httptools, no access log) and LMTP.

``MAILEXEC_INGEST_WORKERS`` > 1 runs that many worker processes: the outbox is safe
across processes (unique Idempotency-Key index, relay with ``FOR UPDATE SKIP LOCKED``),
so a multi-core box can spend more than one core on parsing. The supervisor here binds
the HTTP port and the LMTP Unix socket once, forks the workers (they inherit both), and
starts a worker again when one dies; each worker binds the LMTP TCP port itself with
``SO_REUSEPORT``, so the kernel spreads MTA connections over them. Before that the
supervisor binds the port once *without* it: another process listening there (a second
ingest of the same uid would otherwise silently share the port and its connections) makes
it refuse to start. It replaces uvicorn's own supervisor, which can hand its workers only
the sockets it serves HTTP on.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from shared.logging import configure
from shared.settings import Settings, get_settings

log = logging.getLogger("mailexec.ingest")

RESPAWN_PAUSE_S = 1.0


def worker_app(lmtp_socket: socket.socket | None = None) -> FastAPI:
    """The app one process serves (logging is per process)."""
    settings = get_settings()
    configure(settings.log_level, service="ingest")
    from .app import build_app

    return build_app(settings, lmtp_socket)


def _options(settings: Settings) -> dict[str, Any]:
    return dict(
        host=settings.bind_host,
        port=settings.ingest_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        lifespan="on",
        backlog=2048,
        timeout_keep_alive=30,
        server_header=False,
    )


def run() -> int:
    settings = get_settings()
    configure(settings.log_level, service="ingest")
    if settings.ingest_workers > 1:
        return _supervise(settings)
    server = uvicorn.Server(uvicorn.Config(worker_app(), **_options(settings)))
    server.run()
    return 0 if server.started else 1


def _worker(settings: Settings, http: socket.socket, lmtp: socket.socket | None) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    server = uvicorn.Server(uvicorn.Config(worker_app(lmtp), **_options(settings)))
    server.run(sockets=[http])
    return 0 if server.started else 1


def _lmtp_port_free(settings: Settings) -> bool:
    """Nobody listens on the LMTP port: bind it once without SO_REUSEPORT, then let go."""
    family = socket.AF_INET6 if ":" in settings.bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no holder
        try:
            probe.bind((settings.bind_host, settings.lmtp_port))
        except OSError as exc:
            log.error(
                "cannot listen for LMTP: %s:%d is in use (%s); stop the other process or set "
                "MAILEXEC_LMTP_PORT", settings.bind_host, settings.lmtp_port, exc.strerror,
                extra={"port": settings.lmtp_port})
            return False
    return True


def _supervise(settings: Settings) -> int:
    from .lmtp import bind_unix_socket

    if settings.lmtp_port and not _lmtp_port_free(settings):
        return 1
    http = uvicorn.Config(worker_app, factory=True, **_options(settings)).bind_socket()
    lmtp = None
    if settings.lmtp_socket:
        lmtp = bind_unix_socket(settings.lmtp_socket, settings.lmtp_socket_mode,
                                settings.lmtp_socket_group)
    children: dict[int, float] = {}  # pid → start time
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker(settings, http, lmtp)
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    for _ in range(settings.ingest_workers):
        spawn()
    log.info("ingest workers started", extra={"workers": settings.ingest_workers,
                                              "pids": sorted(children)})
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        started = children.pop(pid, None)
        if started is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        log.error("ingest worker died; starting another", extra={"pid": pid, "exit": code})
        if time.monotonic() - started < RESPAWN_PAUSE_S:
            if code == 1 and not children:
                failed = True  # every worker fails at start-up: configuration, not bad luck
                break
            time.sleep(RESPAWN_PAUSE_S)
        spawn()
    if lmtp is not None:
        try:
            os.unlink(settings.lmtp_socket)
        except OSError:
            pass
    return 1 if failed else 0
