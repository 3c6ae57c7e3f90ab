"""deploy/Dockerfile and its lock file, read statically (building the image is
`make image-check`, not part of the default test run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text()
LOCK = REPO / "deploy" / "requirements.lock"


def stages() -> dict[str, str]:
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_base_image_is_a_build_argument_defaulting_to_slim_python() -> None:
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", DOCKERFILE, flags=re.M)
    assert set(stages()) == {"build", "runtime"}
    assert DOCKERFILE.count("FROM ${BASE_IMAGE}") == 2


def test_dependencies_come_from_the_lock_only() -> None:
    build = stages()["build"]
    assert "pip install --no-deps -r /tmp/requirements.lock" in build
    assert "pip install --no-deps /src" in build
    assert "pip check" in build


def test_runtime_stage_is_compiler_free_and_non_root() -> None:
    runtime = stages()["runtime"]
    assert "bubblewrap" not in runtime  # the sandbox is the spawner alone
    # What the egress namespace is built with (services/executor/egress.py: `ip`, libnftables).
    assert re.search(r"install -y --no-install-recommends[^&]*\biproute2\b[^&]*\blibnftables1\b", runtime)
    assert not re.search(r"\b(gcc|libc6-dev|build-essential)\b", runtime)
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.M)
    assert re.search(r"^HEALTHCHECK ", runtime, flags=re.M)
    assert "org.opencontainers.image.title" in runtime
    assert 'ENTRYPOINT ["mailexec"]' in runtime


def test_the_spawner_is_built_where_the_executor_looks_for_it(tmp_path: Path) -> None:
    """The image has no compiler: the spawner must be prebuilt, root's, at the path the
    sandbox checks (<sys.prefix>/libexec, venv at /opt/venv), or the executor refuses to
    start. The build stage's RUN is executed here, into a temp dir."""
    from services.executor import sandbox

    build = stages()["build"]
    assert "python3 -m venv /opt/venv" in build
    assert "COPY --from=build /opt/venv /opt/venv" in stages()["runtime"]
    (run,) = [r for r in re.split(r"^RUN ", build, flags=re.M) if "mkdir -p /opt/venv/libexec" in r]
    run = re.split(r"^\s*$", run, flags=re.M)[0].replace("\\\n", " ")  # Docker joins continued lines
    libexec = tmp_path / "libexec"
    script = run.replace("/opt/venv/libexec", str(libexec)).replace("python -c", f"{sys.executable} -c")
    done = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    built = libexec / sandbox.spawner_path().name
    assert built.is_file() and os.access(built, os.X_OK)
    assert built.stat().st_mode & 0o777 == 0o755 and built.stat().st_uid == 0
    assert not (libexec / "mailexec-launch").exists()  # one helper, one run path


def test_the_executor_c_sources_ship_with_the_headers_they_include() -> None:
    # the image compiles the installed spawner.c, which includes child_recipe.h from its dir
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package in ("services.executor", "services.executor.sandbox"):
        directory = REPO.joinpath(*package.split("."))
        for source in sorted(directory.glob("*.c")):
            included = re.findall(r'^#include "([^"]+)"', source.read_text(), flags=re.M)
            for name in [source.name, *included]:
                assert (directory / name).is_file(), name
                assert any(fnmatch(name, g) for g in globs[package]), name


def test_lock_pins_every_runtime_dependency_at_the_project_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = locked()
    for line in project["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} missing from {LOCK.name}"
        assert req.specifier.contains(pins[name]), (req.name, pins[name])


def test_lock_holds_no_test_or_tooling_packages() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    test_only = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["test"]}
    test_only |= {canonicalize_name(n) for n in ("pytest", "ruff", "mypy", "mailexec", "pip")}
    assert not test_only & set(locked())


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.M):
        for path in source.split():
            assert path.rstrip("/") in allowed, path
            assert (REPO / path).exists(), path


def test_trusted_dir_is_the_executor_service_users_from_the_start() -> None:
    """The executor's Python process writes the trusted copies after dropping to the image's
    mailexec user (10001); it holds no CHOWN, so the image's directory (and a named volume
    filled from it) must be that user's already, 0755 under root's parents."""
    runtime = stages()["runtime"]
    assert re.search(r"useradd --system --uid 10001 --gid 10001 ", runtime)
    assert re.search(r"install -d -o 0 -g 0 -m 0755 /var/lib/mailexec \\$", runtime, flags=re.M)
    assert re.search(r"install -d -o 10001 -g 10001 -m 0755 /var/lib/mailexec/trusted$", runtime,
                     flags=re.M)
    assert re.search(r"MAILEXEC_TRUSTED_DIR=/var/lib/mailexec/trusted$", runtime, flags=re.M)


def test_image_check_runs_the_executor_with_the_compose_capabilities() -> None:
    """`make image-check` must start the executor as compose does, or it misses a missing
    capability (it once ran with SETUID SETGID KILL only, and never reached the drop)."""
    import yaml

    sys.path.insert(0, str(REPO / "tools"))
    try:
        import image
    finally:
        sys.path.remove(str(REPO / "tools"))
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    assert sorted(image.EXECUTOR_CAPS) == sorted(compose["services"]["executor"]["cap_add"])
    assert f"{image.SERVICE_UID}:{image.SERVICE_UID}" == compose["x-service-user"]
    source = (REPO / "tools" / "image.py").read_text()
    assert "MAILEXEC_SANDBOX_NETWORK" not in source  # isolation stays on, as shipped


def test_every_service_port_is_exposed_and_health_checked() -> None:
    """The image serves all five services (the console on 8029 included): each port is
    EXPOSEd and the HEALTHCHECK finds /healthz on whichever runs."""
    import yaml

    from shared.settings import Settings

    runtime = stages()["runtime"]
    (exposed,) = re.findall(r"^EXPOSE (.+)$", runtime, flags=re.M)
    ports = {
        name: Settings.model_fields[f"{name}_port"].default
        for name in ("ingest", "policy", "notifier", "executor_metrics", "console", "lmtp")
    }
    assert {int(p) for p in exposed.split()} == set(ports.values())
    (check,) = re.findall(r"^HEALTHCHECK .*\n\s+CMD (.+)$", runtime, flags=re.M)
    (probed,) = re.findall(r"for port in \(([0-9, ]+)\)", check)
    assert {int(p) for p in probed.split(",")} == set(ports.values()) - {ports["lmtp"]}
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    assert compose["services"]["console"]["command"] == ["serve", "console"]


def test_the_console_pages_ship_in_the_installed_package() -> None:
    """The image installs the project (`pip install /src`): the console's templates and
    static files reach it only through [tool.setuptools.package-data]."""
    directory = REPO / "services" / "console"
    shipped = [p for sub in ("templates", "static") for p in (directory / sub).rglob("*") if p.is_file()]
    if not shipped:
        pytest.skip("services/console has no templates or static files yet")
    import glob

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = [*globs.get("services.console", []), *globs.get("*", [])]
    # setuptools expands each pattern with glob(recursive=True) in the package's directory.
    included = {Path(f) for g in patterns for f in glob.glob(str(directory / g), recursive=True)}
    missing = sorted(str(p.relative_to(directory)) for p in shipped if p not in included)
    assert not missing, f"not in package-data of services.console: {missing[:10]}"
