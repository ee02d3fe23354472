"""GPUStack as the source of the models: what its API says, turned into what the rulebooks read.

``build_view`` is pure but for reading model directories (injected): from one ``GpuStackState`` it
makes
- the node view: this node's worker (matched by name or hostname), its ``system_reserved``, the
  claims of the instances bound to its GPUs, and the models it could take, as the same
  models, settings and bookings a manifest file gives (``NodeModels``) (so every per-node metric works unchanged);
- the cluster view: for every model, GPUStack's own verdict (its pending instances) next to ours
  (rules/cluster/replay.py replays the scheduler over all workers), and per GPU of this worker GPUStack's own
  ``memory.allocated`` next to our claimed bytes.

Weights sizes are not in GPUStack's API: they come from the model's ``local_path`` when this node
can read it, or from the overlay manifest (``--manifest``: same format, matched by model name).
A model with neither is reported with ``vram_model_size_known 0``, never guessed.

``GpuStackSource`` refreshes the view in the background; a failed refresh keeps the last good view
and shows as ``vram_exporter_collect_success{collector="gpustack"} 0``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..errors import BadInput, ModelError
from .manifest import LoadedManifest, NodeModels, read_adapter_directory, read_model_directory
from ..rules import backends, categories as model_categories, gpustack, runner_pick
from ..rules.cluster import replay
from ..rules.cluster import paths as gpustack_paths
from ..rules.model import Architecture, Cluster, DraftModel, EngineVersion, LoraAdapter, ModelSpec, Speculative
from ..rules.flags import executor_is_mp
from . import vllm_instance
from .gpustack_api import GpuDevice, GpuStackState, Model, ModelInstance, Worker
from .gpustack_usage import instances_on
from ..rules.usage import Instance

log = logging.getLogger(__name__)

ModelReader = Callable[[Path], tuple[dict[str, Any], int]]  # directory -> (config.json, weights bytes); BadInput
# a LoRA adapter's directory -> (weights bytes, r, largest rank_pattern); BadInput
AdapterReader = Callable[[Path], tuple[int, int | None, int | None]]


@dataclass(frozen=True, slots=True)
class ModelVerdict:
    """One GPUStack model: GPUStack's verdict and ours."""

    name: str
    replicas: int
    gpustack_pending: int
    predicted_pending: int | None  # None: not evaluated (see note)
    size_known: bool | None  # None: not a vLLM model, the rulebooks do not apply
    note: str = ""  # why it is not evaluated, or why an instance stays pending
    # Our decision for each of its instances GPUStack has yet to place (pending), in creation order: where it
    # goes, the claims GPUStack would book and the candidates its selector listed.
    decisions: tuple[replay.Verdict, ...] = ()


@dataclass(frozen=True, slots=True)
class GpuStackView:
    worker: Worker | None  # this node's worker; None: not found (node view empty)
    node_models: NodeModels | None  # this worker's models, judged as a manifest's would be
    verdicts: tuple[ModelVerdict, ...] = ()
    allocated: Mapping[int, int] = field(default_factory=dict)  # GPU index -> GPUStack's memory.allocated
    instances_here: tuple[Instance, ...] = ()  # the instances booking this worker's GPUs (booked vs used)


def build_view(state: GpuStackState, *, worker_name: str | None, source: str, overlay: LoadedManifest | None = None,
               read_model: ModelReader = read_model_directory) -> GpuStackView:
    specs, unknown = _specs(state.models, overlay, read_model)
    try:
        return _view(state, specs, unknown, worker_name, source, overlay)
    except Exception:  # noqa: BLE001 - one bad model must not freeze the whole view: find it, set it aside
        broken = _broken_models(state, specs, worker_name, source, overlay)
        if not broken:
            raise
        for name, why in broken.items():
            del specs[name]
            unknown[name] = NotModelled(f"not modelled: judging it failed ({why})")
        return _view(state, specs, unknown, worker_name, source, overlay)


def _broken_models(state: GpuStackState, specs: Mapping[str, ModelSpec], worker_name: str | None, source: str,
                   overlay: LoadedManifest | None) -> dict[str, str]:
    """The models whose view fails on its own (only looked for once the whole view has failed)."""
    broken = {}
    for name, spec in specs.items():
        try:
            _view(state, {name: spec}, {}, worker_name, source, overlay)
        except Exception as exc:  # noqa: BLE001 - the culprit's error becomes its note
            broken[name] = f"{type(exc).__name__}: {exc}"
    return broken


