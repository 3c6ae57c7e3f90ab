"""Build and check the mailexec container image through the Docker Engine API.

The same code drives a real Docker engine (``DOCKER_HOST`` or /var/run/docker.sock) and
podman's Docker-compatible API. With no engine answering and ``podman`` installed, it
starts ``podman --runtime runc system service --time=0 unix:///run/podman/podman.sock``
for the duration of the command and stops it afterwards.

    python tools/image.py lock                  # deploy/requirements.lock from the venv
    python tools/image.py base                  # debootstrap bookworm + python3, import
    python tools/image.py build [--base IMAGE]  # deploy/Dockerfile
    python tools/image.py check                 # run it the way the chart runs it; size
    python tools/image.py local                 # base (if missing) + build + check
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "deploy" / "requirements.lock"
DEFAULT_TAG = "localhost/mailexec:dev"
LOCAL_BASE = "localhost/mailexec-base:bookworm"
PODMAN_SOCKET = "/run/podman/podman.sock"
# What compose and the chart give the executor: root, only these capabilities, read-only
# rootfs (deploy/compose.yaml, mailexec.executor.capabilities; docs/security.md).
EXECUTOR_CAPS = ["SETUID", "SETGID", "KILL", "SYS_ADMIN", "SETPCAP"]
# The image's mailexec user, which the executor's Python process drops to (deploy/Dockerfile).
SERVICE_UID = 10001
ULIMITS = [
    docker.types.Ulimit(name="nofile", soft=1024, hard=1024),
    docker.types.Ulimit(name="nproc", soft=1024, hard=1024),
]


def say(message: str) -> None:
    print(f"[image] {message}", flush=True)


# ------------------------------------------------------------------------------- engine


def _answers(base_url: str) -> bool:
    try:
        client = docker.DockerClient(base_url=base_url, timeout=5)
        client.ping()
        client.close()
        return True
    except (docker.errors.DockerException, OSError):
        return False


@contextlib.contextmanager
def engine() -> Iterator[docker.DockerClient]:
    """A client of whichever engine is here; podman's API service started if need be."""
    if os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists():
        client = docker.from_env(timeout=600)
        client.ping()
        yield client
        client.close()
        return
    base_url = f"unix://{PODMAN_SOCKET}"
    service: subprocess.Popen[bytes] | None = None
    if not _answers(base_url):
        podman = shutil.which("podman")
        if podman is None:
            raise SystemExit(
                "no container engine: set DOCKER_HOST, or install podman and runc "
                "(Debian: apt-get install -y podman runc)"
            )
        Path(PODMAN_SOCKET).parent.mkdir(parents=True, exist_ok=True)
        say(f"starting podman API service on {base_url}")
        service = subprocess.Popen(
            [podman, "--runtime", "runc", "system", "service", "--time=0", base_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not _answers(base_url):
            if service.poll() is not None or time.monotonic() > deadline:
                service.kill()
                raise SystemExit("podman system service did not come up")
            time.sleep(0.2)
    client = docker.DockerClient(base_url=base_url, timeout=1800)
    try:
        yield client
    finally:
        client.close()
        if service is not None:
            service.terminate()
            try:
                service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                service.kill()


# --------------------------------------------------------------------------------- lock


def runtime_closure(project: str = "mailexec") -> dict[str, str]:
    """name -> version of every installed distribution the project needs at run time
    (its [project] dependencies with their extras, recursively; not its test extra)."""
    env = default_environment()
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (_canonical(name), extras)
        if key in seen:
            continue
        seen.add(key)
        dist = md.distribution(name)
        if _canonical(name) != _canonical(project):
            found[dist.metadata["Name"]] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": extra}) for extra in extras or {""}
            ):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def write_lock() -> None:
    pins = runtime_closure()
    lines = [
        "# Runtime closure of mailexec's [project] dependencies, pinned from a working venv.",
        "# Regenerate: python tools/image.py lock   (installed with pip --no-deps: keep it whole)",
        *sorted((f"{name}=={version}" for name, version in pins.items()), key=str.lower),
    ]
    LOCK.write_text("\n".join(lines) + "\n")
    say(f"wrote {LOCK.relative_to(REPO)} ({len(pins)} packages)")


# --------------------------------------------------------------------------------- base


def build_base(client: docker.DockerClient, tag: str, suite: str, mirror: str) -> None:
    """A Debian base with python3 (3.11 on bookworm), from Debian's packages only."""
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is missing (Debian: apt-get install -y debootstrap)")
    with tempfile.TemporaryDirectory(prefix="mailexec-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"debootstrap --variant=minbase {suite} (python3, python3-venv)")
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                suite,
                str(rootfs),
                mirror,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        # Images built FROM this one run apt-get: give them the mirror debootstrap used.
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\n"
        )
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        repository, _, version = tag.rpartition(":")
        say(f"importing {tag} through the engine API")
        client.api.import_image_from_file(str(archive), repository=repository, tag=version)
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        # podman's compat API ignores the tag of an import and names it :latest.
        image = client.images.get(f"{repository}:latest")
        image.tag(repository, version)
    say(f"base {tag}: {image.attrs['Size'] / 1e6:.0f} MB")


# -------------------------------------------------------------------------------- build


def _has_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build(client: docker.DockerClient, tag: str, base: str | None) -> Any:
    buildargs = {"REVISION": _revision()}
    extra_ca = _extra_ca_certs()
    if extra_ca:
        buildargs["EXTRA_CA_CERTS"] = extra_ca
    if base:
        buildargs["BASE_IMAGE"] = base
    say(f"building {tag} from deploy/Dockerfile ({base or 'default base'})")
    started = time.monotonic()
    stream = client.api.build(
        path=str(REPO),
        dockerfile="deploy/Dockerfile",
        tag=tag,
        buildargs=buildargs,
        rm=True,
        forcerm=True,
        decode=True,
        pull=False,
    )
    for chunk in stream:
        if "stream" in chunk:
            sys.stdout.write(chunk["stream"])
        if "error" in chunk:
            raise SystemExit(f"build failed: {chunk['error']}")
    image = client.images.get(tag)
    say(f"built {tag} in {time.monotonic() - started:.0f}s")
    return image


def _extra_ca_certs() -> str:
    """Local trust anchors of this host (a TLS-intercepting proxy in front of the package
    index, say): the build stage needs them to install from the lock."""
    certs = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    return "\n".join(path.read_text().strip() for path in certs)


def _revision() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


# -------------------------------------------------------------------------------- check


def run(client: docker.DockerClient, tag: str, command: list[str], **options: Any) -> tuple[int, str]:
    """Run a command in a fresh container: (exit status, output)."""
    container = client.containers.create(tag, command=command, ulimits=ULIMITS, **options)
    try:
        container.start()
        result = container.wait(timeout=300)
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    return int(result["StatusCode"]), output


def run_ok(client: docker.DockerClient, tag: str, command: list[str], **options: Any) -> str:
    """Run a command in a fresh container; its output, or SystemExit when it fails."""
    status, output = run(client, tag, command, **options)
    if status != 0:
        raise SystemExit(f"`{' '.join(command)}` exited {status} in {tag}:\n{output}")
    return output


# Without a delegated cgroup v2 tree (any unprivileged container) the executor kills by
# process group only, so a setsid'd escapee survives: documented, not an image defect.
CGROUP_ONLY = {"cgroup_kill", "escapee_killed"}


def self_check_verdict(status: int, output: str) -> tuple[bool, str]:
    """Judge `serve executor --self-check`: its exit status, or its JSON report when the
    only failures are the cgroup ones a container cannot have."""
    if status == 0:
        return True, "passed"
    # The report is the pretty-printed JSON object; log lines are one-line JSON objects.
    match = re.search(r"^\{\n", output, flags=re.M)
    try:
        report, _ = json.JSONDecoder().raw_decode(output[match.start() :] if match else "")
    except ValueError:
        return False, f"exited {status}"
    inner = report.get("self_check") or {}
    failed = {key for key, value in inner.items() if value is False}
    if inner.get("ok") is True and failed <= CGROUP_ONLY:
        return True, f"passed, killing by process group only ({', '.join(sorted(failed))} false)"
    return False, f"exited {status}; failed: {', '.join(sorted(failed)) or 'see report'}"


def check(client: docker.DockerClient, tag: str) -> None:
    image = client.images.get(tag)
    config = image.attrs["Config"]
    assert config.get("User") == "10001:10001", f"default user {config.get('User')!r}"
    # podman's compat inspect leaves Healthcheck out of Config; the history keeps it.
    history = " ".join(str(layer.get("CreatedBy", "")) for layer in image.history())
    assert config.get("Healthcheck") or "HEALTHCHECK" in history, "no HEALTHCHECK"
    assert "org.opencontainers.image.title" in (config.get("Labels") or {})

    say("mailexec --help (default non-root user, read-only root filesystem)")
    unprivileged = {
        "read_only": True,
        "tmpfs": {"/tmp": "rw,size=64m"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "network_mode": "none",
    }
    out = run_ok(client, tag, ["--help"], **unprivileged)
    for command in ("migrate", "serve", "up"):
        assert command in out, f"`mailexec --help` does not list {command}"
    run_ok(client, tag, ["migrate", "--help"], **unprivileged)
    run_ok(client, tag, ["serve", "--help"], **unprivileged)

    say(f"executor self-check as compose runs it: uid 0, only {' '.join(EXECUTOR_CAPS)}")
    executor = {
        "user": "0:0",
        "read_only": True,
        "cap_drop": ["ALL"],
        "cap_add": EXECUTOR_CAPS,
        # apparmor=unconfined as compose: the default profile denies the runs' mounts.
        "security_opt": ["no-new-privileges", "apparmor=unconfined"],
        "network_mode": "none",
        "environment": {
            # The executor refuses to start without it (it could not read policy).
            "MAILEXEC_SERVICE_TOKEN": "image-check",
        },
    }
    # `--self-check` checks the trusted dir for root's ownership alone (it never drops), so
    # it gets a root-owned tmpfs; `serve executor` below gets the image's own directory.
    self_check_tmpfs = {"/tmp": "rw,size=64m,mode=1777", "/var/lib/mailexec/trusted": "rw,size=64m"}
    status, out = run(client, tag, ["serve", "executor", "--self-check"], tmpfs=self_check_tmpfs,
                      **executor)
    print(out, end="")
    if status == 64 and "no self-check" in out:
        say("`serve executor --self-check` is not there yet: importing the sandbox instead")
        probe = "import services.executor.sandbox as s; print('spawner', s.verify_helper(s.spawner_path()))"
        print(run_ok(client, tag, ["-c", probe], entrypoint=["python3"], tmpfs=self_check_tmpfs,
                     **executor), end="")
    else:
        ok, verdict = self_check_verdict(status, out)
        say(f"executor self-check: {verdict}")
        if not ok:
            raise SystemExit(f"executor self-check failed in {tag}")
    check_privilege_drop(client, tag, executor)
    size = image.attrs["Size"]
    say(f"image {tag}: {size / 1e6:.0f} MB ({size} bytes)")


DROPPED_LINE = "privileges dropped for good"


def check_privilege_drop(client: docker.DockerClient, tag: str, executor: dict[str, Any]) -> None:
    """`serve executor` as compose runs it, with the trusted dir on a fresh named volume
    (which the engine fills from the image: the service user's, 0755): it must start the
    spawner, drop to the service user with no capability left, and then fail only for want
    of a database (there is none here). Read back from /proc/1/status inside the container."""
    say("executor start and privilege drop as compose runs it (trusted dir: a named volume)")
    volume = client.volumes.create()
    container = client.containers.create(
        tag,
        command=["serve", "executor"],
        ulimits=ULIMITS,
        tmpfs={"/tmp": "rw,size=64m,mode=1777"},
        volumes={volume.name: {"bind": "/var/lib/mailexec/trusted", "mode": "rw"}},
        **{
            **executor,
            "environment": {
                **executor["environment"],
                "MAILEXEC_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                "MAILEXEC_AMQP_URL": "amqp://nobody:none@127.0.0.1:1/",
            },
        },
    )
    try:
        container.start()
        deadline = time.monotonic() + 60
        output = ""
        while DROPPED_LINE not in output:
            container.reload()
            output = container.logs(stdout=True, stderr=True).decode(errors="replace")
            if container.status not in ("created", "running") or time.monotonic() > deadline:
                raise SystemExit(f"the executor did not drop its privileges in {tag}:\n{output}")
            time.sleep(0.3)
        status_code, raw = container.exec_run(["cat", "/proc/1/status"])
        if status_code != 0:
            raise SystemExit(f"cannot read /proc/1/status in {tag}: {raw!r}")
        fields = dict(
            (key, value.strip())
            for key, _, value in (line.partition(":") for line in raw.decode().splitlines())
        )
        ids = f"{SERVICE_UID}\t{SERVICE_UID}\t{SERVICE_UID}\t{SERVICE_UID}"
        problems = [f"{key} {fields.get(key)!r}" for key in ("Uid", "Gid") if fields.get(key) != ids]
        problems += [
            f"{key} {fields.get(key)!r}"
            for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
            if int(fields.get(key) or "1", 16) != 0
        ]
        if fields.get("NoNewPrivs") != "1":
            problems.append("NoNewPrivs not set")
        for key in ("Uid", "CapEff", "CapBnd", "NoNewPrivs"):
            print(f"  executor pid 1 {key}: {fields.get(key)}")
        if problems:
            raise SystemExit(f"the executor's Python process kept privileges in {tag}: {problems}")
        say("executor dropped to the service user with every capability set empty")
    finally:
        container.remove(force=True)
        volume.remove(force=True)


# --------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("lock", help="write deploy/requirements.lock from this environment")
    base = sub.add_parser("base", help="make the local Debian base image with debootstrap")
    build_p = sub.add_parser("build", help="build deploy/Dockerfile")
    check_p = sub.add_parser("check", help="run the built image's checks and report its size")
    local = sub.add_parser("local", help="base + build + check, offline from Debian's packages")
    for p in (base, local):
        p.add_argument("--base-tag", default=LOCAL_BASE)
        p.add_argument("--suite", default="bookworm")
        p.add_argument("--mirror", default="http://deb.debian.org/debian")
    local.add_argument("--rebuild-base", action="store_true")
    for p in (build_p, check_p, local):
        p.add_argument("--tag", default=DEFAULT_TAG)
    build_p.add_argument("--base", default=None, help="BASE_IMAGE build argument")
    args = parser.parse_args(argv)

    if args.action == "lock":
        write_lock()
        return 0
    with engine() as client:
        if args.action == "base":
            build_base(client, args.base_tag, args.suite, args.mirror)
        elif args.action == "build":
            build(client, args.tag, args.base)
        elif args.action == "check":
            check(client, args.tag)
        else:
            if args.rebuild_base or not _has_image(client, args.base_tag):
                build_base(client, args.base_tag, args.suite, args.mirror)
            else:
                say(f"reusing base {args.base_tag} (--rebuild-base to make it anew)")
            build(client, args.tag, args.base_tag)
            check(client, args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
