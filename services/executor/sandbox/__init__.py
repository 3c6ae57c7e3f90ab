"""The executor's sandbox: how one delivery program runs, and what it can't reach.

One concern per module, each opening with what it trusts and what it defends
against (and the test that shows it):

    box.py          ``Sandbox``: start (as root), run, close - the one run path
    spawner.py      the client of ``mailexec-spawner`` (spawner.c + child_recipe.h,
                    the only code that holds root's powers once the executor has
                    dropped them): finding and checking the installed helper, the
                    socket protocol
    namespaces.py   PID, mount and network namespaces of a run
    cgroups.py      per-run cgroups v2 where a writable subtree exists, instance
                    leftovers
    runio.py        stdin streaming, output capture, timeout, the outcome
    self_check.py   ``mailexec serve executor --self-check``

The rest of the executor imports only what this file re-exports.
"""

from services.executor.sandbox.box import Sandbox
from services.executor.sandbox.runio import LaunchError, RunLimits, RunResult
from services.executor.sandbox.self_check import async_self_check, self_check
from services.executor.sandbox.spawner import spawner_path, verify_helper

__all__ = ["LaunchError", "RunLimits", "RunResult", "Sandbox", "async_self_check",
           "self_check", "spawner_path", "verify_helper"]
