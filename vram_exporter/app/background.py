"""Work the server does on its own, at an interval, from start-up to shutdown: one helper for every
such loop (the manifest watcher, the web config watcher, the GPUStack refresh, the vLLM readings), and
which first reads are not over yet (/-/ready). Nothing upstream is read before the port answers: an
upstream's first read is a step (``step_first``), never an ``at_start``."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[object] | object]
T = TypeVar("T")


def every(interval: float, step: Step, what: str, *, at_start: Step | None = None, at_stop: Step | None = None,
          step_first: bool = False) -> Callable[[object], AsyncIterator[None]]:
    """An aiohttp cleanup context: ``at_start`` before the server answers, then ``step`` every
    ``interval`` seconds (first at once with ``step_first``, else after one interval), and ``at_stop``
    at shutdown. A step that raises is logged (``what`` names it) and the loop goes on: one bad
    answer or file must not stop the work for good."""

    async def context(app) -> AsyncIterator[None]:
        if at_start is not None:
            await _call(at_start)
        task = asyncio.create_task(_loop(interval, step, what, step_first))
        yield
        task.cancel()
        if at_stop is not None:
            await _call(at_stop)

    return context


async def _loop(interval: float, step: Step, what: str, step_first: bool) -> None:
    if not step_first:
        await asyncio.sleep(interval)
    while True:
        try:
            await _call(step)
        except Exception:  # noqa: BLE001 - the loop outlives any one step
            log.exception("%s failed", what)
        await asyncio.sleep(interval)


async def _call(step: Step) -> None:
    result = step()
    if inspect.isawaitable(result):
        await result


class FirstReads:
    """The upstreams whose first read is not over yet, whatever it found (for /-/ready)."""

    def __init__(self) -> None:
        self._waiting: list[str] = []

    def track(self, name: str, read: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        """``read``, marking ``name``'s first read over when it returns or fails."""
        self._waiting.append(name)

        async def step() -> T:
            try:
                return await read()
            finally:
                if name in self._waiting:
                    self._waiting.remove(name)

        return step

    def waiting(self) -> list[str]:
        return list(self._waiting)
