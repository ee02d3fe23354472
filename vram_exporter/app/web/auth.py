"""Basic auth with bcrypt that a flood of wrong passwords cannot turn into a wait for known users, and
exporter-toolkit's request rate limiter.

- Verified credentials are looked up on the event loop, before anything waits: a known user never
  queues behind guessers.
- bcrypt runs in its own small thread pool (half the cores); at most ``max_waiting`` checks queue behind
  it, and the excess is answered at once (the caller sends 429 with Retry-After).
- Identical checks in flight share one bcrypt run (150 scrapes with the same credentials cost one).
- Results are cached under a digest of (user, hash, password), length-prefixed (so a user name that
  contains a hash cannot collide, CVE-2022-46146), and include the hash, so a changed password in a
  reloaded file never matches an old entry. Good and bad results live in separate bounded caches:
  guessers with fresh passwords evict only each other, never a verified login.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping

import bcrypt

# What unknown users are checked against, so that they cost bcrypt's time like known ones (cost 10, the
# toolkit's documented default; the toolkit uses a fixed hash of "fakepassword" the same way).
_DUMMY_HASH = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=10)).decode()
CACHE_SIZE = 1024


def _key(user: str, hashed: str, password: str) -> bytes:
    digest = hashlib.sha256()
    for part in (user, hashed, password):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()


class _Bounded(OrderedDict):
    def put(self, key: bytes) -> None:
        self[key] = True
        self.move_to_end(key)
        while len(self) > CACHE_SIZE:
            self.popitem(last=False)


class Overloaded(Exception):
    """More bcrypt checks are waiting than allowed: answer 429 now rather than queue."""


class BasicAuth:
    def __init__(self, *, workers: int | None = None, max_waiting: int | None = None) -> None:
        self.workers = workers or max(1, (os.cpu_count() or 2) // 2)
        self.max_waiting = self.workers * 4 if max_waiting is None else max_waiting
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="bcrypt")
        self._good = _Bounded()
        self._bad = _Bounded()
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}
        self._queued = 0  # bcrypt checks submitted and not finished
        self.rejected = 0  # answered Overloaded (for tests and the benchmark)

    async def check(self, users: Mapping[str, str], user: str, password: str) -> bool:
        """True if ``user`` and ``password`` match; raises Overloaded when too many checks wait."""
        hashed = users.get(user)
        key = _key(user, hashed or _DUMMY_HASH, password)
        if key in self._good:
            return hashed is not None
        if key in self._bad:
            return False
        shared = self._inflight.get(key)
        if shared is not None:
            return await asyncio.shield(shared) and hashed is not None
        if self._queued >= self.workers + self.max_waiting:
            self.rejected += 1
            raise Overloaded()
        loop = asyncio.get_running_loop()
        self._queued += 1
        future = loop.run_in_executor(self._pool, _checkpw, password, hashed or _DUMMY_HASH)
        self._inflight[key] = future

        def done(f: asyncio.Future[bool]) -> None:  # also when the asking request went away meanwhile
            self._queued -= 1
            self._inflight.pop(key, None)
            if not f.cancelled() and f.exception() is None:
                (self._good if f.result() and hashed is not None else self._bad).put(key)

        future.add_done_callback(done)
        return await asyncio.shield(future) and hashed is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _checkpw(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode("utf-8", "surrogatepass"), hashed.encode())
    except ValueError:
        return False


class RateLimiter:
    """golang.org/x/time/rate's token bucket as exporter-toolkit uses it: one token every ``interval``
    seconds, at most ``burst`` saved; with burst 0 nothing passes (as in Go)."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval, self.burst = interval, burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) / self.interval)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
