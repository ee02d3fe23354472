"""The fit of a model whose selector is not vLLM's (SGLang, custom): GPUStack's placement through the
backend's selector, the per-GPU checks through the backend's own ``gpu_fit``. Each backend's fit.py hands
its selector and its engine here, as one ``SharedFit``; nothing here names a backend.

Checks (``vram_model_headroom_bytes{check}``, negative fails) are each backend's: its fit.py lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import ModuleType

from ...errors import ModelError
from ...snapshot import GpuReading
from .. import gpustack
from ..model import Cluster, ModelSpec
from ..verdicts import Context, GpuFit, ModelFit, Probe

PENDING = "GPUStack leaves it Pending (No suitable workers):\n"
OVERCOMMIT = "GPUStack accepts the manual GPU selection as overcommit: its own tests fail there."


def booking_on(selector: ModuleType, model: ModelSpec, views: Sequence[gpustack.GpuView]) -> gpustack.Booking:
    """The booking on this node: the card a card-sized fraction is for is ``model.sizing_total`` where the
    source knows the other workers, else this node's smallest (rules/gpustack.py ``smallest_total``)."""
    counts = (len(model.pinned_gpus),) if model.pinned_gpus else ()
    smallest = model.sizing_total or gpustack.smallest_total(
        {0: {v.index: v.total for v in views}}, {0: model.pinned_gpus} if model.pinned_gpus else None)
    return selector.booking(model, smallest, selected_per_worker=counts)


def placement(selector: ModuleType, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading],
              claims: Mapping[int, int], replica_count: int | None = None) -> gpustack.Placement | None:
    views = gpustack.views_of(gpus, claims, cluster.system_reserved_vram)
    return selector.place_spec(model, views, scheduler=cluster.scheduler, book=booking_on(selector, model, views),
                               pinned=model.pinned_gpus, replica_count=replica_count)


def placed_claims(selector: ModuleType, model: ModelSpec, cluster: Cluster,
                  gpus: Sequence[GpuReading]) -> dict[int, int]:
    """A running instance's claims when GPUStack's own are not known: what its selector books."""
    by_index = {gpu.index: gpu for gpu in gpus}
    book = booking_on(selector, model, gpustack.views_of(gpus, {}, cluster.system_reserved_vram))
    return selector.claims_of(model, {i: gpustack.reported_total(by_index[i].memory.total)
                                      for i in model.placed_on if i in by_index}, book)


GpuFitter = Callable[..., GpuFit]


def evaluate(selector: ModuleType, engine_of, gpu_fit: GpuFitter, say, model: ModelSpec, cluster: Cluster,
             gpus: Sequence[GpuReading], context: Context, placed_on: Sequence[int] | None = None) -> ModelFit:
    """``engine_of(model, cluster, gpus)``: the engine's terms (None: not modelled); ``gpu_fit``: one GPU's
    checks; ``say(fit, engine, book)``: the backend's own reasons."""
    try:
        return _evaluate(selector, engine_of, gpu_fit, say, model, cluster, gpus, context, placed_on)
    except ModelError as exc:
        return ModelFit(model.name, error=str(exc), placed=placed_on is not None, weights=model.weights_bytes,
                        context=context, backend=model.backend)


def _evaluate(selector, engine_of, gpu_fit, say, model, cluster, gpus, context, placed_on) -> ModelFit:
    views = gpustack.views_of(gpus, context.claims, cluster.system_reserved_vram)
    book = booking_on(selector, model, views)
    estimate = gpustack.model_estimate(model)
    chosen: tuple[int, ...]
    place = None
    if placed_on is not None:
        chosen = tuple(placed_on)
    else:
        place = selector.place_spec(model, views, scheduler=cluster.scheduler, book=book, pinned=model.pinned_gpus)
        chosen = place.gpus if place else ()
    engine = engine_of(model, cluster, gpus)
    by_view = {v.index: v for v in views}
    shown = [g for g in gpus if placed_on is None or g.index in placed_on]
    n = len(chosen) or (book.world_size or 1)
    per_gpu = tuple(gpu_fit(model, g, by_view[g.index], context, book, estimate, n, engine, placed_on is not None)
                    for g in shown)
    engine_ok = all(f.headroom.get(c, 0) >= 0 for f in per_gpu if f.index in chosen for c in _engine_checks(engine))
    replicas = gpustack.replicas_placed(model.replicas, context.claims,
                                        lambda claims: placement(selector, model, cluster, gpus, claims)) if place else 0
    fit = ModelFit(
        name=model.name, placed=placed_on is not None, weights=model.weights_bytes, estimate=estimate,
        bytes_per_token=engine.cell if engine else 0, kv_required=engine.required if engine else 0,
        max_model_len=engine.context_len if engine else 0, block_tokens=engine.params.page_size if engine else 0,
        gmu_gpustack=book.fraction or 0.0, gmu_vllm=engine.fraction if engine else (book.fraction or 0.0),
        schedulable=placed_on is not None or place is not None, startable=bool(chosen) and engine_ok,
        gpus=chosen, overcommit=bool(place and place.overcommit),
        replicas_placed=replicas if placed_on is None else model.replicas, replicas=model.replicas,
        per_gpu=per_gpu, context=context, backend=model.backend)
    said = []
    if book.note:
        said.append(book.note)
    if not fit.schedulable:
        said.append(PENDING + selector.pending_message_of(model, views, book, model.pinned_gpus))
    elif fit.overcommit:
        said.append(OVERCOMMIT)
    said += say(fit, engine, book)
    return replace(fit, static_reasons=tuple(said), reasons=tuple(said))


def _engine_checks(engine) -> tuple[str, ...]:
    return engine.CHECKS if engine is not None else ()


def _no_free_reasons(fit: ModelFit, f: GpuFit) -> list[str]:
    return []


@dataclass(frozen=True)
class SharedFit:
    """The ``Fit`` contract (rules/backends/__init__.py) of a backend whose fit is this module's. A backend's
    fit.py makes one and states only what differs: its selector, its engine's terms (``engine_of(model,
    cluster, gpus)``, None: not modelled), one GPU's checks (``gpu_fit``), its own reasons (``say(fit, engine,
    book)``) and what its engine says of a GPU's free memory (``free_reasons``: nothing by default)."""

    selector: ModuleType
    engine_of: Callable
    gpu_fit: GpuFitter
    say: Callable[..., list[str]]
    free_reasons: Callable[[ModelFit, GpuFit], list[str]] = _no_free_reasons

    def evaluate(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context,
                 placed_on: Sequence[int] | None = None) -> ModelFit:
        return evaluate(self.selector, self.engine_of, self.gpu_fit, self.say, model, cluster, gpus, context,
                        placed_on)

    def probe(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context) -> Probe:
        """The verdict of the full evaluation (these backends have no cheaper form)."""
        fit = self.evaluate(model, cluster, gpus, context)
        return Probe(fit.schedulable and fit.startable and not fit.error)

    def placement(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], claims: Mapping[int, int],
                  replica_count: int | None = None) -> gpustack.Placement | None:
        return placement(self.selector, model, cluster, gpus, claims, replica_count)

    def placed_claims(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> dict[int, int]:
        return placed_claims(self.selector, model, cluster, gpus)

    def committed_on(self, model: ModelSpec, cluster: Cluster, gpu: GpuReading, claim: int) -> int:
        """What the engine takes of a GPU it is placed on: about what GPUStack books, and its CUDA context."""
        return claim + cluster.vllm_context_overhead