def _view(state: GpuStackState, specs: Mapping[str, ModelSpec], unknown: Mapping[str, str], worker_name: str | None,
          source: str, overlay: LoadedManifest | None) -> GpuStackView:
    worker = find_worker(state.workers, worker_name)
    requests = _requests(state, specs)
    verdicts = replay_state(state, requests, overlay)
    # Ties go to the worker GPUStack lists first, and it lists them in no fixed order: decide again
    # with the order reversed and flag every model whose pending count then differs.
    other_order = (replay.pending_counts(replay_state(state, requests, overlay, reverse_order=True))
                   if any(not i.placed for i in state.instances) else replay.pending_counts(verdicts))
    return GpuStackView(
        worker=worker,
        node_models=(replace(_node_models(worker, state, specs, requests, overlay, source),
                             predicted=_predicted_here(worker, state, verdicts)) if worker else None),
        verdicts=_verdicts(state, specs, unknown, verdicts, other_order),
        allocated=_allocated(worker),
        instances_here=instances_on(worker, state) if worker else (),
    )


def replay_state(state: GpuStackState, requests: Mapping[str, replay.Request], overlay: LoadedManifest | None = None,
                 *, reverse_order: bool = False, listed_order: bool = False) -> dict[int, replay.Verdict]:
    """Our verdict for every instance of a model with a request: GPUStack's scheduler replayed (``listed_order``:
    the workers in the state's order, where that is the order GPUStack's scheduler was handed them)."""
    models = {m.id: m for m in state.models}
    types = {w.id: gpustack.visible_gpu_type([gpu.type for gpu in w.gpus]) for w in state.workers}
    instances = [i for i in (_instance(inst, models, types) for inst in state.instances) if i is not None]
    return replay.replay([_worker_gpus(w) for w in state.workers], requests, instances,
                         overlay.cluster.scheduler if overlay else "gpustack", reverse_order=reverse_order,
                         listed_order=listed_order)


def _requests(state: GpuStackState, specs: Mapping[str, ModelSpec]) -> dict[str, replay.Request]:
    return {m.name: _request(m, specs[m.name], state.workers) for m in state.models if m.name in specs}


def find_worker(workers: Sequence[Worker], name: str | None) -> Worker | None:
    """The worker named ``name``, else the one whose hostname it is (GPUStack names workers after
    their hostname unless told otherwise); None for a cluster-only exporter (``name`` None)."""
    if name is None:
        return None
    return (next((w for w in workers if w.name == name), None)
            or next((w for w in workers if w.hostname == name), None))


def _specs(models: Sequence[Model], overlay: LoadedManifest | None, read_model: ModelReader,
           ) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """Rulebook input per vLLM model, and why it is missing for the others."""
    given = {spec.name: spec for spec in overlay.models} if overlay else {}
    specs, unknown = {}, {}
    for model in models:
        if model.backend_kind is None:
            continue
        if model.roles or model.disaggregation:
            unknown[model.name] = NotModelled("prefill/decode roles are not modelled")
            continue
        try:
            spec = _spec(model, given.get(model.name), read_model)
        except BadInput as exc:  # config.json unreadable or wrong, weights size unknown
            unknown[model.name] = str(exc)
            continue
        problem = model_categories.not_modelled(spec.categories)
        if problem and not backends.judged_by_claim(spec.backend, spec.env):
            unknown[model.name] = NotModelled(problem)
            continue
        specs[model.name] = spec
    return specs, unknown


class NotModelled(str):
    """Why a model is not judged when its size is not the reason (vram_model_size_known stays absent)."""


def _categories(model: Model, arch: Architecture | None) -> tuple[str, ...]:
    """GPUStack's categories for the model: its own, else what its scheduler fills in from the architectures
    before it schedules (rules/categories.py ``filled_in``; no config.json read: llm, as GPUStack's
    ``evaluate_pretrained_config`` defaults a custom backend's model it cannot read)."""
    given = model_categories.checked(model.categories or (), f"model {model.name!r}: categories")
    reads_overrides = backends.of(model.backend_kind or backends.VLLM).reads_hf_overrides
    return model_categories.filled_in(given, arch.architectures if arch else (),
                                      (model.backend_parameters or ()) if reads_overrides else ())


