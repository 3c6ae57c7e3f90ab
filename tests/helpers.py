"""Helpers more than one test package uses (fixtures stay in the conftest files)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path


def processes_of(uid: int, *, zombies: bool = False) -> list[int]:
    """PIDs of the processes whose real, effective or saved uid is ``uid``.

    Zombies (dead, not yet reaped) only with ``zombies=True``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
        if str(uid) in uids[1:4] and (zombies or "State:\tZ" not in status):
            found.append(int(entry))
    return found


async def splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 target: tuple[str, int], open_writers: set[asyncio.StreamWriter]) -> None:
    """Forward one accepted connection to ``target`` both ways until both directions end.

    Both ends' writers are in ``open_writers`` meanwhile, for a proxy to cut them.
    An unreachable target closes the accepted connection."""
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    open_writers.update((writer, up_writer))

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            dst.close()
            with contextlib.suppress(OSError):
                await dst.wait_closed()

    try:
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
    except asyncio.CancelledError:
        pass
    open_writers.difference_update((writer, up_writer))
