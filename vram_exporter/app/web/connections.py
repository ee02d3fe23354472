"""A bound on the connections held open at once, kept below the open-files limit.

Past the open-files limit accept() fails: new connections wait in the kernel's queue until idle ones time
out, and asyncio logs the failure with a traceback at every try (tens of thousands in seconds). So the
server holds at most ``limit`` connections, below the open-files limit whatever --web.max-connections says.
When one more comes, the oldest idle connection (between two requests, or one that has sent nothing yet)
is closed to make room; when none is idle, the newcomer is. Should accept() still run out of files (the
exporter's own files count too), asyncio tries again a second later; that is logged once when it starts
and once when it ends, never with a traceback.

Nothing here imports aiohttp: the server (app/server.py) hands over its connections as they come and go.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Open files left for the exporter's own use whatever the bound: NVML's device files, the connections to
# GPUStack and to each vLLM, the event loop's, the log.
FILES_KEPT = 64
BACKLOG = 128  # connections the kernel holds before they are accepted (aiohttp's default), at most
# aiohttp closes a connection that sends nothing for 75 s; 20 s is still longer than a 15 s scrape
# interval, so a scraper keeps its connection from one scrape to the next.
IDLE_TIMEOUT_SECONDS = 20.0
OUT_OF_FILES = "socket.accept() out of system resource"  # asyncio's message when accept() fails so
CALM_SECONDS = 5.0  # accept() working this long after it failed: the problem is over (said once)


@dataclass(frozen=True, slots=True)
class Bound:
    connections: int  # held open at once (0: no bound)
    backlog: int  # waiting in the kernel, and accepted at once in one turn of the event loop


def bound(flag: int) -> Bound:
    """``flag`` (0: no bound of its own), kept below the open-files limit: connections held open, those
    accepted in a burst before the bound sees them (a few backlogs' worth) and the exporter's own files
    all fit under it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return Bound(flag, BACKLOG)
    room = max(soft - FILES_KEPT, soft // 2)
    backlog = max(1, min(BACKLOG, room // 8))
    fits = max(1, room - 3 * backlog)
    if flag and flag <= fits:
        return Bound(flag, backlog)
    log.info("serving at most %d connections at once: the open-files limit is %d", fits, soft)
    return Bound(fits, backlog)


class Connections:
    """The open connections, oldest first, and which of them are answering a request."""

    def __init__(self, bound: Bound) -> None:
        self.limit = bound.connections  # 0: none
        self.backlog = bound.backlog
        self._open: dict[object, object] = {}  # connection -> its transport; dicts keep the order they came in
        self._answering: set[object] = set()
        self._at_limit = False
        self._out_of_files_since: float | None = None  # the last failed accept() of the problem going on

    def made(self, connection, transport) -> None:
        self._open[connection] = transport
        failed = self._out_of_files_since
        if failed is not None and time.monotonic() - failed > CALM_SECONDS:
            self._out_of_files_since = None
            log.info("accepting connections again: open files are available")
        if self.limit and len(self._open) > self.limit:
            self._make_room(connection)

    def lost(self, connection) -> None:
        self._open.pop(connection, None)
        self._answering.discard(connection)
        if self._at_limit and len(self._open) <= self.limit * 3 // 4:  # a margin: no line per connection
            self._at_limit = False
            log.info("connections back under the limit (%d open of %d)", len(self._open), self.limit)

    def answering(self, connection) -> None:
        self._answering.add(connection)

    def answered(self, connection) -> None:
        self._answering.discard(connection)

    def watch(self, server) -> None:
        """Follow an aiohttp server's connections as they come and go (its own bookkeeping first)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(connection, transport) -> None:
            made(connection, transport)
            self.made(connection, transport)

        def connection_lost(connection, exc=None) -> None:
            lost(connection, exc)
            self.lost(connection)

        server.connection_made, server.connection_lost = connection_made, connection_lost

    def quiet_accept_failures(self, loop, context: dict) -> None:
        """The event loop's exception handler: accept() out of files said once, anything else as asyncio would."""
        if not self._accept_failed(context):
            loop.default_exception_handler(context)

    def _accept_failed(self, context: dict) -> bool:
        """True when asyncio's error is accept() out of files (then said once, not at every try)."""
        if context.get("message") != OUT_OF_FILES:
            return False
        if self._out_of_files_since is None:
            log.warning("cannot accept connections: %s (open-files limit reached; %d connections open); "
                        "trying again every second", context.get("exception"), len(self._open))
        self._out_of_files_since = time.monotonic()
        return True

    def _make_room(self, newcomer) -> None:
        if not self._at_limit:
            self._at_limit = True
            log.warning("connections at the limit (%d, from --web.max-connections and the open-files limit): "
                        "the oldest idle ones are closed to make room", self.limit)
        victim = next((c for c, transport in self._open.items() if c is not newcomer and self._idle(c, transport)),
                      newcomer)
        transport = self._open.pop(victim)
        self._answering.discard(victim)
        transport.abort()  # at once: an idle connection has nothing to finish, and its file is what is short

    def _idle(self, connection, transport) -> bool:
        # Between requests, and the last answer all handed to the kernel.
        return connection not in self._answering and not transport.get_write_buffer_size()
