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

Metrics with several workers: the supervisor makes a private directory
(``mailexec-ingest-metrics-<pid>-*`` under ``$TMPDIR``), sets ``PROMETHEUS_MULTIPROC_DIR``
to it before the first fork, and removes it on exit (and, at start, the directories of
supervisors that died without removing theirs); every worker writes its metrics there and
answers ``/metrics`` with the sum over all workers (``shared.metrics``), so counters don't
appear to reset when a scrape reaches another worker; a dead worker's live gauges are
dropped (``mark_process_dead``), its counters kept.

Exit statuses are ``shared.service``'s, with several workers too: when every worker fails
at start-up in a row, the supervisor stops and exits with the status they gave (71: a
port is in use, 78: bad settings …); a worker that dies later is started again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.service import StartupError, cannot_listen, listen, run_service, serve_http
from shared.settings import Settings
from shared.sysexits import EX_OK, EX_OSERR

log = logging.getLogger("mailexec.ingest")

RESPAWN_PAUSE_S = 1.0
PORT_SETTING = "MAILEXEC_INGEST_PORT"


def _serve(settings: Settings, http: socket.socket | None = None,
           lmtp: socket.socket | None = None) -> int:
    """One process's HTTP server (and LMTP, started by the app's lifespan)."""
    from .app import build_app  # in the worker: the supervisor forks before the app exists

    return serve_http(
        "ingest", build_app(settings, lmtp), host=settings.bind_host, port=settings.ingest_port,
        setting=PORT_SETTING, sockets=None if http is None else [http],
        backlog=2048, timeout_keep_alive=30, server_header=False,
    )


def _main(settings: Settings) -> int:
    if settings.ingest_workers > 1:
        return _supervise(settings)
    return _serve(settings)


def run() -> int:
    return run_service("ingest", _main)


def _worker(settings: Settings, http: socket.socket, lmtp: socket.socket | None) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    return run_service("ingest", lambda s: _serve(s, http, lmtp))


def _check_lmtp_port_free(settings: Settings) -> None:
    """Nobody listens on the LMTP port: bind it once without SO_REUSEPORT, then let go."""
    family = socket.AF_INET6 if ":" in settings.bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no holder
        try:
            probe.bind((settings.bind_host, settings.lmtp_port))
        except OSError as exc:
            raise StartupError(
                "LMTP " + cannot_listen(settings.bind_host, settings.lmtp_port,
                                        "MAILEXEC_LMTP_PORT", exc), EX_OSERR) from exc


METRICS_DIR_PREFIX = "mailexec-ingest-metrics-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _metrics_dir() -> str:
    """A fresh private directory for the workers' metrics, in ``PROMETHEUS_MULTIPROC_DIR``
    before any metric exists (prometheus_client chooses its value class then)."""
    from shared.metrics import MULTIPROC_ENV

    base = Path(tempfile.gettempdir())
    for old in base.glob(METRICS_DIR_PREFIX + "*"):
        pid = old.name.removeprefix(METRICS_DIR_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and old.stat().st_uid == os.getuid():
            shutil.rmtree(old, ignore_errors=True)  # left by a supervisor killed with -9
    path = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    os.environ[MULTIPROC_ENV] = path
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported already (not by `mailexec serve`): choose again
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path


def _forget_worker(metrics_dir: str, pid: int) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


def _supervise(settings: Settings) -> int:
    if settings.lmtp_port:
        _check_lmtp_port_free(settings)
    metrics_dir = _metrics_dir()
    try:
        return _supervise_workers(settings, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise_workers(settings: Settings, metrics_dir: str) -> int:
    from .lmtp import bind_unix_socket

    http = listen(settings.bind_host, settings.ingest_port, PORT_SETTING)
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

    def stop_all() -> None:
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        stop_all()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    for _ in range(settings.ingest_workers):
        spawn()
    log.info("ingest workers started", extra={"workers": settings.ingest_workers,
                                              "pids": sorted(children)})
    status = EX_OK
    failed_at_start = 0  # workers in a row that died in their first RESPAWN_PAUSE_S
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        started = children.pop(pid, None)
        if started is None:
            continue
        code = os.waitstatus_to_exitcode(wait_status)
        _forget_worker(metrics_dir, pid)
        if stopping:
            continue
        if time.monotonic() - started < RESPAWN_PAUSE_S and code > 0:
            failed_at_start += 1
            if failed_at_start >= settings.ingest_workers:
                # every worker fails at start-up: configuration, not bad luck
                log.critical("ingest workers fail at start-up; stopping",
                             extra={"pid": pid, "exit_status": code})
                status, stopping = code, True
                stop_all()
                continue
            log.error("ingest worker failed at start-up; starting another",
                      extra={"pid": pid, "exit_status": code})
            time.sleep(RESPAWN_PAUSE_S)
        else:
            failed_at_start = 0
            log.error("ingest worker died; starting another", extra={"pid": pid, "exit": code})
        spawn()
    if lmtp is not None:
        try:
            os.unlink(settings.lmtp_socket)
        except OSError:
            pass
    return status
