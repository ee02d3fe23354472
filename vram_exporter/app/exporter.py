"""One scrape, start to finish, without any HTTP: a snapshot, the plan for it, families, render.

The HTTP edge (app/server.py) calls ``Exporter.scrape()``; tests and benchmarks can
call it directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from ..present.collector import (CollectResult, GpuDetail, ManifestStatus, exporter_families, gpu_families,
                                 gpustack_families)
from ..sources.manifest import LoadedManifest, NodeModels, load_manifest
from ..present.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Family, Renderer, wants_openmetrics
from ..rules.node import free_memory
from ..sources.gpustack_view import GpuStackSource, GpuStackView
from ..sources.nvml import NvmlReader
from ..sources.sampler import NoNvmlReader, NvmlSampler
from .inputs import NodeInputs
from .plan import LastOne, Plan, Planner
from ..present import vllm_instances
from ..present.usage_families import usage_families
from ..present.page_usage import usage_report
from ..rules.usage import NodeUsage
from ..sources.gpustack_usage import read_usage
from ..sources.manifest_usage import read_manifest_usage, says_processes
from ..present.report import gpustack_report, plan_report
from ..snapshot import NodeSnapshot
from ..sources import vllm_instance
from ..sources.yamlfile import InputFileError

log = logging.getLogger(__name__)

# How long a page or /api/v1/fit waits for a new plan's fixes before answering without them.
FIXES_WAIT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Scrape:
    content: bytes  # every family but the exporter's own: the same object while nothing changed
    tail: bytes  # the exporter's own series, new at every scrape
    content_type: str
    snapshot: NodeSnapshot

    @property
    def body(self) -> bytes:
        return self.content + self.tail


class Exporter:
    """Wires the parts together: the NVML reader, the model source (a manifest or GPUStack), the
    planner that owns everything derived from them and everything remembered (app/plan.py), and the
    renderers of a scrape. Nothing is remembered here."""

    def __init__(
        self,
        reader: NvmlReader,
        *,
        manifest: LoadedManifest | None = None,
        nvml_timeout: float = 5.0,
        gpu_detail: GpuDetail = "all",
        gpustack: GpuStackSource | None = None,
        instances=None,
        cluster_series: bool = True,
        proc_root: Path | None = Path("/proc"),
    ) -> None:
        """``gpustack``: the models come from GPUStack's API; ``manifest`` is then the overlay (sizes).
        ``instances``: the running models' own vLLM readings (vllm_client.VllmInstances), shown beside
        the prediction. ``cluster_series``: export GPUStack's cluster-wide model series (the same from
        every exporter of a fleet, so one exports them and the others skip them). A ``reader`` that is
        a NoNvmlReader makes a cluster-only exporter: no GPU and no node view, only the cluster series.
        ``proc_root``: where the GPU processes' tree is read, to attribute them to instances (None: not read)."""
        self._proc_root = proc_root
        self._manifest = manifest
        self._gpustack = gpustack
        self._cluster_series = cluster_series
        self._node = not isinstance(reader, NoNvmlReader)
        self.instances = instances
        self._manifest_status = ManifestStatus(True, time.time()) if manifest else None
        self._sampler = NvmlSampler(reader, nvml_timeout)
        self._planner = Planner(gpu_detail)
        self._renderer = Renderer()
        # More of the exporter's own series (e.g. the web config's reload status), rendered at each scrape.
        self.extra_families: list[Callable[[], Iterable[Family]]] = []

    @property
    def source(self) -> str:
        return self._sampler.source

    async def snapshot(self) -> NodeSnapshot:
        return await self._sampler.snapshot()

    async def scrape(self, accept: str | None = None) -> Scrape:
        snap = await self.snapshot()
        openmetrics = wants_openmetrics(accept)
        # One manifest (and GPUStack view) for the whole scrape, even if a reload lands meanwhile.
        view = self._gpustack.view if self._gpustack else None
        started = time.perf_counter()
        plan = await self._plan_or_none(self.node_manifest(view), snap)
        results = {"fit": CollectResult(plan is not None, time.perf_counter() - started)}
        if self._node:
            results["nvml"] = CollectResult(snap.ok, snap.duration_seconds)
        if self._gpustack is not None:
            results["gpustack"] = CollectResult(self._gpustack.success, self._gpustack.duration_seconds)
        fixes_known = plan is not None and plan.fixes is not None
        usage = await self.usage(snap, view)
        # Nothing read or decided has changed since the last scrape: its bytes are the answer.
        key = (openmetrics, plan.version if plan else None, fixes_known, view, snap, usage)
        content = self._planner.last_body.of(key, lambda: self._renderer.render(
            self._content(snap, plan, view, usage), openmetrics, eof=False))
        pending = None
        if plan is not None and plan.specs:
            pending = 0 if fixes_known else len(plan.specs)
        own = self._renderer.render(exporter_families(results, self._manifest_status, pending,
                                    self._gpustack.last_success_timestamp if self._gpustack else None),
                                    openmetrics, eof=False)
        tail = own + self._instances_part(plan, openmetrics) + self._renderer.render(
            chain(*(extra() for extra in self.extra_families)), openmetrics)
        return Scrape(content, tail, OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE, snap)

    @property
    def manifest(self) -> LoadedManifest | None:
        """The manifest file as loaded (with GPUStack as the source: the overlay)."""
        return self._manifest

    @property
    def gpustack(self) -> GpuStackSource | None:
        return self._gpustack

    def node_manifest(self, view: GpuStackView | None = None) -> LoadedManifest | NodeModels | None:
        """The models judged against this node: the manifest's, or GPUStack's for this worker."""
        if self._gpustack is None:
            return self._manifest
        view = view or self._gpustack.view
        # A cluster-only exporter is no node: even if its host is a GPUStack worker, it has no GPU to judge.
        return view.node_models if view and self._node else None

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

    def inputs(self, manifest: LoadedManifest | NodeModels | None, snap: NodeSnapshot) -> NodeInputs:
        """What the plan is derived from (app/inputs.py, the same for ``check``, which asks no vLLM its version)."""
        return self._planner.inputs(manifest, snap, self.instances.versions if self.instances is not None else None)

    async def start_planning(self) -> None:
        """Plan for the first readings before any scrape asks: the first one then finds it made."""
        await self._plan_or_none(self.node_manifest(), await self.snapshot())

    async def plan(self, snap: NodeSnapshot) -> Plan:
        view = self._gpustack.view if self._gpustack else None
        return await self._planner.plan(self.inputs(self.node_manifest(view), snap), snap)

    async def report(self, snap: NodeSnapshot) -> dict:
        """The verdicts document (/api/v1/fit, the explain page), built off the event loop."""
        return (await self._keyed_report(snap))[1]

    async def document(self, snap: NodeSnapshot, kind: str, render: Callable[[dict], bytes]) -> bytes:
        """``render`` of the report (the explain page, /api/v1/fit's JSON: ``kind`` names which), made
        off the event loop: /metrics and /-/healthy never wait for it. The same bytes while the report
        is made of the same values."""
        key, report = await self._keyed_report(snap)
        last = self._planner.last_documents.setdefault(kind, LastOne())
        found = last.get(key)
        return found if found is not None else last.keep(key, await asyncio.to_thread(render, report))

    async def gzipped(self, scrape: Scrape) -> tuple[bytes, bytes]:
        """The gzip stream of the scrape's body, in two parts. The content (every family but the
        exporter's own) is compressed once per value, the compressor's state after it kept: each
        scrape compresses only its tail, from a copy of that state. Level 1: most of the size gain for
        little CPU (exposition text compresses well)."""
        started = self._planner.last_gzip.get(scrape.content)
        if started is None:
            # zlib lets go of the interpreter while it compresses: the megabytes go to a thread.
            started = self._planner.last_gzip.keep(scrape.content, await asyncio.to_thread(_gzip_start, scrape.content))
        prefix, state = started
        state = state.copy()
        return prefix, state.compress(scrape.tail) + state.flush()

    async def _keyed_report(self, snap: NodeSnapshot) -> tuple[tuple, dict]:
        plan = await self.plan(snap)
        try:
            await asyncio.wait_for(asyncio.wrap_future(plan.fixes_known), FIXES_WAIT_SECONDS)
        except TimeoutError:
            log.warning("fixes not known after %.0fs: the report goes without them", FIXES_WAIT_SECONDS)
        view = self._gpustack.view if self._gpustack else None
        usage = await self.usage(snap, view)
        key = (plan.version, plan.fixes is not None, snap, view,
               self._gpustack.last_success_timestamp if self._gpustack else None, usage)
        report = self._planner.last_report.get(key)
        if report is not None:
            return key, report  # nothing it is made of changed: the same document (do not modify it)
        report = await asyncio.to_thread(plan_report, plan, snap)
        if self._gpustack is not None:
            report["gpustack"] = gpustack_report(view, refresh_success=self._gpustack.success,
                                                 last_success_timestamp=self._gpustack.last_success_timestamp)
        if usage is not None:
            report["usage"] = usage_report(usage)
        return key, self._planner.last_report.keep(key, report)

    async def _plan_or_none(self, manifest: LoadedManifest | NodeModels | None, snap: NodeSnapshot) -> Plan | None:
        try:
            return await self._planner.plan(self.inputs(manifest, snap), snap)
        except Exception:  # noqa: BLE001 - a rulebook bug must not take the GPU metrics down with it
            if self._planner.closed:
                return None  # shutting down (a refused port, SIGTERM): the pool is gone, nothing failed
            log.exception("fit model failed on this snapshot")
            return None

    async def usage(self, snap: NodeSnapshot, view: GpuStackView | None = None) -> NodeUsage | None:
        """Booked against used on this node's GPUs (rules/usage.py); None without a GPUStack worker here,
        or without GPUStack, without a manifest model that says its ``processes``."""
        manifest = self._manifest
        if self._gpustack is None:
            if manifest is None or not self._node or not says_processes(manifest):
                return None
            return await asyncio.to_thread(read_manifest_usage, manifest, snap, self._proc_root)
        view = view if view is not None else (self._gpustack.view if self._gpustack else None)
        if not self._node or view is None or view.worker is None:
            return None
        return await asyncio.to_thread(read_usage, snap, view.instances_here, self._proc_root)

    def _content(self, snap: NodeSnapshot, plan: Plan | None, view: GpuStackView | None,
                 usage: NodeUsage | None = None):
        """Every family but the exporter's own (those change at every scrape)."""
        node = plan.node if plan else None
        bookings = {b.index: b for b in node.gpus} if node else {}
        yield from gpu_families(snap, bookings)
        if view is not None:
            yield from gpustack_families(view, snap, cluster=self._cluster_series, node=self._node)
        if usage is not None:
            yield from usage_families(usage, {gpu.index: gpu.uuid for gpu in snap.gpus})
        if plan is not None and plan.specs:
            yield from plan.model_families(free_memory(snap))

    def _instances_part(self, plan: Plan | None, openmetrics: bool) -> bytes:
        """Prediction beside reality for the running models whose vLLM was read (sources/vllm_instance.py),
        rendered once per plan and readings."""
        readings = self.instances.readings if self.instances is not None else {}
        if not readings:
            return b""
        key = (openmetrics, plan.version if plan is not None else None, readings)
        return self._planner.last_instances.of(key, lambda: self._renderer.render(
            self._instance_families(plan, readings), openmetrics, eof=False))

    @staticmethod
    def _instance_families(plan: Plan | None, readings) -> list[Family]:
        comparisons = vllm_instance.node_comparisons(plan.node, readings) if plan is not None else []
        return [vllm_instances.up_family(readings), *vllm_instances.families(comparisons)]

    def close(self) -> None:
        self._planner.close()
        self._sampler.close()


def _gzip_start(content: bytes) -> tuple[bytes, object]:
    state = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    return state.compress(content), state
