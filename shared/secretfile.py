"""``<NAME>_FILE`` secrets (SPEC §2 Environment): a secret read from the file a variable names.

The Kubernetes/compose secrets habit: instead of ``MAILEXEC_ADMIN_TOKEN=...`` (visible in
``/proc/PID/environ``, ``docker inspect``, shell history), give
``MAILEXEC_ADMIN_TOKEN_FILE=/run/secrets/admin_token``. The one rule, used by
:mod:`shared.settings` (the services) and by the CLI (``mailexec submit``, which must
stay light: standard library only, nothing imported here but ``os``; submit may load
this module of ``shared`` and no other, tests/cli/test_submit_cost.py checks it):

- the file's content is the value, trailing CR/LF removed (``echo secret > file`` works);
- ``NAME`` and ``NAME_FILE`` both set (non-empty) is an error naming both: neither
  silently wins;
- a file that cannot be read, is not UTF-8 or is empty is an error naming the variable
  and the path (an empty secret would quietly disable a bootstrap token);
- an empty ``NAME_FILE`` counts as unset, like an empty ``NAME``.

Trust: the environment and the file are the operator's; nothing here comes from a
client. Tested in tests/shared/test_secret_files.py and tests/cli/test_submit.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class SecretFileError(ValueError):
    """A ``<NAME>_FILE`` secret that can't be used; the message names what to fix."""


def secret_from_env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of secret ``name`` from ``NAME`` or ``NAME_FILE``; None when neither is set."""
    env = os.environ if environ is None else environ
    file_var = f"{name}_FILE"
    value = env.get(name) or None
    path = env.get(file_var) or None
    if path is None:
        return value
    if value is not None:
        raise SecretFileError(f"both {name} and {file_var} are set: set only one of them")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise SecretFileError(
            f"{file_var}: cannot read {path}: {exc.strerror or exc}"
        ) from None
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretFileError(f"{file_var}: {path} is not UTF-8 text") from None
    if not text:
        raise SecretFileError(f"{file_var}: {path} is empty")
    return text
