"""Work in a worker thread that leaves the event loop its turn.

Under the GIL a thread computing in pure Python holds the interpreter until the next forced switch
(``sys.setswitchinterval``); the event loop, which serves /metrics and the liveness probe, waits
that long at every step of a request. Long loops in worker threads (the fix plans, the pages'
documents) go through ``yielding``: ``time.sleep(0)`` between two items releases the GIL, so the
event loop gets it within one item.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def yielding(items: Iterable[T]) -> Iterator[T]:
    for item in items:
        yield item
        time.sleep(0)
