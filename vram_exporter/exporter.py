"""One scrape, start to finish, without any HTTP: read NVML off the event loop, build families, render.

The HTTP edge (server.py) calls ``Exporter.scrape()``; tests and benchmarks can
call it directly.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import NamedTuple

from .collector import (CollectResult, GpuDetail, ManifestStatus, ModelFamilies, exporter_families, gpu_families,
                        gpustack_families)
from .config import LoadedManifest, load_manifest
from .exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Renderer, wants_openmetrics
from .fixworker import FixWorker
from .fit.model import Cluster
from .fit.node import NodeFit, fit_node, live_values
from .gpustack_source import GpuStackSource, GpuStackView
from .nvml import NvmlReader
from .report import fit_report, gpustack_report
from .snapshot import GpuReading, NodeSnapshot
from .yamlfile import InputFileError

log = logging.getLogger(__name__)

# Fix searches missing for a model may run on the scrape itself for this long (a small manifest's
# fixes then show in its first scrape); whatever does not fit in it is searched in the background.
FIX_BUDGET_SECONDS = 0.05


class _Rendered(NamedTuple):
    """The last scrape's body but the exporter's own series, and what it was made from."""

    openmetrics: bool
    node: NodeFit | None
    manifest: LoadedManifest | None
    gpustack: GpuStackView | None
    fixes_version: int
    snapshot: NodeSnapshot
    body: bytes


@dataclass(frozen=True, slots=True)
class Scrape:
    body: bytes
    content_type: str
    snapshot: NodeSnapshot


class Exporter:
    """Owns the NVML reader and turns each scrape into an exposition body."""

    def __init__(
        self,
        reader: NvmlReader,
        *,
        manifest: LoadedManifest | None = None,
        nvml_timeout: float = 5.0,
        gpu_detail: GpuDetail = "all",
        gpustack: GpuStackSource | None = None,
    ) -> None:
        """``gpustack``: the models come from GPUStack's API; ``manifest`` is then the overlay (sizes)."""
        self._reader = reader
        self._manifest = manifest
        self._gpustack = gpustack
        self._manifest_status = ManifestStatus(True, time.time()) if manifest else None
        self._timeout = nvml_timeout
        # One thread: a hung NVML call holds it, and every scrape meanwhile joins
        # the read in flight instead of piling more threads onto the driver.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvml")
        self._inflight: asyncio.Future[NodeSnapshot] | None = None
        self._last_gpus: tuple[GpuReading, ...] = ()
        self._fixes = FixWorker()
        self._fits = FitCache()
        self._model_families = ModelFamilies(gpu_detail)
        self._renderers = {False: Renderer(), True: Renderer()}  # text, OpenMetrics
        self._tail_renderer = Renderer()
        self._last_content: _Rendered | None = None

    @property
    def source(self) -> str:
        return self._reader.source

    async def snapshot(self) -> NodeSnapshot:
        """A fresh snapshot; on timeout or NVML failure, the last known GPUs marked down."""
        started = time.perf_counter()
        if self._inflight is None or self._inflight.done():
            loop = asyncio.get_running_loop()
            self._inflight = asyncio.ensure_future(loop.run_in_executor(self._pool, self._reader.read))
        try:
            snap = await asyncio.wait_for(asyncio.shield(self._inflight), self._timeout)
        except TimeoutError:
            log.warning("NVML read did not finish within %.1fs", self._timeout)
            snap = NodeSnapshot(driver_version="", error="TIMEOUT", source=self.source)
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

    async def scrape(self, accept: str | None = None) -> Scrape:
        snap = await self.snapshot()
        openmetrics = wants_openmetrics(accept)
        # One manifest (and GPUStack view) for the whole scrape, even if a reload lands meanwhile.
        view = self._gpustack.view if self._gpustack else None
        manifest = self.node_manifest(view)
        started = time.perf_counter()
        node = self._fit_or_none(manifest, snap)
        results = {"nvml": CollectResult(snap.ok, snap.duration_seconds),
                   "fit": CollectResult(node is not None, time.perf_counter() - started)}
        if self._gpustack is not None:
            results["gpustack"] = CollectResult(self._gpustack.success, self._gpustack.duration_seconds)
        # Nothing read or decided has changed since the last scrape: its bytes are the answer.
        last = self._last_content
        if (last is not None and last.openmetrics == openmetrics and last.node is node and last.manifest is manifest
                and last.gpustack is view and last.fixes_version == self._fixes.version and last.snapshot == snap):
            content = last.body
        else:
            version = self._fixes.version
            families = self._content(snap, manifest, node, view)
            content = self._renderers[openmetrics].render(families, openmetrics, eof=False)
            self._last_content = _Rendered(openmetrics, node, manifest, view, version, snap, content)
        tail = self._tail_renderer.render(
            exporter_families(results, self._manifest_status, self._fixes.pending if manifest else None,
                              self._gpustack.last_success_timestamp if self._gpustack else None), openmetrics)
        return Scrape(content + tail, OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE, snap)

    @property
    def manifest(self) -> LoadedManifest | None:
        """The manifest file as loaded (with GPUStack as the source: the overlay)."""
        return self._manifest

    @property
    def gpustack(self) -> GpuStackSource | None:
        return self._gpustack

    def node_manifest(self, view: GpuStackView | None = None) -> LoadedManifest | None:
        """The models judged against this node: the manifest's, or GPUStack's node view."""
        if self._gpustack is None:
            return self._manifest
        view = view or self._gpustack.view
        return view.manifest if view else None

    def reload_manifest(self) -> bool:
        """Load the manifest file again; a bad one keeps the last good one serving. True on success."""
        if self._manifest is None:
            return False
        path = self._manifest.path
        try:
            manifest = load_manifest(path)
        except (InputFileError, OSError) as exc:
            log.error("manifest reload failed, keeping the last good one: %s", exc)
            self._manifest_status = ManifestStatus(False, self._manifest_status.success_timestamp)
            return False
        self._manifest = manifest  # one assignment: a scrape sees the old manifest or the new, never a mix
        self._manifest_status = ManifestStatus(True, time.time())
        log.info("manifest reloaded from %s (%d models)", path, len(manifest.models))
        return True

    @staticmethod
    def fit_with(manifest: LoadedManifest | None, snap: NodeSnapshot) -> NodeFit:
        """Both rulebooks on this snapshot; without a manifest, only the GPUs' bookings (GPUStack defaults)."""
        if manifest is None:
            return fit_node(snap, Cluster(), ())
        return fit_node(snap, manifest.cluster, manifest.models, manifest.booked)

    def report(self, snap: NodeSnapshot) -> dict:
        view = self._gpustack.view if self._gpustack else None
        manifest = self.node_manifest(view)
        report = fit_report(snap, self.fit_with(manifest, snap), manifest.models if manifest else ())
        if self._gpustack is not None:
            report["gpustack"] = gpustack_report(view, self._gpustack)
        return report

    def _fit_or_none(self, manifest: LoadedManifest | None, snap: NodeSnapshot) -> NodeFit | None:
        try:
            return self._fits.get(manifest, snap)
        except Exception:  # noqa: BLE001 - a rulebook bug must not take the GPU metrics down with it
            log.exception("fit model failed on this snapshot")
            return None

    def _content(self, snap: NodeSnapshot, manifest: LoadedManifest | None, node: NodeFit | None,
                 view: GpuStackView | None):
        """Every family but the exporter's own (those change at every scrape)."""
        bookings = {b.index: b for b in node.gpus} if node else {}
        yield from gpu_families(snap, bookings)
        if view is not None:
            yield from gpustack_families(view, snap)
        if node is not None and manifest is not None:
            free = {gpu.index: gpu.memory.free for gpu in snap.gpus if gpu.up}
            overhead = node.cluster.vllm_context_overhead
            lives = {fit.name: live_values(fit, free, overhead) for fit in node.models}
            budget = time.perf_counter() + FIX_BUDGET_SECONDS
            fixes = {spec.name: self._fixes.get(spec, fit, lives[fit.name], node, snap, budget)
                     for spec, fit in zip(manifest.models, node.models, strict=True)
                     if not (fit.schedulable and lives[fit.name].startable)}
            self._fixes.forget_except(set(fixes))
            yield from self._model_families.families(node, lives, fixes)

    @property
    def fixes(self) -> FixWorker:
        return self._fixes

    def close(self) -> None:
        self._fixes.close()
        self._reader.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class FitCache:
    """The fit model for the metrics, computed once per manifest and set of GPUs.

    Placement (GPUStack) and vLLM's KV check depend on the manifest and the GPUs' sizes, which change
    rarely; free memory changes at every scrape and only moves vLLM's start-up check, which the
    collector refreshes from the cached fit (``live_values``).
    """

    def __init__(self) -> None:
        self._manifest: LoadedManifest | None = None  # held, so that identity means "the same manifest"
        self._key: tuple | None = None
        self._node: NodeFit | None = None

    def get(self, manifest: LoadedManifest | None, snap: NodeSnapshot) -> NodeFit:
        key = tuple((g.index, g.uuid, g.up, g.memory.total if g.memory else None,
                     g.memory.reserved if g.memory else None) for g in snap.gpus)
        if manifest is not self._manifest or key != self._key or self._node is None:
            self._node = Exporter.fit_with(manifest, snap)
            self._manifest, self._key = manifest, key
            # The manifest, the fit and the caches built from them live until the next change:
            # keep them out of the cyclic collector, whose full passes over them showed up as
            # 20-30 ms pauses in scrape latency.
            gc.freeze()
        return self._node
