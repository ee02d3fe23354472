"""Turns a snapshot and a fit into metric families (their names, help and labels: present/catalogue.py).

Families are built fresh at every scrape, client_python style, but made of segments (one GPU, one
model...) so that the renderer reuses what did not change. The per-model segments that only change
with the plan (app/plan.py) are built once, with it, in the planner's thread (``ModelFamilies.prepare``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter, sub
from typing import Literal

from .. import __version__
from .catalogue import CATALOGUE, MODEL_GPU as MODEL_GPU_LABELS, family
from .exposition import Family, Segment, format_value, render_samples, sample_prefix
from ..rules import backends
from ..rules.fixes import Fix
from ..rules.node import (CHECKS, GpuBooking, ModelFit, NodeFit, free_for_static_top, start_needs, starts_on,
                          top_moves, window_top)
from ..sources.gpustack_view import GpuStackView
from ..snapshot import NodeSnapshot

# --model.gpu-detail: per-GPU model series for every GPU ("all"), or only for models that do not fit
# and for the GPUs a fitting model is assigned to ("relevant"), or only for models that do not fit.
GpuDetail = Literal["all", "relevant", "failing"]


@dataclass(frozen=True, slots=True)
class CollectResult:
    """How one collector fared in this scrape."""

    success: bool
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class ManifestStatus:
    """The outcome of the last manifest (re)load."""

    successful: bool
    success_timestamp: float  # 0: never loaded successfully


def gpu_families(snapshot: NodeSnapshot, bookings: Mapping[int, GpuBooking]) -> list[Family]:
    """The per-GPU metrics; ``bookings`` (GPUStack's view, by GPU index) come from the fit model."""
    info = family("vram_gpu_info")
    up = family("vram_gpu_up")
    total = family("vram_gpu_memory_total_bytes")
    reserved = family("vram_gpu_memory_reserved_bytes")
    used = family("vram_gpu_memory_used_bytes")
    free = family("vram_gpu_memory_free_bytes")
    api = family("vram_gpu_memory_nvml_api_version")
    proc = family("vram_gpu_process_memory_used_bytes")
    sys_reserved = family("vram_gpu_system_reserved_bytes")
    claimed = family("vram_gpu_claimed_bytes")
    alloc = family("vram_gpu_allocatable_bytes")
    predicted = family("vram_gpu_predicted_claim_bytes")
    for gpu in snapshot.gpus:
        labels = (str(gpu.index), gpu.uuid)
        if gpu.uuid:  # a GPU lost before it was ever read has no identity to show
            info.sample(*labels, gpu.name, gpu.pci_bus_id, snapshot.driver_version, 1)
        up.sample(*labels, 1 if gpu.up else 0)
        if gpu.memory is None:
            continue
        mem = gpu.memory
        total.sample(*labels, mem.total)
        if mem.reserved is not None:
            reserved.sample(*labels, mem.reserved)
        used.sample(*labels, mem.used)
        free.sample(*labels, mem.free)
        api.sample(*labels, mem.api_version)
        known = [p for p in gpu.processes if p.used_bytes is not None]
        proc.add(labels, [(*labels, str(p.pid), p.name) for p in known], [p.used_bytes for p in known])
        booking = bookings.get(gpu.index)
        if booking is not None:
            sys_reserved.sample(*labels, booking.system_reserved)
            claimed.sample(*labels, booking.claimed)
            alloc.sample(*labels, booking.allocatable)
            predicted.sample(*labels, booking.predicted)
    return [info, up, total, reserved, used, free, api, proc, sys_reserved, claimed, alloc, predicted]


@dataclass(frozen=True, slots=True)
class LivePart:
    """What free memory moves, for one free memory: whether each model starts, and the samples rendered."""

    startable: Mapping[str, bool]
    segments: Mapping[str, Segment]


class ModelFamilies:
    """The per-model families of one plan's static fit, prepared once with the plan (in the planner's
    thread): everything but what free memory moves is built and rendered here, never again while the
    plan holds. What free memory moves (vLLM's start-up headroom, the window's top, ``startable``)
    comes in at every scrape as a ``LivePart``. Nothing is remembered here: the plan (app/plan.py)
    keeps the live part of the last free memory seen.
    """

    def __init__(self, node: NodeFit, gpu_detail: GpuDetail = "all") -> None:
        self.gpu_detail = gpu_detail
        self.node = node
        uuids = {b.index: b.uuid for b in node.gpus}
        texts: dict[str, list[str]] = {}
        shown_all = []
        for fit in node.models:
            shown = [] if fit.error else self._shown_gpus(fit)
            for name, (labels, values) in self._static_segments(fit, shown, uuids).items():
                # Rendered here, in the planner's thread, so that no scrape renders them.
                texts.setdefault(name, []).append(render_samples(name, CATALOGUE[name].label_names, labels, values))
            shown_all.append((fit, shown))
        # Per family, every model's samples as one text: a scrape hands the renderer one part per family,
        # not one per model (3,400 parts at 8 GPUs x 200 models, about 1 ms of each scrape that renders);
        # encoded here, so that a scrape encodes only what it renders (exposition.Renderer.render).
        self._static = {name: [Segment(name, (), (), "".join(parts).encode())] for name, parts in texts.items()}
        self._layout = _LiveLayout.of(shown_all)

    def live(self, free: Mapping[int, int]) -> LivePart:
        """The free-memory dependent samples (vLLM's start-up headroom, the window's top, ``startable``),
        from line frames and numbers taken out of the fit once per plan (``_LiveLayout``): at every change
        of a reading they are the biggest part of a scrape's own work, about 3,000 lines at 8 GPUs x 200
        models, so each family's values are made in as few steps as there are (a subtraction per
        headroom, ``window_top`` once per distinct set of its numbers) and set into its frame."""
        layout = self._layout
        starts = [starts_on(needs, free) for needs in layout.start_needs]
        tops = tuple([static if free[i] >= edge else format_value(window_top(free[i], *numbers))
                      for i, edge, static, numbers in layout.top_inputs])
        segments = {  # free_headroom: free - free_need
            "vram_model_headroom_bytes": Segment("live", (), (), layout.headroom.filled(
                map(str, map(sub, layout.headroom_gpus(free), layout.headroom_needs)))),
            "vram_model_gpu_memory_utilization_max": Segment("live", (), (), layout.top.filled(
                layout.top_of_line(tops))),
            "vram_model_startable": Segment("live", (), (), layout.startable.filled(
                ["1" if s else "0" for s in starts])),
        }
        return LivePart(dict(zip(layout.models, starts)), segments)

    def families(self, node: NodeFit, free: Mapping[int, int], fixes: Sequence[Segment] = (),
                 live: LivePart | None = None) -> list[Family]:
        """The families for the free memory of now (GPU index -> bytes); ``node``: the fit they were
        prepared from; ``fixes``: one ``fix_segment`` per model that has fixes; ``live``: this free
        memory's, if already made."""
        live_segments = (live or self.live(free)).segments
        out = []
        for name in _MODEL_FAMILIES:
            built = family(name)
            segments = self._static.get(name, [])
            if name in live_segments:
                segments = [*segments, live_segments[name]]
            elif name == "vram_model_fix_info":
                segments = list(fixes)
            built.segments = segments  # the prepared list itself when nothing is live: rendered once
            out.append(built)
        return out

    def _static_segments(self, fit: ModelFit, shown, uuids: dict[int, str]) -> dict[str, tuple[list, list]]:
        m = fit.name
        out: dict[str, tuple[list, list]] = {
            "vram_model_config_error": ([(m,)], [1 if fit.error else 0]),
            "vram_model_schedulable": ([(m,)], [1 if fit.schedulable and not fit.error else 0]),
            "vram_model_backend_info": ([(m, fit.backend)], [1]),
        }
        if fit.engine_version is not None:
            out["vram_model_engine_info"] = ([(m, fit.backend, fit.engine_version.version, fit.engine_version.why)],
                                             [1])
        if fit.error:
            return out
        if fit.weights is not None:  # a custom model judged by its GPUSTACK_MODEL_VRAM_CLAIM alone: not read
            out["vram_model_weights_bytes"] = ([(m,)], [fit.weights])
        out["vram_model_estimate_bytes"] = ([(m,)], [fit.estimate])
        out["vram_model_kv_cache_bytes_per_token"] = ([(m,)], [fit.bytes_per_token])
        out["vram_model_kv_cache_required_bytes"] = ([(m,)], [fit.kv_required])
        reader = backends.of(fit.backend).engine_reader
        readers = [(m, "gpustack")] + ([(m, reader)] if reader else [])  # vllm or sglang
        out["vram_model_gpu_memory_utilization"] = (readers, [fit.gmu_gpustack, fit.gmu_vllm][:len(readers)])
        out["vram_model_replicas_placeable"] = ([(m,)], [fit.replicas_placed])
        out["vram_model_assigned_gpu"] = ([(m, str(i), uuids.get(i, "")) for i in fit.gpus], [1] * len(fit.gpus))
        per_gpu = {name: ([], []) for name in _STATIC_PER_GPU}
        for f in shown:
            labels = (m, str(f.index), f.uuid)
            for name, value in ((("vram_model_vllm_budget_bytes", f.budget),
                                 ("vram_model_gpu_memory_utilization_min", f.gmu_min),
                                 ("vram_model_max_model_len_tokens", f.max_model_len))):
                per_gpu[name][0].append(labels)
                per_gpu[name][1].append(value)
            for check in CHECKS:
                if check in f.headroom and check != f.free_check:  # that one is live
                    per_gpu["vram_model_headroom_bytes"][0].append((*labels, check))
                    per_gpu["vram_model_headroom_bytes"][1].append(f.headroom[check])
        out.update(per_gpu)
        return out

    def _shown_gpus(self, fit: ModelFit):
        """--model.gpu-detail. Whether a model fits is judged on the static fit (free memory aside), so
        that the series shown do not come and go as readings move."""
        if self.gpu_detail == "all" or not (fit.schedulable and fit.startable):
            return fit.per_gpu
        if self.gpu_detail == "relevant":
            return [f for f in fit.per_gpu if f.index in fit.gpus]
        return []


def fix_segment(model: str, fixes: Sequence[Fix]) -> Segment:
    """A model's working fixes as vram_model_fix_info samples, rendered where they are picked."""
    labels = [(model, f.knob, f.action) for f in fixes if f.works]
    values = [1] * len(labels)
    return Segment(("fix", model), labels, values,
                   render_samples("vram_model_fix_info", CATALOGUE["vram_model_fix_info"].label_names, labels, values))


@dataclass(frozen=True, slots=True)
class _Lines:
    """A family's live lines with a place for each value: ``frame`` holds the text before the first
    value, None for each value, and the text after each (its newline, the next line's prefix)."""

    frame: tuple[str | None, ...]

    @classmethod
    def of(cls, lines: Sequence[tuple[str, str | None]]) -> _Lines:
        """From (prefix, value) per line, a prefix up to and with the space; value None: a place."""
        frame: list[str | None] = []
        text: list[str] = []  # since the last place
        for prefix, value in lines:
            if value is None:
                frame += ["".join(text) + prefix, None]
                text = ["\n"]
            else:
                text.append(f"{prefix}{value}\n")
        return cls((*frame, "".join(text)))

    def filled(self, values: Iterable[str]) -> str:
        """The lines with ``values`` in their places, in order (as many as there are places)."""
        parts = list(self.frame)
        parts[1::2] = values
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class _LiveLayout:
    """The live families' lines (``_Lines``) and what their values are made of, in the order served."""

    models: tuple[str, ...]
    start_needs: tuple[tuple[tuple[int, int], ...] | None, ...]  # per model: rules/node.py ``start_needs``
    startable: _Lines  # a place per model: its ``starts_on``
    headroom: _Lines  # a place per line: free - free_need
    headroom_gpus: Callable[[Mapping[int, int]], tuple[int, ...]]  # each line's GPU's free memory
    headroom_needs: tuple[int, ...]  # each line's free_need
    top: _Lines  # the tops free memory does not move written out, a place for each other one
    # Each distinct (GPU, window_top's numbers after free) of the tops free memory moves, with its edge
    # (free_for_static_top: from that free memory on, the top is ``static``, given written out). They
    # are few: the numbers but ``static`` are the GPU's, and many models share a ``static`` (23 for
    # 1,568 such tops at 8 GPUs x 200 models), so ``window_top`` runs once for each of them.
    top_inputs: tuple[tuple[int, float, str, tuple], ...]
    top_of_line: Callable[[tuple[str, ...]], tuple[str, ...]]  # each place's value among them

    @classmethod
    def of(cls, shown) -> _LiveLayout:
        headroom, headroom_gpus, headroom_needs, top, top_of_line = [], [], [], [], []
        inputs: dict[tuple[int, tuple], int] = {}  # (GPU, numbers) -> its place in top_inputs
        for fit, gpus in shown:
            for f in gpus:
                labels = (fit.name, str(f.index), f.uuid)
                prefix = sample_prefix("vram_model_gpu_memory_utilization_max", MODEL_GPU_LABELS, labels) + " "
                if top_moves(f):
                    top.append((prefix, None))
                    numbers = (f.free_need - f.budget, f.cuda_total, f.gmu_max_static)
                    top_of_line.append(inputs.setdefault((f.index, numbers), len(inputs)))
                else:
                    top.append((prefix, format_value(f.gmu_max)))
                if f.free_need is not None:
                    headroom.append((sample_prefix("vram_model_headroom_bytes", (*MODEL_GPU_LABELS, "check"),
                                                   (*labels, f.free_check)) + " ", None))
                    headroom_gpus.append(f.index)
                    headroom_needs.append(f.free_need)
        startable = [(sample_prefix("vram_model_startable", ("model",), (fit.name,)) + " ", None) for fit, _ in shown]
        return cls(tuple(fit.name for fit, _ in shown), tuple(start_needs(fit) for fit, _ in shown),
                   _Lines.of(startable), _Lines.of(headroom), _getter(headroom_gpus), tuple(headroom_needs),
                   _Lines.of(top), tuple(_top_input(index, numbers) for index, numbers in inputs), _getter(top_of_line))


def _top_input(index: int, numbers: tuple) -> tuple[int, float, str, tuple]:
    edge = free_for_static_top(*numbers)
    return index, math.inf if edge is None else edge, format_value(numbers[-1]), numbers


def _getter(keys: list) -> Callable[[Sequence | Mapping], tuple]:
    """``itemgetter(*keys)`` that always gives a tuple (itemgetter of one key gives the item)."""
    if len(keys) > 1:
        return itemgetter(*keys)
    return lambda items: tuple(items[key] for key in keys)


_STATIC_PER_GPU = ("vram_model_vllm_budget_bytes", "vram_model_headroom_bytes",
                   "vram_model_gpu_memory_utilization_min", "vram_model_max_model_len_tokens")
# The per-model families, in the order they are served (their specs: present/catalogue.py).
_MODEL_FAMILIES = ("vram_model_weights_bytes", "vram_model_estimate_bytes", "vram_model_kv_cache_bytes_per_token",
                   "vram_model_kv_cache_required_bytes", "vram_model_gpu_memory_utilization",
                   "vram_model_backend_info", "vram_model_engine_info", "vram_model_vllm_budget_bytes",
                   "vram_model_headroom_bytes", "vram_model_gpu_memory_utilization_min", "vram_model_gpu_memory_utilization_max",
                   "vram_model_max_model_len_tokens", "vram_model_assigned_gpu", "vram_model_schedulable",
                   "vram_model_startable", "vram_model_replicas_placeable", "vram_model_config_error",
                   "vram_model_fix_info")


def exporter_families(results: Mapping[str, CollectResult], manifest: ManifestStatus | None = None,
                      fix_searches_pending: int | None = None,
                      gpustack_success_timestamp: float | None = None) -> Iterator[Family]:
    build = family("vram_exporter_build_info")
    build.sample(__version__, 1)
    success = family("vram_exporter_collect_success")
    duration = family("vram_exporter_collect_duration_seconds")
    for name, result in sorted(results.items()):
        success.sample(name, 1 if result.success else 0)
        duration.sample(name, result.duration_seconds)
    yield from (build, success, duration)
    if manifest is not None:
        ok = family("vram_exporter_manifest_last_reload_successful")
        ok.sample(1 if manifest.successful else 0)
        when = family("vram_exporter_manifest_last_reload_success_timestamp_seconds")
        when.sample(manifest.success_timestamp)
        yield from (ok, when)
    if fix_searches_pending is not None:
        pending = family("vram_exporter_fix_searches_pending")
        pending.sample(fix_searches_pending)
        yield pending
    if gpustack_success_timestamp is not None:
        when = family("vram_exporter_gpustack_last_success_timestamp_seconds")
        when.sample(gpustack_success_timestamp)
        yield when


def gpustack_families(view: GpuStackView, snapshot: NodeSnapshot, *, cluster: bool = True,
                      node: bool = True) -> Iterator[Family]:
    """GPUStack's own decisions next to the rulebooks' (the source is GPUStack's API).

    ``cluster``: the cluster-wide model series, the same from every exporter reading this GPUStack server
    (a fleet exports them from one: --gpustack.cluster-series). ``node``: this node's worker and its GPUs."""
    if cluster:
        yield from _gpustack_cluster_families(view)
    if node and view.worker is not None:
        yield from _gpustack_worker_families(view, snapshot)


def _gpustack_cluster_families(view: GpuStackView) -> Iterator[Family]:
    model = ("model",)
    replicas = family("vram_model_gpustack_replicas")
    actual = family("vram_model_gpustack_pending_instances")
    predicted = family("vram_model_predicted_pending_instances")
    known = family("vram_model_size_known")
    for verdict in view.verdicts:
        replicas.sample(verdict.name, verdict.replicas)
        actual.sample(verdict.name, verdict.gpustack_pending)
        if verdict.predicted_pending is not None:
            predicted.sample(verdict.name, verdict.predicted_pending)
        if verdict.size_known is not None:
            known.sample(verdict.name, 1 if verdict.size_known else 0)
    yield from (replicas, actual, predicted, known)


def _gpustack_worker_families(view: GpuStackView, snapshot: NodeSnapshot) -> Iterator[Family]:
    worker = family("vram_gpustack_worker_info")
    worker.sample(view.worker.name, str(view.worker.id), str(view.worker.cluster_id or ""), view.worker.state, 1)
    allocated = family("vram_gpu_gpustack_allocated_bytes")
    uuids = {gpu.index: gpu.uuid for gpu in snapshot.gpus}
    api_uuids = {gpu.index: gpu.uuid or "" for gpu in view.worker.gpus}
    for index, size in sorted(view.allocated.items()):
        allocated.sample(str(index), uuids.get(index) or api_uuids.get(index, ""), size)
    yield from (worker, allocated)
