"""How every ``mailexec serve X`` starts, serves HTTP and says why it stopped.

``run_service(name, main)`` reads the settings, configures the JSON logs and runs
``main(settings)``; ``serve_http`` binds the service's port itself, then runs uvicorn
(uvloop, httptools, no access log) on that socket until SIGTERM or SIGINT. What a service
adds (the executor's privileged set-up, the ingest's worker processes and LMTP listener)
stays in its own ``main.py``; what every service shares, and the exit status, is here.

Exit status (``shared.sysexits``), the same for every service, so ``mailexec up`` and an
init system can tell a configuration to fix from a failure worth a restart:

====  ==============  =============================================================
0     EX_OK           stopped by SIGTERM/SIGINT after a clean shutdown
1                     an unexpected error (its traceback is in the log)
69    EX_UNAVAILABLE  a dependency the service needs at start can't be reached (the
                      executor: PostgreSQL or RabbitMQ; the others start without them
                      and answer ``/readyz`` 503 until they come back)
71    EX_OSERR        it can't listen: its port (or the LMTP port) is in use, or the
                      address can't be bound
77    EX_NOPERM       the executor is not started as root
78    EX_CONFIG       bad settings: a ``MAILEXEC_*`` value that doesn't parse, a
                      ``*_FILE`` secret that can't be read, a service's own check
====  ==============  =============================================================

Every refusal is one log line (level critical, ``exit_status`` in it) and one line on
stderr, ``mailexec <service>: refusing to start: <why>``, before anything is consumed.

Why not ``uvicorn.run`` or ``Server.run`` as they are: uvicorn binds only after the
lifespan has run, turns every start-up failure into ``sys.exit(3)``, and after a clean
SIGTERM shutdown re-raises the signal, so the parent sees "killed by SIGTERM" where a
clean stop should read 0. And ``asyncio.run`` waits without end for tasks that ignore
their cancellation: an aio-pika robust connection cancelled while it is still connecting
(RabbitMQ down when the service stops or fails to start) reconnects for ever, so the
process would never exit. Here such leftovers get ``LEFTOVER_TASKS_S``, then are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from pydantic import ValidationError

from shared.errors import Unavailable
from shared.logging import configure
from shared.secretfile import SecretFileError
from shared.settings import Settings, get_settings
from shared.sysexits import EX_CONFIG, EX_OK, EX_OSERR, EX_UNAVAILABLE, describe

log = logging.getLogger("mailexec.service")

EX_CRASH = 1  # not a sysexits code: a bug, not a condition an operator can name
LEFTOVER_TASKS_S = 5.0


class StartupError(Exception):
    """The service refuses to start: ``message`` says what to fix, ``status`` is its exit."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def refuse(service: str, message: str, status: int) -> int:
    """Log and print why ``service`` won't start; return the exit status."""
    log.critical("%s refuses to start: %s", service, message,
                 extra={"exit_status": status, "exit": describe(status)})
    print(f"mailexec {service}: refusing to start: {message}", file=sys.stderr, flush=True)
    return status


def run_service(service: str, main: Callable[[Settings], int]) -> int:
    """Settings, logging, ``main(settings)``; the exit status of the table above."""
    try:
        settings = get_settings()
    except (ValidationError, SecretFileError) as exc:
        configure("info", service=service)
        return refuse(service, f"bad settings: {_one_line(exc)}", EX_CONFIG)
    configure(settings.log_level, service=service)
    try:
        return main(settings)
    except StartupError as exc:
        return refuse(service, str(exc), exc.status)
    except Exception:
        log.exception("%s stopped by an unexpected error", service,
                      extra={"exit_status": EX_CRASH})
        return EX_CRASH


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"MAILEXEC_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
    return str(exc)