def _spec(model: Model, given: ModelSpec | None, read_model: ModelReader,
          read_adapter: AdapterReader = read_adapter_directory) -> ModelSpec:
    if given is not None:
        weights, arch, max_len, overhead = given.weights_bytes, given.arch, given.max_model_len, given.runtime_overhead
    elif backends.judged_by_claim(model.backend_kind or backends.VLLM, model.env or {}):
        # GPUStack sizes it by its claim and reads neither config.json nor the weights: neither is needed here
        weights, arch, max_len, overhead = None, None, None, None
    elif model.local_path:
        config, weights = read_model(Path(model.local_path))
        arch, max_len, overhead = Architecture.from_config(config), None, None
    else:
        where = model.huggingface_repo_id or model.model_scope_model_id or model.source or "its source"
        raise ModelError(f"weights size unknown: {where} is not a local path this node can read; give the model "
                         "in the overlay manifest (--manifest) with weights_bytes and config")
    return ModelSpec(name=model.name, weights_bytes=weights, arch=arch,
                     backend_parameters=tuple(model.backend_parameters or ()), env=dict(model.env or {}),
                     max_model_len=max_len, replicas=max(model.replicas, 1), runtime_overhead=overhead,
                     backend=model.backend_kind or "vllm", run_command=model.run_command,
                     lora_adapters=_adapters(model, given, read_adapter), draft=_draft(model, given, read_model),
                     speculative=_speculative(model), categories=_categories(model, arch))


def _adapters(model: Model, given: ModelSpec | None, read_adapter: AdapterReader) -> tuple[LoraAdapter, ...]:
    """The model's lora_list as GPUStack sizes it for its estimate (policies/utils.py::estimate_lora_weights_bytes,
    lora_model_source.py): a Hugging Face or ModelScope adapter by its hub listing, a local one by its files
    only where the model itself is local (else it counts 0); an entry without a name or a usable source is
    skipped. Sizes come from the overlay manifest's lora_adapters (by name), else from a directory this
    node can read; the rank from the same place (GPUStack's worker reads adapter_config.json)."""
    overlay = {a.name: a for a in given.lora_adapters} if given else {}
    adapters = []
    for entry in model.lora_list or ():
        source = (entry.source or "huggingface").lower()
        path = entry.local_path or entry.lora_repo_name if source == "local_path" else None
        if not entry.lora_name or source not in ("huggingface", "model_scope", "local_path") or (
                source == "local_path" and not path):
            continue  # lora_entry_to_model_source raises ValueError: GPUStack skips the entry
        if entry.lora_name in overlay:
            adapters.append(overlay[entry.lora_name])
        elif path is None:
            raise ModelError(f"weights size unknown: LoRA adapter {entry.lora_name} "
                             f"({entry.lora_repo_name or entry.lora_name} on {source}) is not a local path this node "
                             "can read; give it in the overlay manifest's lora_adapters (--manifest)")
        else:
            adapters.append(_local_adapter(entry.lora_name, Path(path), (model.source or "") == "local_path",
                                           read_adapter))
    return tuple(adapters)


def _local_adapter(name: str, path: Path, counted: bool, read_adapter: AdapterReader) -> LoraAdapter:
    """A local adapter: GPUStack counts its files only for a local model (else 0); its rank either way."""
    try:
        weights, rank, pattern_rank = read_adapter(path)
    except BadInput as exc:
        if counted:
            raise ModelError(f"weights size unknown: LoRA adapter {name}: {exc}; give it in the overlay manifest's "
                             "lora_adapters (--manifest)") from None
        return LoraAdapter(name, 0)
    return LoraAdapter(name, weights if counted else 0, rank, pattern_rank)


def _draft(model: Model, given: ModelSpec | None, read_model: ModelReader) -> DraftModel | None:
    """The draft of the model's speculative_config, sized from the overlay manifest's draft_model, else from its
    directory where the server takes its name for a path (utils/model_source.py::get_draft_model_source: a
    name starting with "/"). GPUStack's API says no size (gpustack #3169): else unknown, and the vLLM fit
    says so."""
    settings = model.speculative_config
    name = settings.draft_model if settings and settings.enabled else None
    if not name:
        return None
    if given is not None and given.draft is not None:
        return given.draft
    if name.startswith("/"):
        try:
            config, weights = read_model(Path(name))
            return DraftModel(name, weights, Architecture.from_config(config))
        except BadInput:
            pass
    return DraftModel(name)


# worker/backends/vllm.py::_get_speculative_arguments: the algorithms it passes on, as vLLM's methods
_GPUSTACK_METHODS = {"eagle3": "eagle3", "mtp": "mtp", "ngram": "ngram"}


