"""Program resolution: the trusted store's sealed copies, and insecure-mode paths.

Real files, real memfds, real runs through the sandbox as throwaway uids.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.executor.errors import ProgramUnresolved, SandboxUnavailable
from services.executor.programs import ProgramStore, check_root_owned_path, open_insecure
from services.executor.sandbox import RunLimits, Sandbox
from tests.executor.sandboxing import test_settings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the store and sandbox need root")

LIMITS = RunLimits(timeout_s=20, max_output_bytes=4096, cpu_s=10, as_bytes=1 << 30,
                   nproc=64, fsize_bytes=1 << 20, nofile=64)


def compile_says(workdir: Path, word: str) -> bytes:
    src = workdir / f"{word}.c"
    src.write_text(f'#include <stdio.h>\nint main(void) {{ puts("{word}"); return 0; }}\n')
    subprocess.run(["cc", "-O1", "-o", str(workdir / word), str(src)], check=True)
    return (workdir / word).read_bytes()


@pytest.fixture(scope="module")
def programs() -> Iterator[dict[str, bytes]]:
    workdir = Path(tempfile.mkdtemp(prefix="mailexec-programs-"))
    try:
        yield {word: compile_says(workdir, word) for word in ("good", "evil")}
    finally:
        shutil.rmtree(workdir)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox.start(test_settings())
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProgramStore]:
    programs_store = ProgramStore(tmp_path / "trusted")
    try:
        yield programs_store
    finally:
        programs_store.close()


class Registry:
    """The policy side: serves bytes and counts fetches."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.fetches = 0

    async def fetch(self) -> bytes:
        self.fetches += 1
        return self.content


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


async def run_output(box: Sandbox, fd: int, uid: int) -> bytes:
    result = await box.run(fd, "prog", uid, uid, "/", b"", b"", LIMITS)
    assert result.exit_status == 0 and result.launch_error is None, result
    return result.output


def test_store_creates_its_dir_root_owned_0755(tmp_path: Path) -> None:
    ProgramStore(tmp_path / "a" / "trusted").close()
    st = os.stat(tmp_path / "a" / "trusted")
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755


@pytest.mark.parametrize("problem", ["dir owned by a user", "dir group-writable",
                                     "parent world-writable", "parent owned by a user"])
def test_store_refuses_an_unsafe_dir(tmp_path: Path, problem: str) -> None:
    parent = tmp_path / "parent"
    trusted = parent / "trusted"
    trusted.mkdir(parents=True, mode=0o755)
    os.chmod(parent, 0o755)
    os.chmod(trusted, 0o755)
    if problem == "dir owned by a user":
        os.chown(trusted, 64060, 64060)
    elif problem == "dir group-writable":
        os.chmod(trusted, 0o775)
    elif problem == "parent world-writable":
        os.chmod(parent, 0o777)
    else:
        os.chown(parent, 64060, 64060)
    with pytest.raises(SandboxUnavailable, match="unsafe trusted dir"):
        ProgramStore(trusted)


def test_sticky_root_parent_like_tmp_is_accepted(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "trusted").mkdir(mode=0o755)
    check_root_owned_path(sticky / "trusted")


async def test_trusted_program_is_fetched_once_stored_and_sealed(
    store: ProgramStore, programs: dict[str, bytes], sandbox: Sandbox
) -> None:
    registry = Registry(programs["good"])
    digest = sha(programs["good"])
    with await store.open_trusted("mymail", digest, registry.fetch) as handle:
        assert not handle.is_script and handle.sha256 == digest
        seals = fcntl.fcntl(handle.fd, fcntl.F_GET_SEALS)
        wanted = (fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                  | fcntl.F_SEAL_SEAL)
        assert seals & wanted == wanted
        with pytest.raises(PermissionError):
            os.pwrite(handle.fd, b"\x7fELF-overwritten", 0)
        assert await run_output(sandbox, handle.fd, 64061) == b"good\n"
    copy = store.dir / digest
    st = copy.stat()
    assert copy.read_bytes() == programs["good"]
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
    with await store.open_trusted("mymail", digest, registry.fetch):
        pass
    assert registry.fetches == 1
    # a new store (executor restart) uses the disk copy without fetching
    again = ProgramStore(store.dir)
    try:
        with await again.open_trusted("mymail", digest, registry.fetch):
            pass
    finally:
        again.close()
    assert registry.fetches == 1


