"""Helpers more than one test package uses (fixtures stay in the conftest files)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from tests.conftest import free_port


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


class TcpProxy:
    """A TCP forwarder we control: ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await splice(reader, writer, self.target, self._writers)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()