def _speculative(model: Model) -> Speculative | None:
    """What GPUStack's worker passes as --speculative-config for the model (nothing for another algorithm)."""
    settings = model.speculative_config
    if settings is None or not settings.enabled:
        return None
    method = _GPUSTACK_METHODS.get((settings.algorithm or "").lower())
    if method is None:
        return None
    return Speculative(method, settings.num_draft_tokens or None, model=settings.draft_model or None)


def _request(model: Model, spec: ModelSpec, workers: Sequence[Worker]) -> replay.Request:
    """The workers (and GPUs) the scheduler may use for this model."""
    selector = model.worker_selector or {}
    allowed = frozenset(w.id for w in workers if w.cluster_id == model.cluster_id
                        and all(w.labels.get(k) == v for k, v in selector.items()))
    gpu_ids = (model.gpu_selector.gpu_ids or []) if model.gpu_selector else []
    distributed = model.distributed_inference_across_workers
    return replay.Request(
        spec, allowed, gpustack_paths.selection_of(gpu_ids) if gpu_ids else None, len(gpu_ids),
        model.gpu_selector.gpus_per_replica if model.gpu_selector else None,
        "binpack" if (model.placement_strategy or "").lower() == "binpack" else "spread",
        True if distributed is None else distributed,
        _executor_mp(model), bool(model.cpu_offloading), _kv_offload(model), _selected_types(gpu_ids))


def _selected_types(gpu_ids: Sequence[str]) -> frozenset[str]:
    """The GPU types gpu_selector.gpu_ids ("<worker>:<type>:<index>") name."""
    return frozenset(parts[-2] for gpu_id in gpu_ids if len(parts := gpu_id.rsplit(":", 2)) == 3)


def _kv_offload(model: Model) -> gpustack.KvOffload | None:
    """The model's extended KV cache when it lives in its worker's RAM (enabled, not a shared cache service)."""
    settings = model.extended_kv_cache
    if settings is None or not settings.local:
        return None
    return gpustack.KvOffload(settings.ram_size, settings.ram_ratio)


def _executor_mp(model: Model) -> bool:
    return executor_is_mp(model.backend_parameters, model.backend_version, model.image_name)


def _instance(inst: ModelInstance, models: Mapping[int, Model],
              types: Mapping[int, str | None]) -> replay.Instance | None:
    model = models.get(inst.model_id)
    if model is None:
        return None
    main = gpustack.counts_on(inst.gpu_type, types.get(inst.worker_id), main=True)
    return replay.Instance(inst.id, model.name, inst.placed, _claims_seen(inst, types),
                           distributed=bool(inst.subordinates), worker=inst.worker_id,
                           backend=(model.backend or "").lower(), stuck=inst.stuck, ram=inst.ram_claim if main else 0)


def _claims_seen(inst: ModelInstance, types: Mapping[int, str | None]) -> dict[tuple[int, int], int]:
    """Its claims on the GPUs the selectors see: on a worker of several GPU types, only those of the type they
    use (gpustack.counts_on); GPU indexes repeat across types there."""
    return {(worker, index): size for (worker, index), size in inst.claims().items()
            if gpustack.counts_on(inst.gpu_type, types.get(worker), main=worker == inst.worker_id)}


def _worker_gpus(worker: Worker) -> replay.WorkerGpus:
    """The worker as GPUStack's selectors see it: the GPUs of its visible type only (gpustack.visible_gpu_type)."""
    kind = gpustack.visible_gpu_type([gpu.type for gpu in worker.gpus])
    return replay.WorkerGpus(
        worker.id, worker.name,
        {gpu.index: gpu.memory.total if gpu.memory else 0 for gpu in worker.gpus if gpu.type == kind},
        worker.reserved_vram, worker.state == "ready", worker.ram_total, worker.reserved_ram, worker.unified_memory,
        kind)