async def test_swapped_bytes_on_disk_are_refetched(
    store: ProgramStore, programs: dict[str, bytes], sandbox: Sandbox
) -> None:
    digest = sha(programs["good"])
    (store.dir / digest).write_bytes(programs["evil"])
    registry = Registry(programs["good"])
    with await store.open_trusted("mymail", digest, registry.fetch) as handle:
        assert await run_output(sandbox, handle.fd, 64062) == b"good\n"
    assert registry.fetches == 1
    assert (store.dir / digest).read_bytes() == programs["good"]  # repaired


async def test_swapped_bytes_everywhere_are_refused(
    store: ProgramStore, programs: dict[str, bytes]
) -> None:
    digest = sha(programs["good"])
    (store.dir / digest).write_bytes(programs["evil"])
    registry = Registry(programs["evil"])  # the registry hands out other bytes too
    with pytest.raises(ProgramUnresolved, match="sha256"):
        await store.open_trusted("mymail", digest, registry.fetch)
    assert registry.fetches == 1  # refetched once, then failed


async def test_swapping_disk_bytes_after_caching_cannot_change_what_runs(
    store: ProgramStore, programs: dict[str, bytes], sandbox: Sandbox
) -> None:
    digest = sha(programs["good"])
    registry = Registry(programs["good"])
    with await store.open_trusted("mymail", digest, registry.fetch):
        pass
    (store.dir / digest).write_bytes(programs["evil"])
    with await store.open_trusted("mymail", digest, registry.fetch) as handle:
        assert await run_output(sandbox, handle.fd, 64063) == b"good\n"


async def test_trusted_shell_script_runs_through_its_sealed_fd(
    store: ProgramStore, sandbox: Sandbox
) -> None:
    script = b'#!/bin/sh\necho "script as $(id -u)"\n'
    registry = Registry(script)
    with await store.open_trusted("sieve", sha(script), registry.fetch) as handle:
        assert handle.is_script
        assert await run_output(sandbox, handle.fd, 64064) == b"script as 64064\n"


async def test_invalid_sha256_is_refused(store: ProgramStore) -> None:
    with pytest.raises(ProgramUnresolved, match="invalid sha256"):
        await store.open_trusted("x", "../../etc/passwd", Registry(b"").fetch)


@pytest.fixture
def reachable(tmp_path: Path) -> Path:
    """A directory every uid may search (tmp_path itself is root's 0700)."""
    base = Path(tempfile.mkdtemp(prefix="mailexec-insecure-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base  # type: ignore[misc]
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: "relative/prog", "not an absolute path"),
        (lambda d: "", "not an absolute path"),
        (lambda d: str(d / "missing"), "no such file"),
        (lambda d: str(d), "not a regular file"),
        (lambda d: str(d / "plain"), "not executable"),
    ],
)
async def test_insecure_path_problems_are_named(
    reachable: Path, make: object, message: str, sandbox: Sandbox
) -> None:
    (reachable / "plain").write_text("data")
    os.chmod(reachable / "plain", 0o644)
    with pytest.raises(ProgramUnresolved, match=message):
        await open_insecure(make(reachable),  # type: ignore[operator]
                            lambda path: sandbox.open_as(path, 64066, 64066))


async def test_insecure_path_follows_links(
    reachable: Path, programs: dict[str, bytes], sandbox: Sandbox
) -> None:
    real = reachable / "good"
    real.write_bytes(programs["good"])
    os.chmod(real, 0o755)
    (reachable / "link").symlink_to(real)
    with await open_insecure(str(reachable / "link"),
                             lambda path: sandbox.open_as(path, 64065, 64065)) as handle:
        assert not handle.is_script
        assert await run_output(sandbox, handle.fd, 64065) == b"good\n"
