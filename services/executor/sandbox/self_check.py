"""``mailexec serve executor --self-check``: one probe through the real run path.

Runs a ``#!/bin/sh`` probe as uid 65534 through :class:`Sandbox` and reports what
actually held: privilege drop, no_new_privs, umask, the network namespace, the PID
namespace (the probe is a child of its slot's pid 1, ``/proc`` shows nothing else), the private /tmp
and /run, and whether a ``setsid`` escapee it leaves behind was killed.
Trusts nothing the probe prints beyond its own run; the escapee is looked for in
the executor's ``/proc`` and killed if found.
"""

from __future__ import annotations

import asyncio
import os
import signal

from services.executor.errors import ExecutorError
from services.executor.programs import sealed_memfd
from services.executor.sandbox.box import Sandbox
from services.executor.sandbox.runio import RunLimits
from shared.settings import Settings

_CHECK_SCRIPT = b"""#!/bin/sh
grep -E '^(Uid|Gid|Groups|NoNewPrivs):' /proc/self/status
echo "umask: $(umask)"
echo "ifaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
echo "pid: $$"
echo "procs: $(ls /proc | grep -c '^[0-9]')"
echo "tmp: $(ls -A /tmp | wc -l) $(ls -A /run | wc -l)"
setsid sleep 3117.5 </dev/null >/dev/null 2>&1 &
sleep 0.2
exit 0
"""
_CHECK_UID = 65534
_ESCAPEE_CMDLINE = b"sleep\x003117.5\x00"


def _escapees() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if cmdline.read() == _ESCAPEE_CMDLINE:
                        found.append(int(entry))
            except OSError:
                continue
    return found


async def async_self_check(settings: Settings, sandbox: Sandbox | None = None
                           ) -> dict[str, object]:
    """Run the probe as uid 65534 through ``sandbox`` (else a new one, closed after);
    report what works (``ok`` = every required layer)."""
    report: dict[str, object] = {"ok": False}
    own = sandbox is None
    if sandbox is None:
        try:
            sandbox = Sandbox.start(settings)
        except ExecutorError as exc:
            report["error"] = str(exc)
            return report
    report["isolation"] = sandbox.isolation
    fd = sealed_memfd("self-check", _CHECK_SCRIPT)
    try:
        limits = RunLimits.from_settings(settings, timeout_s=10, max_output_bytes=65536)
        result = await sandbox.run(fd, "self-check", _CHECK_UID, _CHECK_UID, "/nonexistent",
                                   b"", b"", limits)
    finally:
        os.close(fd)
        if own:
            sandbox.close()
    report["launch_error"] = result.launch_error
    lines = {k: v.strip() for k, v in
             (line.partition(":")[::2] for line in result.output.decode().splitlines())}
    ids = "\t".join([str(_CHECK_UID)] * 4)
    report["privilege_drop"] = (lines.get("Uid") == ids and lines.get("Gid") == ids
                                and lines.get("Groups") == "")
    report["no_new_privs"] = lines.get("NoNewPrivs") == "1"
    report["umask"] = lines.get("umask") == "0077"
    report["netns"] = lines.get("ifaces", "").split() == ["lo"] if settings.sandbox_network \
        else None
    # a child of its slot's pid 1 (never pid 1 itself), and /proc lists the run and nothing else
    report["pid_namespace"] = (lines.get("pid", "1").isdigit() and lines.get("pid") != "1"
                               and int(lines.get("procs") or 99) < 8)
    report["private_tmp"] = lines.get("tmp") == "0 0"
    for _ in range(40):  # a SIGKILLed escapee disappears once reaped
        if not (leftovers := _escapees()):
            break
        await asyncio.sleep(0.05)
    report["escapee_killed"] = not leftovers
    for pid in leftovers:  # the check must not leave its own escapee behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    report["cgroup_kill"] = bool(sandbox.isolation["cgroup_kill"])
    report["ok"] = (result.exit_status == 0 and result.launch_error is None
                    and all(report[k] is not False for k in
                            ("privilege_drop", "no_new_privs", "umask", "netns", "pid_namespace",
                             "private_tmp", "escapee_killed")))
    return report


def self_check(settings: Settings, sandbox: Sandbox | None = None) -> dict[str, object]:
    """What the sandbox does here. Keys: ok, isolation, launch_error, privilege_drop,
    no_new_privs, umask, netns (None when off), pid_namespace, private_tmp,
    escapee_killed, cgroup_kill, and error when the sandbox could not start at all."""
    return asyncio.run(async_self_check(settings, sandbox))