def _verdicts(state: GpuStackState, specs: Mapping[str, ModelSpec], unknown: Mapping[str, str],
              verdicts: Mapping[int, replay.Verdict], other_order: Mapping[str, int]) -> tuple[ModelVerdict, ...]:
    out = []
    predicted = replay.pending_counts(verdicts)
    by_model: dict[str, list[replay.Verdict]] = {}
    for verdict in verdicts.values():
        by_model.setdefault(verdict.model, []).append(verdict)
    pending_ids = {i.id for i in state.instances if not i.placed}
    for model in sorted(state.models, key=lambda m: m.name):
        instances = [i for i in state.instances if i.model_id == model.id]
        pending = sum(1 for i in instances if i.state == "pending")
        judged = model.backend_kind is not None
        size_known = (model.name in specs if judged and not isinstance(unknown.get(model.name), NotModelled)
                      else None)
        evaluated = model.name in specs
        if not judged:
            note = f"backend {model.backend} is not vLLM, SGLang or Custom: the rulebooks do not apply"
        elif model.name in unknown:
            note = unknown[model.name]
        else:
            note = next((v.reason for v in sorted(by_model.get(model.name, []), key=lambda v: v.instance)
                         if not v.placed), "")
        if evaluated and other_order.get(model.name, 0) != predicted.get(model.name, 0):
            note = (f"{predicted.get(model.name, 0)} pending with GPUStack's workers in id order, "
                    f"{other_order.get(model.name, 0)} in the reverse order: which worker wins a tie is not fixed "
                    f"in GPUStack. {note}").strip()
        decisions = tuple(sorted((v for v in by_model.get(model.name, []) if v.instance in pending_ids),
                                 key=lambda v: v.instance))
        out.append(ModelVerdict(model.name, model.replicas, pending,
                                predicted.get(model.name, 0) if evaluated else None, size_known, note, decisions))
    return tuple(out)


def _predicted_here(worker: Worker, state: GpuStackState, verdicts: Mapping[int, replay.Verdict]) -> dict[int, int]:
    """What the pending instances our replay places on this worker would claim on each of its GPUs."""
    pending = {i.id for i in state.instances if not i.placed}
    predicted: dict[int, int] = {}
    for instance, verdict in verdicts.items():
        if instance in pending and verdict.placed:
            for (worker_id, index), size in verdict.claims.items():
                if worker_id == worker.id:
                    predicted[index] = predicted.get(index, 0) + size
    return predicted


def _allocated(worker: Worker | None) -> dict[int, int]:
    if worker is None:
        return {}
    return {gpu.index: gpu.memory.allocated for gpu in worker.gpus
            if gpu.memory is not None and gpu.memory.allocated is not None}


def _metrics_url(instance: ModelInstance) -> str | None:
    """A running instance's own vLLM /metrics, from GPUStack's API (its worker_ip and port)."""
    if instance.state != "running":
        return None
    return vllm_instance.metrics_url({}, {"worker_ip": instance.worker_ip, "port": instance.port})


def _node_models(worker: Worker, state: GpuStackState, specs: Mapping[str, ModelSpec],
                 requests: Mapping[str, replay.Request], overlay: LoadedManifest | None,
                 source: str) -> NodeModels:
    """This worker as a manifest would describe it: the models it could take (their pending instances), the model
    it runs (placed_on, with GPUStack's actual claims), and the claims of everything else bound here."""
    booked: dict[int, int] = {}
    models: list[ModelSpec] = []
    for model in sorted(state.models, key=lambda m: m.id):
        if model.cluster_id != worker.cluster_id:
            continue
        instances = sorted((i for i in state.instances if i.model_id == model.id), key=lambda i: i.id)
        here = [(i, _claims_on(i, worker.id)) for i in instances]
        here = [(i, claims) for i, claims in here if claims]
        pending = [i for i in instances if not i.placed]
        request = requests.get(model.name)
        spec = _sized(specs.get(model.name), request, state.workers)
        if spec is not None and request is not None and pending and worker.id in request.workers:
            pinned = None if request.selection is None else request.selection.get(worker.name)
            if request.selection is None or pinned:
                models.append(replace(spec, replicas=len(pending), pinned_gpus=pinned,
                                      engine_version=engine_version(model, None, worker, pinned or (), overlay)))
        elif spec is not None and here and here[0][0].worker_id == worker.id and not here[0][0].subordinates:
            instance, claims = here.pop(0)
            models.append(replace(spec, placed_on=tuple(sorted(claims)), placed_claims=claims, replicas=1,
                                  metrics_url=spec.metrics_url or _metrics_url(instance),
                                  engine_version=engine_version(model, instance, worker, instance.gpu_indexes or (),
                                                                overlay)))
        for _, claims in here:  # every instance bound here that is not shown as a model above
            for index, size in claims.items():
                booked[index] = booked.get(index, 0) + size
    base = overlay.cluster if overlay else Cluster()
    cluster = replace(base, system_reserved_vram=worker.reserved_vram)
    return NodeModels(f"GPUStack {source}, worker {worker.name}", cluster, tuple(models), booked)


