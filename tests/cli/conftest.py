"""One pipeline (policy, ingest, executor, notifier as real processes) shared by the CLI tests.

Service start-up dominates these tests, so the four start once for this package, in
parallel, and stop when it ends (so they never consume other packages' queues).
Tests still get a clean database (``clean_db``); settings they rely on are set through the
API so the services' caches hear about it (policy.changed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ServiceProcess, free_port

EXECUTOR_ENV = {
    "MAILEXEC_EXECUTOR_RETRY_DELAYS_S": "1,1,2",
    "MAILEXEC_EXECUTOR_HELD_RECHECK_S": "1",
    "MAILEXEC_EXECUTOR_CONCURRENCY": "8",
}
MAX_MESSAGE_BYTES = 4000  # small, so the 413 path is cheap to test


@dataclass
class Pipeline:
    env: dict[str, str]
    smtp_port: int
    log_dir: Path
    procs: dict[str, ServiceProcess] = field(default_factory=dict)

    def metrics_urls(self) -> dict[str, str]:
        return {name: p.url + "/metrics" for name, p in self.procs.items()}

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for f in sorted(self.log_dir.glob("*.log")):
            parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


@pytest.fixture(scope="package")
def pipeline(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    log_dir = tmp_path_factory.mktemp("cli-pipeline")
    smtp_port = free_port()  # the Postfix test's instance listens here; until then DSNs wait
    env = dict(os.environ)
    env.update(mx_env)
    env.update(
        {
            "MAILEXEC_INGEST_PORT": str(free_port()),
            "MAILEXEC_POLICY_PORT": str(free_port()),
            "MAILEXEC_NOTIFIER_PORT": str(free_port()),
            "MAILEXEC_EXECUTOR_METRICS_PORT": str(free_port()),
            "MAILEXEC_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
            "MAILEXEC_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
            "MAILEXEC_DSN_AGGREGATE_WINDOW_S": "0.5",
            "MAILEXEC_LOG_LEVEL": "info",
            "MAILEXEC_SANDBOX_CGROUP_ROOT": f"/sys/fs/cgroup/unified/mailexec-clitest-{os.getpid()}",
            **EXECUTOR_ENV,
        }
    )
    env["MAILEXEC_POLICY_URL"] = f"http://127.0.0.1:{env['MAILEXEC_POLICY_PORT']}"
    env["MAILEXEC_INGEST_URL"] = f"http://127.0.0.1:{env['MAILEXEC_INGEST_PORT']}"
    pipe = Pipeline(env=env, smtp_port=smtp_port, log_dir=log_dir)
    try:
        for name in ("policy", "ingest", "executor", "notifier"):
            pipe.procs[name] = ServiceProcess(name, dict(env), log_dir / f"{name}.log").start(
                wait_ready=False
            )
        for proc in pipe.procs.values():
            proc.wait_ready(90)
        yield pipe
    finally:
        for proc in reversed(list(pipe.procs.values())):
            proc.stop()
        root = Path(env["MAILEXEC_SANDBOX_CGROUP_ROOT"])
        for child in sorted(root.glob("**/"), key=lambda p: -len(p.parts)):
            try:
                child.rmdir()
            except OSError:
                pass


@pytest.fixture
def env(pipeline: Pipeline, clean_db: None) -> dict[str, str]:
    """The pipeline's environment, on an empty database."""
    return dict(pipeline.env)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A world-searchable temporary directory (other uids must reach into it)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="mailexec-clitest-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
