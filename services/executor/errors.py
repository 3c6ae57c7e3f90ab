"""Errors raised while resolving and running delivery programs.

Hierarchy::

    ExecutorError                 base of everything below
    ├── ProgramUnresolved         what to run can't be determined or trusted:
    │                             bad insecure path, unknown program, bytes whose
    │                             SHA-256 does not match the registry, even after
    │                             one refetch (SPEC §3.5: bounce 5.3.0 + admin notice)
    ├── SandboxUnavailable        the executor can't build the sandbox it was
    │                             configured for (unsafe trusted dir, no compiler,
    │                             netns/bwrap requested but not possible): refuse to
    │                             start, like Postfix's get_service_attr()
    └── LaunchFailed              the executor itself could not spawn the launcher
                                  (fork/pipe failure, launcher missing); a failure
                                  *inside* the launcher (setuid, exec permission …)
                                  is not raised but reported in RunResult.launch_error
"""

from __future__ import annotations


class ExecutorError(Exception):
    """Base class of the executor's own errors."""


class ProgramUnresolved(ExecutorError):
    """The program to run can't be resolved to trusted bytes or an executable file."""


class SandboxUnavailable(ExecutorError):
    """The configured sandbox (or a safe trusted directory) can't be set up."""


class LaunchFailed(ExecutorError):
    """Spawning the launcher failed before any program could run."""