def engine_version(model: Model, instance: ModelInstance | None, worker: Worker, gpu_indexes: Sequence[int],
                   overlay: LoadedManifest | None) -> EngineVersion:
    """The engine version of ``model`` on ``worker`` (its ``instance`` there, if running), as GPUStack knows or
    picks it (rules/runner_pick.py); the overlay's engine_version for the model where GPUStack leaves it on
    "Auto" and has deployed nothing yet."""
    detected = instance.api_detected_backend_version if instance else None
    deployed = instance.backend_version if instance else None
    entry = next((e for e in overlay.entries if e.name == model.name), None) if overlay else None
    if not (detected or deployed or model.backend_version) and entry is not None and entry.engine_version:
        return EngineVersion(entry.engine_version, "the overlay manifest's engine_version for the model")
    gpu = _device_of(worker, gpu_indexes)
    return runner_pick.choose(model.backend_kind or backends.VLLM, detected=detected, deployed=deployed,
                              chosen=model.backend_version, cuda=gpu.runtime_version if gpu else None,
                              cuda_known=gpu is not None and gpu.type == "cuda")  # runners: CUDA builds only


def _device_of(worker: Worker, gpu_indexes: Sequence[int]) -> GpuDevice | None:
    """The GPU whose runtime GPUStack resolves the runner for: the first of those selected, else the
    worker's first (gpustack/worker/backends/base.py::_get_device_info)."""
    by_index = {gpu.index: gpu for gpu in worker.gpus}
    selected = [by_index[i] for i in gpu_indexes if i in by_index]
    return selected[0] if selected else (worker.gpus[0] if worker.gpus else None)


def _sized(spec: ModelSpec | None, request: replay.Request | None, workers: Sequence[Worker]) -> ModelSpec | None:
    """An SGLang model with the smallest GPU of its workers: GPUStack sizes its fraction for that card."""
    if spec is None or request is None or not backends.of(spec.backend).engine_sizes_own_fraction:
        return spec
    usable = [w for w in workers if w.id in request.workers and w.state == "ready"
              and (request.selection is None or w.name in request.selection)]
    pinned = None if request.selection is None else {w.id: request.selection[w.name] for w in usable}
    totals = {w.id: _worker_gpus(w).totals for w in usable}
    return replace(spec, sizing_total=gpustack.smallest_total(totals, pinned))


def _claims_on(inst: ModelInstance, worker_id: int) -> dict[int, int]:
    return {index: size for (wid, index), size in inst.claims().items() if wid == worker_id}


class StateReader(Protocol):
    async def read(self) -> GpuStackState: ...

    async def close(self) -> None: ...


class GpuStackSource:
    """Keeps the last good GpuStackView, refreshed every ``interval`` seconds."""

    def __init__(self, client: StateReader, *, worker_name: str | None, source: str,
                 overlay: Callable[[], LoadedManifest | None] = lambda: None,
                 read_model: ModelReader = read_model_directory) -> None:
        self._client = client
        self._worker_name = worker_name
        self._source = source
        self._overlay = overlay
        self._read_model = read_model
        self.view: GpuStackView | None = None
        self.success = False
        self.duration_seconds = 0.0
        self.last_success_timestamp = 0.0
        self._last_error: str | None = None
        self._worker_missing_logged = False

    async def refresh(self) -> bool:
        started = time.perf_counter()
        try:
            state = await self._client.read()
            # Off the event loop: it reads model directories and replays the whole cluster.
            view = await asyncio.to_thread(build_view, state, worker_name=self._worker_name, source=self._source,
                                           overlay=self._overlay(), read_model=self._read_model)
        except Exception as exc:  # noqa: BLE001 - whatever GPUStack sends, the exporter keeps serving
            self._failed(exc)
            return False
        finally:
            self.duration_seconds = time.perf_counter() - started
        self.view = view
        self.success, self.last_success_timestamp = True, time.time()
        if self._last_error is not None:
            log.info("GPUStack read again after: %s", self._last_error)
            self._last_error = None
        self._log_worker(view)
        return True

    def _failed(self, exc: Exception) -> None:
        self.success = False
        message = str(exc) or type(exc).__name__
        if message != self._last_error:  # once per distinct problem, not at every refresh
            log.error("GPUStack refresh failed, keeping the last good view: %s", message)
            self._last_error = message

    def _log_worker(self, view: GpuStackView) -> None:
        if view.worker is None and self._worker_name is not None and not self._worker_missing_logged:
            log.warning("no GPUStack worker is named %r or has that hostname: per-node fit metrics are off "
                        "(set --gpustack.worker-name)", self._worker_name)
        self._worker_missing_logged = view.worker is None

    async def close(self) -> None:
        await self._client.close()

