"""Errors raised while resolving and running delivery programs.

Hierarchy::

    ExecutorError                 base of everything below
    ├── ProgramUnresolved         what to run can't be determined or trusted:
    │                             bad insecure path, unknown program, bytes whose
    │                             SHA-256 does not match the registry, even after
    │                             one refetch (SPEC §3.5: bounce 5.3.0 + admin notice)
    ├── SandboxUnavailable        the executor can't build its sandbox (unsafe
    │                             trusted dir, helper not built or not root's alone,
    │                             no namespaces, instance already running): refuse
    │                             to start, like Postfix's get_service_attr()
    └── LaunchFailed              nothing could be started (pipe/fd shortage, the
        │                         spawner died, no egress namespace): temporary; a
        │                         failure *inside* the spawner's child (setuid, exec
        │                         permission …) is not raised but reported in
        │                         RunResult.launch_error
        └── IdentityRefused       the uid/gid is one the spawner never runs programs
                                  as (0, below MAILEXEC_MIN_UID, a service's uid):
                                  permanent, bounce 5.3.0 with an admin notice
"""

from __future__ import annotations


class ExecutorError(Exception):
    """Base class of the executor's own errors."""


class ProgramUnresolved(ExecutorError):
    """The program to run can't be resolved to trusted bytes or an executable file."""


class SandboxUnavailable(ExecutorError):
    """The configured sandbox (or a safe trusted directory) can't be set up."""


class LaunchFailed(ExecutorError):
    """Nothing could be started (temporary: the delivery is retried)."""


class IdentityRefused(LaunchFailed):
    """The spawner never runs programs as this uid/gid (permanent)."""
