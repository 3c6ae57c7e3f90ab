"""`make image-push REGISTRY=…`: the documented way to get the image into a registry a
cluster pulls from, run against Debian's docker-registry on localhost with podman.

The image pushed here is a one-file stand-in tagged as `IMAGE` (building the real one
takes minutes: `make image-check`; the closing note of issue 16 shows the real image
pushed the same way). What is tested is what the operator runs: the make target, the
tag it makes, the push over plain HTTP (`TLS_VERIFY=false`), the chart flags it prints,
and that a pull from the registry gives back the same image.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="podman's root storage and the registry need root"),
    pytest.mark.skipif(shutil.which("podman") is None,
                       reason="podman is not installed (.ci/run installs it: apt-get install podman)"),
    pytest.mark.skipif(shutil.which("docker-registry") is None,
                       reason="Debian's docker-registry is not installed (.ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check,
                          timeout=120)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """docker-registry on 127.0.0.1:<free port>, plain HTTP, storage in tmp_path."""
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp_path / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://{base}/v2/", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"docker-registry exited: {proc.stderr.read().decode()}"
                                if proc.stderr else "docker-registry exited")
                time.sleep(0.1)
        else:
            pytest.fail("docker-registry did not answer on /v2/ within 10 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def stand_in_image(tmp_path: Path) -> Iterator[str]:
    """A one-file image under a name of its own (never the developer's localhost/mailexec:dev)."""
    name = f"localhost/mailexec-pushtest:{os.getpid()}"
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        data = b"mailexec image-push test\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    podman("import", str(tarball), name)
    try:
        yield name
    finally:
        podman("rmi", "--force", name, check=False)


def test_image_push_puts_the_image_where_the_chart_pulls_it(
    registry: str, stand_in_image: str
) -> None:
    target = f"{registry}/team/mailexec:t1"
    try:
        done = subprocess.run(
            ["make", "-s", "image-push", f"REGISTRY={registry}/team", "TAG=t1",
             "TLS_VERIFY=false", f"IMAGE={stand_in_image}"],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        # the chart flags it prints point at what it pushed
        assert (f"--set image.registry={registry} --set image.repository=team/mailexec "
                "--set image.tag=t1") in done.stdout, done.stdout
        with urllib.request.urlopen(f"http://{registry}/v2/team/mailexec/tags/list",
                                    timeout=5) as r:
            assert json.load(r)["tags"] == ["t1"]
        source_id = podman("image", "inspect", "--format", "{{.Id}}", stand_in_image).stdout
        podman("rmi", "--force", target)  # pull it back from the registry, not the cache
        pulled = podman("pull", "--tls-verify=false", "--quiet", target)
        assert pulled.stdout.strip() == source_id.strip(), (pulled.stdout, source_id)
    finally:
        podman("rmi", "--force", target, check=False)


def test_image_push_without_a_registry_says_how_to_call_it() -> None:
    done = subprocess.run(["make", "-s", "image-push"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "usage: make image-push REGISTRY=host[:port][/path]" in done.stdout + done.stderr
