"""Recognising programs that interpret their input as commands (the guide's sh/tcsh/perl rule).

What it does
    :func:`classify` says whether an upload is a command interpreter, and why:
    1. by name: the registry name (lower-cased, version suffix such as ``3.11`` or
       ``-static`` stripped) is a known shell or language runtime;
    2. by content, for ELF files: the SHA-256 equals one of the interpreters installed
       on this host (resolved once, links followed: ``/bin/sh``, ``/bin/dash``,
       ``/usr/bin/perl``, ``python3`` ...), or the binary carries a runtime's marks
       (needs ``libperl``/``libpython``/...; embeds ``Py_Initialize``, ``perl_parse``,
       ``GNU bash``, ``BusyBox v``; or the builtin names of a POSIX shell).

What it guarantees
    The bytes of any interpreter installed on this host are refused under any name.

What it does not
    Inspect ``#!`` scripts: the guide allows a carefully inspected script; they are
    reported as not being interpreters. It cannot recognise every interpreter built
    elsewhere; the name and marker lists are heuristics. The route lets an admin
    override with ``allow_interpreter=true`` (audited).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass

log = logging.getLogger("mailexec.policy.interpreters")

SHELLS = {
    "sh", "ash", "bash", "rbash", "dash", "zsh", "csh", "tcsh", "ksh", "ksh93", "mksh",
    "pdksh", "oksh", "lksh", "yash", "posh", "fish", "rc", "es", "sash", "bsh", "jsh",
    "nu", "elvish", "xonsh", "osh", "ysh", "pwsh", "powershell", "busybox", "toybox",
}
RUNTIMES = {
    "node", "nodejs", "deno", "bun", "env", "tclsh", "wish", "expect", "osascript",
    "awk", "gawk", "mawk", "nawk", "original-awk", "busybox", "jshell", "irb", "guile",
    "racket", "clisp", "sbcl", "ecl", "julia", "r", "rscript", "octave", "ocaml", "ghci",
    "runghc", "erl", "escript", "elixir", "iex", "groovy", "jrunscript", "pike", "swipl",
    "gforth", "rexx", "regina", "sqlite3", "ed", "ex", "vi", "vim", "nvim", "gdb", "dc",
    "su", "sudo", "doas", "script", "jython", "ipython", "pypy", "pypy3", "qjs", "jjs",
}
PREFIXES = ("perl", "python", "ruby", "php", "lua")
_VERSION_SUFFIX = re.compile(r"([-_.]?[0-9][0-9._-]*|[-_.]static|[-_.]x86_64-linux-gnu)+$")

# Names resolved on this host at start-up whose bytes are refused under any name.
HOST_INTERPRETERS = sorted(SHELLS | RUNTIMES - {"su", "sudo", "doas", "script", "ed", "ex"})
SEARCH_DIRS = ("/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin")
MAX_HASHED_FILE = 256 * 1024 * 1024

# Byte markers of ELF binaries; any one of them identifies a runtime.
STRONG_MARKERS: tuple[tuple[bytes, str], ...] = (
    (b"libperl.so", "links libperl"),
    (b"libpython", "links libpython"),
    (b"libruby", "links libruby"),
    (b"liblua", "links liblua"),
    (b"libtcl", "links libtcl"),
    (b"libphp", "links libphp"),
    (b"libnode.so", "links libnode"),
    (b"Py_Initialize", "embeds the Python runtime"),
    (b"perl_parse", "embeds the Perl runtime"),
    (b"ruby_init", "embeds the Ruby runtime"),
    (b"lua_pcall", "embeds the Lua runtime"),
    (b"GNU bash, version", "is GNU bash"),
    (b"BusyBox v", "is BusyBox"),
    (b"GNU Awk", "is GNU awk"),
    (b"ZSH_VERSION", "is zsh"),
    (b"KSH_VERSION", "is a Korn shell"),
    (b"zend_execute", "embeds the PHP runtime"),
)
# The builtins and variables of a POSIX shell; this many of them in one ELF file is a shell.
SHELL_MARKERS = (
    b"OPTIND", b"PS1", b"PPID", b"getopts", b"unalias", b"ulimit", b"Syntax error",
    b"IFS", b"PS2", b"readonly",
)
SHELL_MARKER_THRESHOLD = 6


@dataclass(frozen=True)
class InterpreterCheck:
    """Whether an uploaded program is a command interpreter, and why (empty when not)."""

    interpreter: bool
    reason: str = ""


def base_name(name: str) -> str:
    lowered = name.lower()
    stem = _VERSION_SUFFIX.sub("", lowered) or lowered
    return stem


def by_name(name: str) -> str | None:
    lowered = name.lower()
    stem = base_name(name)
    for candidate in {lowered, stem, stem.removesuffix(".exe")}:
        if candidate in SHELLS or candidate in RUNTIMES:
            return f"the name {name!r} is the command interpreter {candidate!r}"
    for prefix in PREFIXES:
        if lowered.startswith(prefix):
            return f"the name {name!r} names a {prefix} interpreter"
    return None


def _candidate_paths() -> set[str]:
    paths: set[str] = {sys.executable, os.path.realpath(sys.executable)}
    for name in HOST_INTERPRETERS:
        for d in SEARCH_DIRS:
            paths.add(os.path.join(d, name))
        found = shutil.which(name)
        if found:
            paths.add(found)
    for prefix in PREFIXES:
        for d in SEARCH_DIRS:
            paths.update(glob.glob(os.path.join(d, prefix + "*")))
    resolved = set()
    for p in paths:
        resolved.add(p)
        resolved.add(os.path.realpath(p))
    return resolved


def _sha256_file(path: str) -> str | None:
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_HASHED_FILE:
            return None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
            h.update(b"\x7fELF")
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


@functools.cache
def host_interpreter_hashes() -> dict[str, str]:
    """SHA-256 → path of every ELF interpreter installed on this host (computed once)."""
    out: dict[str, str] = {}
    for path in sorted(_candidate_paths()):
        digest = _sha256_file(path)
        if digest and digest not in out:
            out[digest] = os.path.realpath(path)
    log.info("interpreter fingerprints loaded", extra={"count": len(out)})
    return out


def by_content(content: bytes, sha256: str) -> str | None:
    if not content.startswith(b"\x7fELF"):
        return None
    match = host_interpreter_hashes().get(sha256)
    if match:
        return f"its bytes are identical to the interpreter {match} installed on this host"
    for marker, why in STRONG_MARKERS:
        if marker in content:
            return f"the ELF binary {why}"
    hits = sum(1 for m in SHELL_MARKERS if m in content)
    if hits >= SHELL_MARKER_THRESHOLD:
        return f"the ELF binary carries {hits} POSIX shell builtins/variables: it is a shell"
    return None


def classify(name: str, content: bytes, sha256: str) -> InterpreterCheck:
    if content.startswith(b"#!"):
        # The guide: a carefully inspected script run by an interpreter may be safe.
        reason = by_name(name)
        return InterpreterCheck(True, reason) if reason else InterpreterCheck(False)
    reason = by_name(name) or by_content(content, sha256)
    return InterpreterCheck(True, reason) if reason else InterpreterCheck(False)