def listen(host: str, port: int, setting: str) -> socket.socket:
    """A bound TCP socket for ``host:port`` (uvicorn's options), or StartupError(EX_OSERR).

    ``setting``: the variable that moves the port, named in the message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT holds nothing
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(cannot_listen(host, port, setting, exc), EX_OSERR) from exc
    sock.set_inheritable(True)  # the ingest's worker processes serve it too
    return sock


def cannot_listen(host: str, port: int, setting: str, exc: OSError) -> str:
    why = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {host}:{port}: {why} (another process holds the port); "
                f"stop it or set {setting}")
    return f"cannot listen on {host}:{port}: {why}; check MAILEXEC_BIND_HOST and {setting}"


class Server(uvicorn.Server):
    """uvicorn's server, minus its signal re-raise; ``own_signals=False`` when the caller
    handles SIGTERM/SIGINT itself (the executor stops consuming first) and sets
    ``should_exit``."""

    def __init__(self, config: uvicorn.Config, *, own_signals: bool = True) -> None:
        super().__init__(config)
        self.own_signals = own_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.own_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets)
        except SystemExit:  # uvicorn's own start-up failure; ``started`` stays False
            pass

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """``asyncio.run`` (uvicorn's loop), with a bound on the tasks left at the end."""
        factory = self.config.get_loop_factory()
        loop = factory() if factory is not None else asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.serve(sockets=sockets))
        finally:
            try:
                _cancel_leftovers(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=LEFTOVER_TASKS_S))
    if stuck:
        log.warning("tasks still running %.0f s after their cancellation; left behind",
                    LEFTOVER_TASKS_S, extra={"tasks": sorted(t.get_name() for t in stuck)})


def http_server(app: Any, *, own_signals: bool = True, **options: Any) -> Server:
    """A ``Server`` with the options every service uses; ``options`` add or override."""
    config: dict[str, Any] = dict(loop="uvloop", http="httptools", lifespan="on",
                                  log_config=None, access_log=False)
    config.update(options)
    return Server(uvicorn.Config(app, **config), own_signals=own_signals)


class _LifespanWatch:
    """What the app's lifespan raised, which uvicorn only logs."""

    def __init__(self, app: Any) -> None:
        self.startup_error: BaseException | None = None
        self.shutdown_error: BaseException | None = None
        router = getattr(app, "router", None)
        inner = getattr(router, "lifespan_context", None)
        if router is None or inner is None:
            return

        @contextlib.asynccontextmanager
        async def watched(app: Any) -> AsyncIterator[Any]:
            started = False
            try:
                async with inner(app) as state:
                    started = True
                    yield state
            except BaseException as exc:
                if started:
                    self.shutdown_error = exc
                else:
                    self.startup_error = exc
                raise

        router.lifespan_context = watched


def startup_status(exc: BaseException | None) -> tuple[int, str]:
    """Exit status and message for what a lifespan raised at start."""
    if isinstance(exc, StartupError):
        return exc.status, str(exc)
    if isinstance(exc, Unavailable):
        return EX_UNAVAILABLE, exc.message
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL,
                                                  errno.EACCES):
        return EX_OSERR, f"cannot listen: {exc}"
    if exc is None:
        return EX_CRASH, "start-up failed (see the log above)"
    return EX_CRASH, f"start-up failed: {exc!r} (traceback above)"


def serve_http(service: str, app: Any, *, host: str, port: int, setting: str,
               sockets: list[socket.socket] | None = None, **options: Any) -> int:
    """Bind (unless ``sockets`` are given), serve until SIGTERM/SIGINT, return the status.

    ``setting``: the variable of ``port`` (``MAILEXEC_POLICY_PORT`` …), for the message
    when it is taken. ``options``: uvicorn's, over ``http_server``'s defaults."""
    ours = [] if sockets is not None else [listen(host, port, setting)]
    watch = _LifespanWatch(app)
    server = http_server(app, host=host, port=port, **options)
    try:
        server.run(sockets=sockets or ours)
    finally:
        for sock in ours:
            sock.close()
    if not server.started:
        status, message = startup_status(watch.startup_error)
        return refuse(service, message, status)
    if watch.shutdown_error is not None:
        log.error("%s did not shut down cleanly", service, extra={"exit_status": EX_CRASH})
        return EX_CRASH
    return EX_OK
