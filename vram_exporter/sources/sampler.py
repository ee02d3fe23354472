"""NVML read off the event loop, with a time limit: a hung driver never hangs a scrape."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import replace

from .nvml import NvmlReader
from ..snapshot import GpuReading, NodeSnapshot

log = logging.getLogger(__name__)


class NvmlSampler:
    """Snapshots from one NvmlReader, one read at a time."""

    def __init__(self, reader: NvmlReader, timeout: float = 5.0) -> None:
        self._reader = reader
        self._timeout = timeout
        # One thread: a hung NVML call holds it, and every scrape meanwhile joins
        # the read in flight instead of piling more threads onto the driver.
        self._worker = DaemonWorker("nvml")
        self._inflight: asyncio.Future[NodeSnapshot] | None = None
        self._last_gpus: tuple[GpuReading, ...] = ()
        self._hung = False  # a read past the time limit: logged when it starts and when it ends

    @property
    def source(self) -> str:
        return self._reader.source

    async def snapshot(self) -> NodeSnapshot:
        """A fresh snapshot; on timeout or NVML failure, the last known GPUs marked down."""
        started = time.perf_counter()
        if self._inflight is None or self._inflight.done():
            loop = asyncio.get_running_loop()
            self._inflight = asyncio.wrap_future(self._worker.submit(self._reader.read), loop=loop)
        try:
            snap = await asyncio.wait_for(asyncio.shield(self._inflight), self._timeout)
        except TimeoutError:
            if not self._hung:
                log.warning("NVML read did not finish within %.1fs; the GPUs show as down until it does",
                            self._timeout)
                self._hung = True
            snap = NodeSnapshot(driver_version="", error="TIMEOUT", source=self.source)
        else:
            if self._hung:
                log.info("NVML answers again")
                self._hung = False
        snap = replace(snap, duration_seconds=time.perf_counter() - started)
        return self._remember(snap)

    def _remember(self, snap: NodeSnapshot) -> NodeSnapshot:
        if snap.ok:
            self._last_gpus = snap.gpus
            return snap
        # Keep GPUs seen before on the page as down, so vram_gpu_up goes to 0
        # instead of the series vanishing when the driver stops answering.
        down = tuple(replace(g, memory=None, processes=(), error=snap.error) for g in self._last_gpus)
        return replace(snap, gpus=down)

    def close(self) -> None:
        # On the NVML thread, after any read in flight: a read hung in the driver holds the reader's lock,
        # and shutting down must not wait for it.
        self._worker.submit(self._reader.close)
        self._worker.shutdown()


class DaemonWorker:
    """One daemon thread running calls one at a time. Not a ThreadPoolExecutor: the interpreter joins
    those at exit, so an NVML call hung in the driver would keep SIGTERM from ending the process."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, call) -> Future:
        future: Future = Future()
        self._calls.put((future, call))
        return future

    def shutdown(self) -> None:
        self._calls.put(None)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting scrape, as an executor does
                future.set_exception(exc)


class NoNvmlReader:
    """The reader of an exporter that reads no GPU (--no-collector.nvml: a cluster-only exporter that
    exports GPUStack's cluster-wide series from a host that is not a GPU node)."""

    source = "none (--no-collector.nvml)"

    def read(self) -> NodeSnapshot:
        return NodeSnapshot(driver_version="", source=self.source)

    def close(self) -> None:
        pass
