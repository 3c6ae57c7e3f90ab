"""Resolving what a delivery runs, as a file descriptor the spawner can fexecve.

What it does
    Secure mode (:meth:`ProgramStore.open_trusted`): the executor keeps a local
    copy of every registered program it has run, one file per SHA-256 under
    ``settings.trusted_dir`` (written to a temp file, fsync'd, renamed; mode 0755,
    owner the executor's service user, or root for copies made before the
    privilege drop existed). Every access goes through a descriptor of the
    directory opened at start, so the service user needs no search permission on
    its parents after the drop (``privdrop.py``). For exec it hands out a descriptor of a *sealed memfd*
    (``memfd_create`` + write + ``F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL``)
    holding those bytes, cached per SHA-256.
    Insecure mode (:func:`open_insecure`): an absolute path, links followed, that
    must be a regular file with an execute bit, opened once *with the account's
    rights* (by the spawner, after dropping to the account's uid/gid: a file in a
    directory only root can search never runs as the account; a device node is
    never opened); that descriptor is what is executed.

What it guarantees
    - Secure mode runs exactly the registered bytes: the memfd's content is hashed
      after sealing and must equal the registry's SHA-256; the seals make it
      immutable from then on (nobody, root included, can write, truncate or grow
      it, or remove the seals), so it is *not* re-hashed at each exec. Replacing
      or editing the disk copy, or the path the user named, cannot change what
      runs. A disk copy that does not match is replaced by one refetch from the
      registry; if the registry's bytes don't match either,
      :class:`ProgramUnresolved` is raised.
    - Secure mode takes a registry name and SHA-256, never a path: no
      user-supplied path is ever opened (the caller reduces entries to their
      basename, SPEC §3.5).
    - :class:`ProgramStore` refuses to start (:class:`SandboxUnavailable`) when
      the trusted directory is owned by anyone but root or ``owner_uid`` (the
      service user), any parent by anyone but root, or any of them is writable by
      group or others (a root-owned sticky directory such as ``/tmp`` is accepted
      as a parent: others can't rename or remove entries they don't own); before
      writing each copy it checks the directory again, on its descriptor.
    - Every :class:`ExecHandle` owns its descriptor (close-on-exec in the
      executor; the spawner's child decides what the program inherits).

What it does not do
    - Check that the *target uid* may execute an insecure-mode file: the kernel
      does that at ``fexecve`` after the privilege drop, and the spawner reports
      it as a launch error (``exec: Permission denied``), not as program output.
    - Decide whether a program is an interpreter (policy does that at
      registration), or evict disk copies of programs no longer registered.

Tests
    tests/executor/test_programs.py (store, sealing, swaps);
    tests/security/test_containment.py: test_insecure_path_is_opened_with_the_
    accounts_rights (a root-only directory, device nodes, FIFOs).

Settings
    ``trusted_dir`` (where the copies live). The memfd cache holds at most
    ``cache_size`` programs (constructor argument, LRU).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from services.executor.errors import ProgramUnresolved, SandboxUnavailable

log = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MFD_EXEC = 0x0010  # Linux >= 6.3: say explicitly that this memfd is executable
_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_ANY_EXEC = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


@dataclass
class ExecHandle:
    """A descriptor to fexecve, owned by the holder: close it (or use ``with``)."""

    fd: int
    is_script: bool
    name: str
    sha256: str | None = None
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __enter__(self) -> ExecHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _starts_with_shebang(fd: int) -> bool:
    return os.pread(fd, 2, 0) == b"#!"


async def open_insecure(path: str, open_as_user: Callable[[str], Awaitable[int]]) -> ExecHandle:
    """Open an insecure-mode program with the *account's* rights: absolute path, links
    followed, a regular file with an execute bit.

    ``open_as_user(path)`` opens it as the account's uid/gid (``Sandbox.open_as``: the
    spawner forks, drops to the account and opens; a device node or FIFO is refused
    from an O_PATH descriptor before it is ever opened). OSError from it becomes
    :class:`ProgramUnresolved`.
    """
    if not path or not os.path.isabs(path):
        raise ProgramUnresolved(f"{path!r} is not an absolute path")
    try:
        fd = await open_as_user(path)
    except FileNotFoundError:
        raise ProgramUnresolved(f"{path}: no such file") from None
    except NotADirectoryError:
        raise ProgramUnresolved(f"{path}: no such file (a path component is not a directory)") from None
    except PermissionError:
        raise ProgramUnresolved(f"{path}: the account's user may not open it") from None
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:
            raise ProgramUnresolved(f"{path}: not a regular file") from None
        raise ProgramUnresolved(f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # the spawner checked; so does this
            raise ProgramUnresolved(f"{path}: not a regular file")
        if not st.st_mode & _ANY_EXEC:
            raise ProgramUnresolved(f"{path}: not executable (no execute permission bit)")
        return ExecHandle(fd=fd, is_script=_starts_with_shebang(fd), name=path)
    except BaseException:
        os.close(fd)
        raise


def check_root_owned_path(directory: Path, what: str = "trusted dir", *, owner_uid: int = 0) -> None:
    """Raise SandboxUnavailable unless ``directory`` and its parents are root's alone
    (``directory`` itself may instead be ``owner_uid``'s: the executor's service user)."""
    real = Path(os.path.realpath(directory))
    for current in (real, *real.parents):
        try:
            st = os.lstat(current)
        except OSError as exc:
            raise SandboxUnavailable(f"{what} check: {current}: {exc.strerror}") from None
        if st.st_uid != 0 and not (current == real and st.st_uid == owner_uid):
            owners = ("root" if owner_uid == 0 or current != real
                      else f"root or the executor's service user (uid {owner_uid})")
            raise SandboxUnavailable(
                f"unsafe {what} {real}: {current} is owned by uid {st.st_uid}, not {owners}"
            )
        writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky_parent = current != real and st.st_mode & stat.S_ISVTX
        if writable_by_others and not sticky_parent:
            raise SandboxUnavailable(
                f"unsafe {what} {real}: {current} is writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o})"
            )


def sealed_memfd(name: str, content: bytes) -> int:
    try:
        fd = os.memfd_create(
            f"mailexec:{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | _MFD_EXEC
        )
    except OSError:  # kernel older than 6.3 knows no MFD_EXEC; memfds are executable there
        fd = os.memfd_create(f"mailexec:{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


class ProgramStore:
    """The executor's local copy of the trusted-program registry (root's or the service user's)."""

    def __init__(self, trusted_dir: str | Path, *, cache_size: int = 128, owner_uid: int = 0) -> None:
        self.dir = Path(trusted_dir)
        self.owner_uid = owner_uid
        if os.geteuid() != 0:
            raise SandboxUnavailable("the program store must be run by root")
        if not self.dir.exists():
            missing = [self.dir, *(p for p in self.dir.parents if not p.exists())]
            check_root_owned_path(missing[-1].parent)  # the nearest existing ancestor
            try:
                for directory in reversed(missing):
                    directory.mkdir(mode=0o755)
                    os.chmod(directory, 0o755)  # whatever the umask
            except OSError as exc:
                raise SandboxUnavailable(f"cannot create trusted dir {self.dir}: {exc}") from None
        check_root_owned_path(self.dir, owner_uid=owner_uid)
        # Everything goes through this fd: after the privilege drop the service user may
        # not be able to search the parents (a 0700 directory above it).
        self.dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.check_dir()
        except BaseException:
            os.close(self.dir_fd)
            raise
        self._cache_size = cache_size
        self._memfds: OrderedDict[str, tuple[int, bool]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    async def open_trusted(
        self, name: str, sha256: str, fetch: Callable[[], Awaitable[bytes]]
    ) -> ExecHandle:
        """A descriptor of exactly the registered bytes of ``name`` (``sha256``).

        ``fetch`` returns the program's bytes from the registry; it is called only
        when there is no good local copy. Its own exceptions propagate unchanged.
        """
        sha256 = sha256.lower()
        if not _SHA256_RE.match(sha256):
            raise ProgramUnresolved(f"program {name!r}: invalid sha256 {sha256!r}")
        cached = self._cached(sha256, name)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        async with lock:
            cached = self._cached(sha256, name)
            if cached is not None:
                return cached
            fd = await asyncio.to_thread(self._memfd_from_disk, name, sha256)
            if fd is None:
                content = await fetch()
                fd = await asyncio.to_thread(self._store_and_seal, name, sha256, content)
            self._remember(sha256, fd)
        self._locks.pop(sha256, None)
        handle = self._cached(sha256, name)
        assert handle is not None
        return handle

    def close(self) -> None:
        while self._memfds:
            _, (fd, _) = self._memfds.popitem()
            os.close(fd)
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def check_dir(self) -> None:
        """SandboxUnavailable unless the open directory is root's or the service user's
        and writable by nobody else (checked at start and before writing each copy)."""
        st = os.fstat(self.dir_fd)
        if st.st_uid not in (0, self.owner_uid):
            raise SandboxUnavailable(
                f"unsafe trusted dir {self.dir}: owned by uid {st.st_uid}, neither root nor the "
                f"executor's service user (uid {self.owner_uid}); refusing to use it")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SandboxUnavailable(
                f"unsafe trusted dir {self.dir}: writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it")

    def _cached(self, sha256: str, name: str) -> ExecHandle | None:
        entry = self._memfds.get(sha256)
        if entry is None:
            return None
        self._memfds.move_to_end(sha256)
        # A dup per handle: evicting the cache entry can never close an fd in use.
        return ExecHandle(fd=os.dup(entry[0]), is_script=entry[1], name=name, sha256=sha256)

    def _remember(self, sha256: str, fd: int) -> None:
        self._memfds[sha256] = (fd, _starts_with_shebang(fd))
        while len(self._memfds) > self._cache_size:
            _, (old_fd, _) = self._memfds.popitem(last=False)
            os.close(old_fd)

    def _memfd_from_disk(self, name: str, sha256: str) -> int | None:
        path = self.dir / sha256
        try:
            # O_NOFOLLOW: a symlink put there is no copy; O_NONBLOCK: nor is a FIFO
            fd = os.open(sha256, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                         dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP (a symlink), EACCES (a copy the service user can't read)
            log.warning("local copy %s of program %r unusable (%s); refetching", path, name,
                        exc.strerror)
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                log.warning("local copy %s of program %r is not a regular file; refetching",
                            path, name)
                return None
            content = _read_all(fd)
        finally:
            os.close(fd)
        if hashlib.sha256(content).hexdigest() != sha256:
            log.warning("local copy %s of program %r does not match its sha256; refetching",
                        path, name)
            return None
        return self._seal_verified(name, sha256, content)

    def _store_and_seal(self, name: str, sha256: str, content: bytes) -> int:
        got = hashlib.sha256(content).hexdigest()
        if got != sha256:
            raise ProgramUnresolved(
                f"program {name!r}: the registry's bytes have sha256 {got}, expected {sha256}; "
                "refusing to run it"
            )
        self.check_dir()
        tmp_name = f".{sha256}.{os.urandom(6).hex()}"
        tmp_fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o700, dir_fd=self.dir_fd)
        try:
            os.fchmod(tmp_fd, 0o755)
            view = memoryview(content)
            while view:
                view = view[os.write(tmp_fd, view) :]
            os.fsync(tmp_fd)
        except BaseException:
            os.close(tmp_fd)
            os.unlink(tmp_name, dir_fd=self.dir_fd)
            raise
        os.close(tmp_fd)
        os.rename(tmp_name, sha256, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)
        return self._seal_verified(name, sha256, content)

    @staticmethod
    def _seal_verified(name: str, sha256: str, content: bytes) -> int:
        fd = sealed_memfd(name, content)
        got = _hash_fd(fd)  # what will run, read back after sealing
        if got != sha256:
            os.close(fd)
            raise ProgramUnresolved(f"program {name!r}: sealed copy has sha256 {got}, "
                                    f"expected {sha256}")
        return fd
