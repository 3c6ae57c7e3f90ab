"""A background task that runs one coroutine every so often (the retention purges of
ingest and the notifier), off every request path.

- The first run starts after a random part of the interval, so replicas started
  together don't purge in step.
- A run that raises is logged and counted; the next one comes at the next interval: a
  purge never stops for good because the database was away once.
- :meth:`Periodic.stop` cancels a run in progress: a purge works in small transactions,
  so a cancelled one leaves nothing half done (its open transaction rolls back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

log = logging.getLogger("mailexec.periodic")


class Periodic:
    def __init__(self, name: str, step: Callable[[], Awaitable[object]], interval_s: float,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.name = name
        self.step = step
        self.interval_s = max(0.05, interval_s)
        self.on_error = on_error
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        await asyncio.sleep(random.uniform(0, self.interval_s))
        while True:
            try:
                await self.step()
            except Exception as exc:
                log.warning("%s failed; trying again in %.0f s", self.name, self.interval_s,
                            extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
                if self.on_error is not None:
                    self.on_error(exc)
            await asyncio.sleep(self.interval_s)
