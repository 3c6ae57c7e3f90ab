"""The grammar of trusted program names, shared by policy (refuse at write time), the
executor (bounce at run time an entry that slipped through) and ``mailexec import-dir``
(skip files that could not be registered): SPEC §2.

An account's program entry is a name or, for insecure mode, a path; either way its
basename is what must be a program name.

Also the one list of what a program's run may reach (``network`` of its metadata, SPEC
§2 policy / §3 rule 6): policy accepts only these, the executor's policy client refuses
any other value it is served (never guess wider access than it understands), and the
sandbox has one namespace per name.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

PROGRAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
PROGRAM_NAME_RULE = PROGRAM_NAME_RE.pattern  # as error messages quote it
# the classic trusted directory's flag files: never program names
INSECURE_FLAG = "INSECURE-PROGRAM-DELIVERIES"  # present → mode insecure
SUSPEND_FLAG = "SUSPEND-PROGRAM-DELIVERIES"  # present → suspended
FLAG_NAMES = frozenset({INSECURE_FLAG, SUSPEND_FLAG})

# "none": no network at all; "egress": outside addresses only. The order is the sandbox's
# (its namespaces are indexed by position, "none" first).
Network = Literal["none", "egress"]
NETWORK_NAMES: tuple[str, ...] = get_args(Network)


def entry_basename(entry: str) -> str:
    """What an account's entry names: the last path component (``/a/b/x`` → ``x``)."""
    return entry.rsplit("/", 1)[-1]


def is_program_name(name: str) -> bool:
    """Whether ``name`` could be registered as a trusted program."""
    return bool(PROGRAM_NAME_RE.fullmatch(name)) and name not in FLAG_NAMES
