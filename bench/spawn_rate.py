"""How many trivial program runs per second one executor process sustains.

Runs ``N`` deliveries of a compiled ``int main(void){return 0;}`` through the real
path (spawner, privilege drop to uid 64999, namespaces/cgroup as configured,
``concurrency`` at once from one asyncio loop) and prints runs/s.

    .venv/bin/python bench/spawn_rate.py [--runs 3000] [--concurrency 64] [--repeat 3]
        [--uvloop] [--no-cgroup] [--no-netns] [--helper PATH]       (as root)

``--helper`` runs another build of ``mailexec-spawner`` (root-owned, in a root-owned
directory), to compare two builds on the same machine one after the other.

Other load on the machine lowers runs/s; the CPU per run it also prints does not
depend much on it (2 cores / CPU per run = the ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_cpu_s, tree_cpu_s  # noqa: E402
from services.executor.sandbox import RunLimits, Sandbox  # noqa: E402
from shared.settings import Settings  # noqa: E402


def build_trivial(workdir: Path) -> Path:
    source = workdir / "true.c"
    source.write_text("int main(void) { return 0; }\n")
    binary = workdir / "true"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(source)], check=True)
    os.chmod(workdir, 0o755)
    return binary


async def bench(runs: int, concurrency: int, settings: Settings,
                helper: Path | None = None) -> float:
    sandbox = Sandbox.start(settings, helper=helper)
    limits = RunLimits.from_settings(settings, timeout_s=10, max_output_bytes=65536)
    with tempfile.TemporaryDirectory() as tmp:
        program_fd = os.open(build_trivial(Path(tmp)), os.O_RDONLY | os.O_CLOEXEC)
        body = b"Subject: bench\n\nhello\n"
        gate = asyncio.Semaphore(concurrency)
        failures = 0

        async def one() -> None:
            nonlocal failures
            async with gate:
                result = await sandbox.run(program_fd, "true", 64999, 64999, "/nonexistent",
                                           b"Delivered-To: x\n", body, limits)
                failures += not result.ok

        for _ in range(200):  # warm-up
            await one()
        spawner = sandbox.spawner.pid if sandbox.spawner else None
        cpu_before, machine_before = os.times(), machine_cpu_s()
        spawner_before = tree_cpu_s([spawner]) if spawner else 0.0
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(runs)))
        elapsed = time.perf_counter() - started
        cpu_after, machine_after = os.times(), machine_cpu_s()
        spawner_after = tree_cpu_s([spawner]) if spawner else 0.0
        os.close(program_fd)
    sandbox.close()
    print(f"isolation: {sandbox.isolation}")
    print(f"{runs} runs, concurrency {concurrency}, {elapsed:.2f} s, failures {failures}")
    parent = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / runs
    children = (cpu_after.children_user + cpu_after.children_system
                - cpu_before.children_user - cpu_before.children_system) / runs
    spawned = (spawner_after - spawner_before) / runs
    machine = (machine_after - machine_before) / runs
    print(f"CPU per run: executor {parent * 1e3:.3f} ms, spawner and its runs "
          f"{(spawned + children) * 1e3:.3f} ms, machine-wide {machine * 1e3:.3f} ms"
          f" (load average now {os.getloadavg()[0]:.2f}; other load lowers runs/s)")
    print(f"{runs / elapsed:.0f} runs/s")
    return runs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-cgroup", action="store_true")
    parser.add_argument("--no-netns", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as services may")
    parser.add_argument("--repeat", type=int, default=1, help="report the best of N rounds")
    parser.add_argument("--helper", type=Path, help="another mailexec-spawner build")
    args = parser.parse_args()
    settings = Settings(sandbox_network=not args.no_netns,
                        executor_instance=f"bench-spawn-{os.getpid()}")
    if args.no_cgroup:
        settings = settings.model_copy(update={"sandbox_cgroup_root": "/nonexistent/cgroup"})
    runner = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    rates = [runner(bench(args.runs, args.concurrency, settings, args.helper))
             for _ in range(args.repeat)]
    if args.repeat > 1:
        print(f"best of {args.repeat}: {max(rates):.0f} runs/s")


if __name__ == "__main__":
    main()
