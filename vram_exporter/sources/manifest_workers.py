"""A manifest's cluster (its ``workers:``) placed as GPUStack 2.3.0 would place it, before deploying.

The same replay of GPUStack's scheduler the exporter runs against a live server (rules/cluster/replay.py),
fed from the manifest instead of GPUStack's API: each worker in the order written (GPUStack's id
order, which decides among equal scores), the running models (``placed_on`` on their ``worker``)
holding their claims, then every candidate replica decided in manifest order, as GPUStack decides
instances created one by one. Pure: no NVML, no network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .manifest import LoadedManifest, ModelEntry, WorkerEntry
from ..rules.cluster import replay
from ..errors import BadInput
from ..rules import backends, gpustack
from ..rules.cluster import paths as gpustack_paths
from ..rules.model import ModelSpec
from ..rules.flags import executor_is_mp


@dataclass(frozen=True, slots=True)
class Placement:
    worker: str
    gpus: tuple[int, ...]
    subordinates: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (worker, GPUs) of a spread instance
    overcommit: bool = False
    claims: tuple[tuple[str, int, int], ...] = ()  # (worker, GPU index, bytes) GPUStack would book, subordinates too
    candidates: tuple["Placement", ...] = ()  # what the selector listed before the placement scorer chose

    def as_dict(self) -> dict:
        out = {"worker": self.worker, "gpus": list(self.gpus), "overcommit": self.overcommit,
               "subordinates": [{"worker": w, "gpus": list(g)} for w, g in self.subordinates],
               "claims": [{"worker": w, "gpu": g, "bytes": b} for w, g, b in self.claims]}
        return out | ({"candidates": [c.as_dict() for c in self.candidates]} if self.candidates else {})


@dataclass(frozen=True, slots=True)
class ClusterVerdict:
    model: str
    replicas: int
    placed: tuple[Placement, ...]
    pending: int
    reason: str  # why the first pending replica waits, GPUStack's words where it has them
    order_dependent: bool = False  # another worker order changes the pending count (GPUStack's ties)

    def as_dict(self) -> dict:
        return {"model": self.model, "replicas": self.replicas, "pending": self.pending, "reason": self.reason,
                "order_dependent": self.order_dependent,
                "placed": [p.as_dict() for p in self.placed]}


def place(manifest: LoadedManifest) -> tuple[ClusterVerdict, ...]:
    """Every candidate model's replicas, placed or Pending, over the manifest's workers."""
    workers = _workers(manifest.workers, manifest.cluster.system_reserved_vram)
    ids = {w.name: w.id for w in workers}
    entries = {e.name: e for e in manifest.entries}
    requests = {spec.name: _request(spec, entries[spec.name], manifest.workers, ids) for spec in manifest.models}
    instances = _instances(manifest.models, entries, workers, ids)
    verdicts = replay.replay(workers, requests, instances, manifest.cluster.scheduler)
    other = replay.pending_counts(replay.replay(workers, requests, instances, manifest.cluster.scheduler,
                                                reverse_order=True))
    names = {w.id: w.name for w in workers}
    return tuple(_verdict(spec, [v for v in verdicts.values() if v.model == spec.name], names, other)
                 for spec in manifest.models if not spec.placed)


def _workers(entries: Sequence[WorkerEntry], reserved: int) -> list[replay.WorkerGpus]:
    return [replay.WorkerGpus(n + 1, w.name, dict(enumerate(w.gpus)),
                              reserved if w.system_reserved_vram is None else w.system_reserved_vram)
            for n, w in enumerate(entries)]


def _worker_of(entry: ModelEntry, workers: Sequence[WorkerEntry]) -> str:
    return entry.worker or workers[0].name


def _request(spec: ModelSpec, entry: ModelEntry, workers: Sequence[WorkerEntry], ids: Mapping[str, int],
             ) -> replay.Request:
    allowed = frozenset(ids[w.name] for w in workers
                        if all(w.labels.get(k) == v for k, v in entry.worker_selector.items()))
    gpu_ids = list(entry.gpu_ids)
    if entry.pinned_gpus is not None:
        gpu_ids = [f"{_worker_of(entry, workers)}:cuda:{i}" for i in entry.pinned_gpus]
    return replay.Request(spec, allowed, gpustack_paths.selection_of(gpu_ids) if gpu_ids else None, len(gpu_ids),
                          entry.gpus_per_replica, entry.placement_strategy, entry.distributed_inference_across_workers,
                          executor_is_mp(spec.backend_parameters, None, None))


def _instances(models: Sequence[ModelSpec], entries: Mapping[str, ModelEntry], workers: Sequence[replay.WorkerGpus],
               ids: Mapping[str, int]) -> list[replay.Instance]:
    """The running models first (they hold their claims), then each candidate replica in manifest order."""
    by_id = {w.id: w for w in workers}
    out: list[replay.Instance] = []
    for spec in (m for m in models if m.placed):
        worker = by_id[ids[entries[spec.name].worker or workers[0].name]]
        booked = _booked(spec, {i: worker.totals[i] for i in spec.placed_on or ()})
        claims = {(worker.id, i): (spec.placed_claims or {}).get(i, booked.get(i, 0)) for i in spec.placed_on or ()}
        out.append(replay.Instance(len(out) + 1, spec.name, True, claims, worker=worker.id))
    for spec in (m for m in models if not m.placed):
        for _ in range(spec.replicas):
            out.append(replay.Instance(len(out) + 1, spec.name, False, {}))
    return out


def _booked(spec: ModelSpec, totals: Mapping[int, int]) -> dict[int, int]:
    """A running model's claims on its GPUs when the manifest does not give GPUStack's: what its backend's
    selector books there (rules/backends ``claims_of``; vLLM: int(T x g), or its estimate for a model it books
    at its estimate); none where GPUStack would refuse the model."""
    selector = backends.of(spec.backend).selector
    try:
        return selector.claims_of(spec, totals, selector.booking(spec, gpustack.smallest_total({0: totals}, None)))
    except BadInput:
        return {}


def _verdict(spec: ModelSpec, verdicts: Sequence[replay.Verdict], names: Mapping[int, str],
             other_order: Mapping[str, int]) -> ClusterVerdict:
    verdicts = sorted(verdicts, key=lambda v: v.instance)
    placed = tuple(_placement(v, names) for v in verdicts if v.placed)
    waiting = [v for v in verdicts if not v.placed]
    return ClusterVerdict(spec.name, spec.replicas, placed, len(waiting), waiting[0].reason if waiting else "",
                          other_order.get(spec.name, 0) != len(waiting))


def _placement(verdict: replay.Verdict, names: Mapping[int, str]) -> Placement:
    chosen = _listed(verdict.worker, verdict.gpus, verdict.claims, verdict.overcommit, names)
    return replace(chosen, candidates=tuple(_listed(c.worker, c.gpus, c.claims, c.overcommit, names)
                                            for c in verdict.candidates))


def _listed(worker: int, gpus: Sequence[int], claims: Mapping[tuple[int, int], int], overcommit: bool,
            names: Mapping[int, str]) -> Placement:
    """One placement by worker name: its main worker's GPUs, its subordinate workers' and every claim."""
    others: dict[int, list[int]] = {}
    for owner, index in sorted(claims):
        if owner != worker:
            others.setdefault(owner, []).append(index)
    return Placement(names[worker], tuple(sorted(gpus)), tuple((names[w], tuple(g)) for w, g in others.items()),
                     overcommit, tuple((names[w], g, b) for (w, g), b in sorted(claims.items())))


def render_text(verdicts: Sequence[ClusterVerdict], workers: int) -> str:
    lines = [f"Cluster: {workers} worker{'s' * (workers != 1)}, placed as GPUStack 2.3.0 would place the candidates "
             "(in manifest order)"]
    for v in verdicts:
        mark = "OK " if not v.pending else "NO "
        where = "; ".join(_where(p) for p in v.placed) or "nowhere"
        line = f"{mark} {v.model}: {len(v.placed)}/{v.replicas} replicas placed: {where}"
        if v.pending:
            line += f"\n      {v.pending} Pending: " + v.reason.replace("\n", "\n      ")
        if v.order_dependent:
            line += "\n      (GPUStack breaks ties by the order it lists workers in, which is not fixed: " \
                    "another order changes this)"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _where(p: Placement) -> str:
    text = f"{p.worker} GPU{'s' * (len(p.gpus) != 1)} {','.join(map(str, p.gpus))}"
    for worker, gpus in p.subordinates:
        text += f" + {worker} GPU{'s' * (len(gpus) != 1)} {','.join(map(str, gpus))}"
    if p.overcommit:
        text += " (overcommit)"
    return text
