"""Namespaces of a run: which network it gets, and the PID and mount namespaces of its slot.

What each run gets (spawner.c, its slots ``slot.h``, and ``child_recipe.h``)
    - A PID namespace (clone3 ``CLONE_NEWPID``) whose pid 1 is a *slot* of the
      spawner's (root, it only reaps) and the program its child: when the program
      ends, the slot kills every process left in the namespace, ``setsid``
      double-fork escapees included, before it reports the run done; when the slot
      is killed (timeout) they all die with it, on any kernel and in containers
      without a writable cgroup tree. (Not the program as pid 1: an init ignores its
      own SIGTERM, abort(), SIGPIPE and SIGXCPU, which would change what a program's
      failure looks like.) The slot's ``/proc`` shows only it and the run: the
      executor's ``/proc/PID`` is not there. A slot serves one run at a time and is
      reused: a new PID and mount namespace per run cost ~0.17 ms of CPU a run.
    - A mount namespace (``CLONE_NEWNS``, the slot's), copied from the spawner's,
      where ``/`` is private and ``/run``, ``/var/run`` (when not a symlink to
      ``/run``) an empty read-only tmpfs; each run then gets a fresh tmpfs on
      ``/tmp`` and ``/dev/shm`` (1777, ``sandbox_tmp_bytes``), unmounted after it: no
      host Unix socket (PostgreSQL's ``/var/run/postgresql/.s.PGSQL.5432``,
      RabbitMQ's, an MTA's) can be named, and nothing of an earlier run is left.
    - A network namespace chosen per run (:data:`NETWORKS`): ``none`` is one empty
      namespace made here at start (``lo`` left down: runs can't even reach each
      other over loopback; they do share its *abstract* Unix socket namespace),
      ``egress`` the NAT'd one that ``egress.py`` builds, when the executor has one.
      A namespace per run would cost too much (fork+exec measured 0.55 → ~1 ms).

Trusts
    The kernel's namespace isolation; root (the spawner) to set them up.

Defends against (test)
    Host Unix sockets, ``/proc`` of others, TCP to the control plane, loopback
    between runs: tests/security/test_containment.py (one test per attack, see
    docs/security.md's table).

Settings
    ``sandbox_network`` (false: runs share the executor's network; development only),
    ``sandbox_tmp_bytes``.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

from services.executor.errors import SandboxUnavailable
from shared.programs import NETWORK_NAMES

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# network name -> index of the namespace fd handed to the spawner: the contract's names
# (shared/programs.py) in their order, "none" (the shared empty namespace) first
NETWORKS = {name: index for index, name in enumerate(NETWORK_NAMES)}


def _wait_gone(tid: int | None, timeout_s: float = 5.0) -> None:
    """Wait until the kernel has reaped thread ``tid``.

    ``Thread.join`` returns when the thread's Python code is done, a moment before the
    kernel removes it from ``/proc/self/task``; the privilege drop that follows refuses to
    run while any second thread is listed (privdrop.py), so a loaded machine could make
    the executor refuse to start for a thread that was already ending.
    """
    if tid is None:
        return
    deadline = time.monotonic() + timeout_s
    while os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < deadline:
        time.sleep(0.001)


def create_empty_netns() -> int:
    """An fd of a fresh network namespace (only a down ``lo``), made in a throwaway thread.

    Namespaces are per thread, so unsharing in a thread that then ends leaves the
    executor's own network untouched; the fd keeps the namespace alive.
    """
    outcome: dict[str, int] = {}

    def make() -> None:
        outcome["tid"] = threading.get_native_id()
        if _libc.unshare(_CLONE_NEWNET) != 0:
            outcome["errno"] = ctypes.get_errno()
            return
        outcome["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    thread = threading.Thread(target=make, name="mailexec-netns")
    thread.start()
    thread.join()
    _wait_gone(outcome.get("tid"))
    if "fd" not in outcome:
        code = outcome.get("errno", 0)
        raise SandboxUnavailable(
            f"creating the programs' network namespace failed: {os.strerror(code)} "
            "(the executor needs CAP_SYS_ADMIN for its sandbox's namespaces)"
        )
    return outcome["fd"]
