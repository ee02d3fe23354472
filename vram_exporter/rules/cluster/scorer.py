"""Which candidate GPUStack 2.3.0 takes: its placement scorer, spread or binpack.

A port of ``gpustack/policies/scorers/placement_scorer.py`` (SCHEDULER_SCALE_UP_PLACEMENT_MAX_SCORE
100) and of ``scheduler/scheduler.py::pick_highest_score_candidate``: the highest score wins, the
first candidate among equal scores (so the order GPUStack lists its workers in decides ties).

- spread (the default): per candidate, a worker score from the instances already on its worker
  (this model's and the others', normalised over the candidates' workers) weighted 0.85, and a GPU
  score, the mean of 1 / (1 + this model's + 0.2 x others' instances) over its GPUs, weighted 0.15.
  An instance counts once per GPU it holds, on its worker and on each subordinate worker.
- binpack: the largest claim / allocatable over the main worker's GPUs (RAM is not claimed by
  vLLM instances without an extended KV cache, so its term is 0), blended with the subordinate
  workers' as GPUStack does.

Not reproduced: ``ModelFileLocalityScorer`` adds up to 5 points to workers that already hold a
READY copy of the model files (GPUStack's model-files records, not in the API the exporter reads);
with a fresh cluster, or files on a shared path, it adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .paths import Candidate, Claims

Strategy = Literal["spread", "binpack"]
MAX_SCORE = 100.0


@dataclass(frozen=True, slots=True)
class Holding:
    """One placed instance, as the scorer counts it."""

    model: str
    gpus: frozenset[tuple[int, int]]  # (worker id, GPU index)
    backend: str = "vllm"


@dataclass(frozen=True, slots=True)
class _Counts:
    worker: Mapping[int, tuple[int, int]]  # worker id -> (this model's, others')
    gpu: Mapping[tuple[int, int], tuple[int, int]]


def pick(candidates: Sequence[Candidate], strategy: Strategy, model: str, holdings: Iterable[Holding],
         allocatable: Mapping[tuple[int, int], int]) -> Candidate:
    """GPUStack's choice among non-empty ``candidates``."""
    if len(candidates) == 1:
        return candidates[0]
    if strategy == "binpack":
        scores = [_binpack(c, allocatable) for c in candidates]
    else:
        scores = _spread(candidates, _count(model, holdings))
    best = 0
    for i in range(1, len(candidates)):
        if scores[i] > scores[best]:
            best = i
    return candidates[best]


def _count(model: str, holdings: Iterable[Holding]) -> _Counts:
    worker: dict[int, list[int]] = {}
    gpu: dict[tuple[int, int], list[int]] = {}
    for holding in holdings:
        slot = 0 if holding.model == model else 1
        for key in holding.gpus:
            worker.setdefault(key[0], [0, 0])[slot] += 1  # update_count: the worker total moves per GPU
            gpu.setdefault(key, [0, 0])[slot] += 1
    return _Counts({k: (v[0], v[1]) for k, v in worker.items()}, {k: (v[0], v[1]) for k, v in gpu.items()})


def _inverse_norm(value: int, low: int, high: int) -> float:
    return 1.0 if high <= low else 1.0 - (value - low) / (high - low)


def _spread(candidates: Sequence[Candidate], counts: _Counts) -> list[float]:
    totals = [counts.worker.get(c.worker, (0, 0)) for c in candidates]
    currents, others = [t[0] for t in totals], [t[1] for t in totals]
    any_zero = any(current == 0 for current in currents)
    scores = []
    for candidate, (current, other) in zip(candidates, totals):
        others_norm = _inverse_norm(other, min(others), max(others))
        if any_zero and current == 0:
            worker_score = 0.85 + 0.15 * others_norm
        elif any_zero:
            worker_score = 0.45 + 0.35 * _inverse_norm(current, min(currents), max(currents)) + 0.20 * others_norm
        else:
            worker_score = 0.50 + 0.25 * _inverse_norm(current, min(currents), max(currents)) + 0.15 * others_norm
        per_gpu = [1 / (1 + mine + theirs * 0.2)
                   for mine, theirs in (counts.gpu.get((candidate.worker, i), (0, 0)) for i in candidate.gpus)]
        gpu_score = (sum(per_gpu) / len(per_gpu) if per_gpu else 1) * MAX_SCORE
        scores.append(worker_score * MAX_SCORE * 0.85 + gpu_score * 0.15)
    return scores


def _binpack_item(worker: int, gpus: Sequence[int], claims: Claims, allocatable: Mapping[tuple[int, int], int]) -> float:
    score = 0.0
    for index in gpus:
        free = allocatable.get((worker, index), 0)
        vram = claims.get((worker, index), 0) / free * MAX_SCORE * 2.0 if free else 0.0
        score = max(score, vram / 3.0)  # (ram 0 x 1.0 + vram x 2.0) / 3.0
    return score


def _binpack(candidate: Candidate, allocatable: Mapping[tuple[int, int], int]) -> float:
    score = _binpack_item(candidate.worker, candidate.gpus, candidate.claims, allocatable)
    if not candidate.subordinates:
        return score
    n = len(candidate.subordinates)
    subordinates = sum(_binpack_item(w, gpus, candidate.claims, allocatable) for w, gpus in candidate.subordinates)
    return (score * 5.0 + subordinates * n * 1.0) / (5.0 + n * 1.0)
