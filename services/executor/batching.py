"""Natural batching: requests that arrive while one batch is being written ride the next.

No timer and no fixed batch size to tune: with one job in flight every request is
flushed at once (latency of a single round trip); under load each flush carries
everything that queued up during the previous one, so the number of database round
trips per delivery falls as the rate rises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")

log = logging.getLogger(__name__)


class Batcher(Generic[Req, Res]):
    def __init__(
        self,
        name: str,
        flush: Callable[[Sequence[Req]], Awaitable[Sequence[Res]]],
        *,
        max_batch: int = 512,
    ) -> None:
        self.name = name
        self._flush = flush
        self._max = max_batch
        self._pending: list[tuple[Req, asyncio.Future[Res]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, fut in self._pending:
            if not fut.done():
                fut.cancel()
        self._pending.clear()

    async def submit(self, req: Req) -> Res:
        fut: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._pending.append((req, fut))
        self._wakeup.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # one loop turn lets jobs that became ready together join the batch
            await asyncio.sleep(0)
            while self._pending:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                live = [(r, f) for r, f in batch if not f.done()]
                if not live:
                    continue
                try:
                    results = await self._flush([r for r, _ in live])
                except asyncio.CancelledError:
                    for _, f in live:
                        if not f.done():
                            f.cancel()
                    raise
                except Exception as exc:  # the callers decide (defer / requeue)
                    for _, f in live:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for (_, f), res in zip(live, results, strict=True):
                    if not f.done():
                        f.set_result(res)
