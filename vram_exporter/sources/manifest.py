"""The manifest: the models a team runs or wants to run, and the cluster's settings (docs/design.md#manifest).

Validated by pydantic with unknown keys rejected; every error names the file, the
line and the field. ``load_manifest`` also resolves each model given by ``path``
(a local Hugging Face directory: config.json and the weight files' sizes, counted
exactly as GPUStack counts them), so the rulebooks receive plain values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from ..rules import backends, categories as model_categories, gpustack, runner_pick
from ..rules.gpustack import ENV_CLAIM
from ..rules.model import Architecture, Backend, Cluster, DraftModel, EngineVersion, LoraAdapter, ModelSpec
from ..rules.flags import parse_model_len
from ..units import parse_size
from ..errors import BadInput
from .yamlfile import InputFileError, Strict, field_path, load_located

Size = Annotated[int, BeforeValidator(parse_size)]
Utilization = Annotated[float, Field(gt=0, le=1)]
Version = Annotated[str, Field(min_length=1, pattern=r"^v?[0-9][0-9A-Za-z.+_-]*$")]

# Root-level files with these extensions are the weights, as GPUStack 2.3.0 counts them. From a local
# directory every one counts, consolidated.safetensors too (gpustack/scheduler/calculator.py::
# calculate_llm_model_weight_size); from a Hugging Face or ModelScope listing consolidated.safetensors
# is left out, "usually a duplicate of other weight files" (gpustack/utils/hub.py::get_model_weight_size).
WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth")
EXCLUDED_FROM_HUB_LISTING = ("consolidated.safetensors",)
WeightsFrom = Literal["local", "huggingface", "modelscope"]
# GPUStack's CategoryEnum (rules/categories.py NAMES)
Category = Literal["llm", "embedding", "image", "reranker", "speech_to_text", "text_to_speech", "unknown"]


class ClusterSettings(Strict):
    scheduler: Literal["gpustack", "gpustack-0.6"] = "gpustack"
    system_reserved_vram: Size = 0
    vllm_default_gpu_memory_utilization: Utilization | None = None  # None: the vLLM version's own default
    vllm_context_overhead: Size = 512 * 2**20
    vllm_runtime_overhead: Size | None = None  # None: fitted per model (rules/backends/vllm/runtime.py), else 1 GiB
    vllm_version: Literal["0.26", "0.33"] = "0.33"  # rules that differ: rules/backends/vllm/runtime.py VLLM_RULES
    # The engine version per backend for every model that names none (README "Versions"); else the runner
    # GPUStack picks for the node's CUDA (cuda_version); else unknown, and said.
    engine_version: dict[Literal["vllm", "sglang"], Version] = {}
    cuda_version: Version | None = None  # the node's CUDA (GPUStack: each GPU's runtime_version)

    @model_validator(mode="after")
    def _one_vllm_version(self) -> ClusterSettings:
        if "vllm_version" in self.model_fields_set and "vllm" in self.engine_version:
            raise ValueError("give the vLLM version once: engine_version.vllm (vllm_version is its older spelling)")
        return self

    def engine_version_of(self, backend: str) -> EngineVersion:
        """The version a model of ``backend`` that names none runs, and why."""
        given = self.engine_version.get(backend)  # type: ignore[call-overload]
        if given is not None:
            return EngineVersion(given, "the manifest's cluster engine_version")
        older = {backends.VLLM: self.vllm_version} if "vllm_version" in self.model_fields_set else {}
        if (given := older.get(backend)) is not None:
            return EngineVersion(given, "the manifest's cluster vllm_version")
        return runner_pick.choose(backend, cuda=self.cuda_version, cuda_known=self.cuda_version is not None)

    @field_validator("system_reserved_vram")
    @classmethod
    def _whole_gib(cls, value: int) -> int:
        # GPUStack's --system-reserved takes whole GiB for VRAM.
        if value % 2**30:
            raise ValueError("GPUStack reserves VRAM in whole GiB (--system-reserved '{\"vram\": N}')")
        return value

    def to_cluster(self) -> Cluster:
        return Cluster(**self.model_dump(exclude={"engine_version", "cuda_version"}))

class ProcessMatch(Strict):
    """How a running model's engine processes are known without GPUStack (README "Booked against used"):
    a port it listens on (or is given as ``--port N``), a piece of its command line, or both. Pids are not
    asked for: they change at every restart."""

    ports: list[Annotated[int, Field(ge=1, le=65535)]] = []
    cmdline: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _says_something(self) -> ProcessMatch:
        if not self.ports and self.cmdline is None:
            raise ValueError("processes needs ports, cmdline or both")
        return self


class LoraAdapterEntry(Strict):
    """One LoRA adapter a model serves (GPUStack's ``lora_list``): its directory (adapter_config.json and the
    weight files at its root), or its weight files' size and, where known, its rank."""

    name: str = Field(min_length=1)
    path: str | None = None
    weights_bytes: Size | None = None
    rank: int | None = Field(default=None, ge=1)  # adapter_config.json's r (or the largest of rank_pattern)

    @model_validator(mode="after")
    def _one_source(self) -> LoraAdapterEntry:
        if (self.path is None) == (self.weights_bytes is None):
            raise ValueError("a LoRA adapter needs path (its directory) or weights_bytes, one of them")
        if self.path is not None and self.rank is not None:
            raise ValueError("rank is read from path's adapter_config.json: give path or rank, not both")
        return self


class DraftModelEntry(Strict):
    """The draft model of speculative decoding (vLLM's --speculative-config): GPUStack does not book it
    (gpustack #3169), the engine loads it; a local directory, or its weights' size and config.json."""

    path: str | None = None
    weights_from: WeightsFrom = "local"
    weights_bytes: Size | None = None
    config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DraftModelEntry:
        inline = self.weights_bytes is not None or self.config is not None
        if self.path is not None and inline:
            raise ValueError("give either path (the draft's directory) or weights_bytes with config, not both")
        if self.path is None and (self.weights_bytes is None or self.config is None):
            raise ValueError("a draft model needs path (its directory), or both weights_bytes and config")
        return self


class ModelEntry(Strict):
    name: str = Field(min_length=1)
    path: str | None = None
    # Where GPUStack sizes the model from: a local directory (local_path), or a hub's file listing.
    weights_from: WeightsFrom = "local"
    weights_bytes: Size | None = None
    config: dict[str, Any] | None = None
    max_model_len: int | str | None = None
    backend_parameters: list[str] = []
    env: dict[str, str] = {}
    placed_on: list[Annotated[int, Field(ge=0)]] | None = None
    processes: ProcessMatch | None = None  # a running model's processes, for booked against used
    pinned_gpus: list[Annotated[int, Field(ge=0)]] | None = None
    replicas: int = Field(default=1, ge=1)
    runtime_overhead: Size | None = None
    # A running model's own vLLM /metrics: its real KV cache is shown next to the prediction.
    metrics_url: str | None = None
    # Which GPUStack selector places it and which engine's rules apply (GPUStack's backend field).
    backend: Backend = "vllm"
    run_command: str | None = None  # a custom backend's command line: GPUStack reads fraction flags in it
    engine_version: Version | None = None  # the engine version it runs (GPUStack: its backend_version)
    # GPUStack's model categories; empty: detected from config.json's architectures, as GPUStack fills them in
    categories: list[Category] = []
    # With the manifest's workers (a cluster): the worker placed_on / pinned_gpus refer to, GPUStack's
    # gpu_selector and worker_selector, placement strategy and distributed inference across workers.
    worker: str | None = None
    gpu_ids: list[str] = []
    # gpu_selector.gpus_per_replica: how many of the selected GPUs (pinned_gpus or gpu_ids) one replica
    # takes; unset, GPUStack fills it in (scheduler.py set_model_gpus_per_replica).
    gpus_per_replica: int | None = Field(default=None, ge=1)
    worker_selector: dict[str, str] = {}
    placement_strategy: Literal["spread", "binpack"] = "spread"
    distributed_inference_across_workers: bool = True
    # What the engine loads beyond the model: GPUStack's lora_list (it adds their weights to its estimate,
    # its worker starts vLLM with --enable-lora for them) and the draft of --speculative-config.
    lora_adapters: list[LoraAdapterEntry] = []
    draft_model: DraftModelEntry | None = None

    @field_validator("env", mode="before")
    @classmethod
    def _env_as_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                    for k, v in value.items()}
        return value

    @field_validator("env")
    @classmethod
    def _claim_is_bytes(cls, env: dict[str, str]) -> dict[str, str]:
        claim = env.get(ENV_CLAIM)
        if claim is not None and not claim.strip().isdigit():
            raise ValueError(f"{ENV_CLAIM} must be a whole number of bytes, as GPUStack reads it "
                             f"(it silently ignores anything else), got {claim!r}")
        return env

    @field_validator("gpus_per_replica")
    @classmethod
    def _splits_the_selection(cls, value: int | None, info: ValidationInfo) -> int | None:
        """gpus_per_replica splits a manual selection: GPUStack reads it only with gpu_ids, and a replica
        cannot take more GPUs than were selected."""
        if value is None:
            return value
        selected = len(info.data.get("pinned_gpus") or info.data.get("gpu_ids") or ())
        if not selected:
            raise ValueError("gpus_per_replica splits a manual selection: it needs pinned_gpus or gpu_ids")
        if value > selected:
            raise ValueError(f"gpus_per_replica {value} exceeds the {selected} GPUs selected")
        return value

    @field_validator("max_model_len")
    @classmethod
    def _model_len(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, str):
            parse_model_len(value)
        elif isinstance(value, int) and value <= 0 and value != -1:
            raise ValueError("max_model_len must be positive (or -1 / 'auto')")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        inline = self.weights_bytes is not None or self.config is not None
        if self.path is not None and inline:
            raise ValueError("give either path (a local model directory) or weights_bytes with config, not both")
        if self.path is None and (self.weights_bytes is None or self.config is None) and not (
                not inline and backends.judged_by_claim(self.backend, self.env)):
            raise ValueError(f"a model needs path (a local model directory), or both weights_bytes and config "
                             f"(only a custom-backend model whose env sets {ENV_CLAIM} needs neither: GPUStack "
                             f"then reads neither)")
        if self.placed_on is not None and self.pinned_gpus is not None:
            raise ValueError("placed_on (already running) and pinned_gpus (a candidate) exclude each other")
        if self.metrics_url is not None and self.placed_on is None:
            raise ValueError("metrics_url is a running vLLM's /metrics: it needs placed_on")
        if self.processes is not None and self.placed_on is None:
            raise ValueError("processes recognise a running model's engine: it needs placed_on")
        if self.run_command is not None and not backends.of(self.backend).reads_run_command:
            raise ValueError("run_command is a custom backend's command line: it needs backend: custom")
        if self.metrics_url is not None and not self.metrics_url.startswith(("http://", "https://")):
            raise ValueError(f"metrics_url must be an http:// or https:// URL, got {self.metrics_url!r}")
        if self.engine_version is not None and not backends.of(self.backend).engine_modelled:
            raise ValueError("engine_version is the vLLM or SGLang version: a custom backend's engine is not modelled")
        if self.weights_from != "local" and self.path is None:
            raise ValueError("weights_from says how the files under path are counted: it needs path")
        names = [a.name for a in self.lora_adapters]
        if len(set(names)) != len(names):
            raise ValueError("two lora_adapters have the same name")
        if self.draft_model is not None and not backends.of(self.backend).draft_modelled:
            raise ValueError("draft_model is read by the vLLM rules only: another engine's speculative decoding "
                             "is not modelled")
        return self

class WorkerEntry(Strict):
    """One GPUStack worker of a manifest's cluster: what ``vram-exporter check`` places models on."""

    name: str = Field(min_length=1)
    gpus: list[Size] = Field(min_length=1)  # each GPU's memory total as the worker reports it (e.g. 81559MiB)
    system_reserved_vram: Size | None = None  # None: the cluster's
    labels: dict[str, str] = {}


class Manifest(Strict):
    cluster: ClusterSettings = ClusterSettings()
    # GPUStack's workers: with them, `check` answers where GPUStack would place each model in the
    # whole cluster (its candidate search over every worker), not only on this node.
    workers: list[WorkerEntry] = []
    models: list[ModelEntry] = []

    @model_validator(mode="after")
    def _unique_names(self) -> Manifest:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} appears twice")
            seen.add(model.name)
        workers = {w.name: w for w in self.workers}
        if len(workers) != len(self.workers):
            raise ValueError("two workers have the same name")
        for model in self.models:
            _check_cluster_fields(model, workers)
        return self


def _check_cluster_fields(model: ModelEntry, workers: Mapping[str, WorkerEntry]) -> None:
    """The cluster fields of a model name workers and GPUs the manifest has."""
    uses = model.worker or model.gpu_ids or model.worker_selector or model.gpus_per_replica
    if uses and not workers:
        raise ValueError(f"model {model.name!r}: worker, gpu_ids, worker_selector and gpus_per_replica need the "
                         "manifest's workers (gpus_per_replica: GPUStack then gives each replica that many of the "
                         "selected GPUs, picked per replica by its manual selection and placement scorer, which the "
                         "cluster replay of `check` models; one node's view judges a replica on every pinned GPU)")
    if not workers:
        return
    if model.worker is not None and model.worker not in workers:
        raise ValueError(f"model {model.name!r}: worker {model.worker!r} is not among the manifest's workers")
    if (model.placed_on is not None or model.pinned_gpus is not None) and model.worker is None and len(workers) > 1:
        raise ValueError(f"model {model.name!r}: with several workers, placed_on and pinned_gpus need `worker`")
    if model.gpu_ids and model.pinned_gpus is not None:
        raise ValueError(f"model {model.name!r}: give gpu_ids or pinned_gpus, not both")
    worker = workers[model.worker] if model.worker else next(iter(workers.values()))
    for index in (model.placed_on or []) + (model.pinned_gpus or []):
        if index >= len(worker.gpus):
            raise ValueError(f"model {model.name!r}: worker {worker.name!r} has no GPU {index}")
    for gpu_id in model.gpu_ids:
        name, _, index = gpu_id.rpartition(":")
        name = name.rpartition(":")[0]
        if name not in workers or not index.isdigit() or int(index) >= len(workers[name].gpus):
            raise ValueError(f"model {model.name!r}: gpu_ids entry {gpu_id!r} names no GPU of the manifest's "
                             "workers (the form is <worker>:cuda:<index>)")

@dataclass(frozen=True, slots=True)
class LoadedManifest:
    """A manifest file, validated and resolved."""

    path: Path
    cluster: Cluster
    models: tuple[ModelSpec, ...]
    booked: Mapping[int, int] = field(default_factory=dict)  # claims of instances not among the models
    workers: tuple[WorkerEntry, ...] = ()  # the cluster, when the manifest describes one
    entries: tuple[ModelEntry, ...] = ()  # the models as written (their cluster fields)


@dataclass(frozen=True, slots=True)
class NodeModels:
    """The models judged on this node and the settings they are judged with, when they come from
    somewhere else than a manifest file (GPUStack's API): the same three values as a manifest."""

    origin: str  # where they were read, for a person
    cluster: Cluster
    models: tuple[ModelSpec, ...]
    booked: Mapping[int, int] = field(default_factory=dict)
    # What the candidates would add per GPU, decided over the whole cluster (GPUStack may put a pending
    # instance on another worker): replaces the node's own placement of them in the bookings.
    predicted: Mapping[int, int] | None = None

def load_manifest(path: Path | str, *, cluster: bool = False) -> LoadedManifest:
    """Validate and resolve a manifest; InputFileError lists every problem with its line. ``cluster``:
    the reader places models over the manifest's workers (`check`); the exporter judges its own node
    and refuses them rather than book models running elsewhere on its GPUs."""
    path = Path(path)
    manifest, line_of = load_located(Manifest, path)
    problems: list[tuple[int | None, str, str]] = []
    if manifest.workers and not cluster:
        problems.append((line_of(("workers",)), "workers", "a manifest's workers (a whole cluster) are read by "
                         "`vram-exporter check`; `serve` judges its own node: give it a manifest without workers"))
    models = []
    for i, entry in enumerate(manifest.models):
        try:
            models.append(_resolve(entry, path.parent, manifest.cluster))
            if not manifest.workers:
                _judged_whole(models[-1])
        except _FieldError as exc:
            loc = ("models", i, *exc.field)
            problems.append((line_of(loc), field_path(loc), str(exc)))
    if problems:
        raise InputFileError(path, problems)
    return LoadedManifest(path, manifest.cluster.to_cluster(), tuple(models), workers=tuple(manifest.workers),
                          entries=tuple(manifest.models))

class _FieldError(BadInput):
    def __init__(self, field: str | tuple[str | int, ...], message: str):
        super().__init__(message)
        self.field = field if isinstance(field, tuple) else (field,)

def _resolve(entry: ModelEntry, base: Path, cluster: ClusterSettings) -> ModelSpec:
    if entry.path is not None:
        directory = (base / entry.path).expanduser()
        config, weights = read_model_directory(directory, entry.weights_from)
        source_field = "path"
    else:
        config, weights, source_field = entry.config, entry.weights_bytes, "config"
    arch = None  # not read: a custom model GPUStack judges by its claim alone (ModelEntry._one_source)
    if config is not None:
        try:
            arch = Architecture.from_config(config)
        except ValueError as exc:
            raise _FieldError(source_field, str(exc)) from None
    max_len = parse_model_len(entry.max_model_len) if isinstance(entry.max_model_len, str) else entry.max_model_len
    categories = model_categories.filled_in(entry.categories, arch.architectures if arch else (),
                                            entry.backend_parameters if backends.of(entry.backend).reads_hf_overrides
                                            else ())
    problem = model_categories.not_modelled(categories)
    if problem and not backends.judged_by_claim(entry.backend, entry.env):
        raise _FieldError("categories" if entry.categories else source_field, problem)
    spec = ModelSpec(
        name=entry.name, weights_bytes=weights, arch=arch,
        backend_parameters=tuple(entry.backend_parameters), env=dict(entry.env), max_model_len=max_len,
        placed_on=_tuple(entry.placed_on), pinned_gpus=_tuple(entry.pinned_gpus), replicas=entry.replicas,
        runtime_overhead=entry.runtime_overhead, metrics_url=entry.metrics_url,
        backend=entry.backend, run_command=entry.run_command, engine_version=engine_version_of(entry, cluster),
        lora_adapters=tuple(_adapter(a, base, ("lora_adapters", i)) for i, a in enumerate(entry.lora_adapters)),
        draft=_draft(entry.draft_model, base) if entry.draft_model is not None else None,
        categories=categories,
    )
    if spec.draft is not None and not _passes_speculative_config(spec):
        raise _FieldError("draft_model", "draft_model is the draft of vLLM's --speculative-config, which "
                          "backend_parameters do not pass")
    return spec


def _passes_speculative_config(spec: ModelSpec) -> bool:
    try:
        return spec.vllm.speculative_config is not None
    except BadInput:  # flags vLLM cannot read: the model's verdict says so
        return True


def _adapter(entry: LoraAdapterEntry, base: Path, where: tuple[str, int]) -> LoraAdapter:
    if entry.path is None:
        return LoraAdapter(entry.name, entry.weights_bytes, entry.rank)
    try:
        weights, rank, pattern_rank = read_adapter_directory((base / entry.path).expanduser())
    except _FieldError as exc:
        raise _FieldError((*where, "path"), str(exc)) from None
    return LoraAdapter(entry.name, weights, rank, pattern_rank)


def _draft(entry: DraftModelEntry, base: Path) -> DraftModel:
    if entry.path is not None:
        try:
            config, weights = read_model_directory((base / entry.path).expanduser(), entry.weights_from)
        except _FieldError as exc:
            raise _FieldError(("draft_model", "path"), str(exc)) from None
        where = ("draft_model", "path")
        source = entry.path
    else:
        config, weights, where, source = entry.config, entry.weights_bytes, ("draft_model", "config"), "the manifest's"
    try:
        return DraftModel(source, weights, Architecture.from_config(config))
    except ValueError as exc:
        raise _FieldError(where, str(exc)) from None


def _judged_whole(spec: ModelSpec) -> None:
    """One node's view judges every replica of a pinned model on all its pinned GPUs. GPUStack gives each
    replica fewer of them where gpus_per_replica (filled in by set_model_gpus_per_replica: the world size,
    else the largest power of 2 <= the selection per replica) is smaller; it then picks them per replica
    (its manual selection over the worker's GPUs, then its placement scorer): the cluster replay of a
    manifest with workers models that, the node's view does not."""
    if not spec.pinned_gpus or len(spec.pinned_gpus) < 2:
        return
    try:
        world_size = backends.of(spec.backend).selector.booking(spec, 0).world_size
    except BadInput:
        return  # the model's own refusal is said where it is judged
    if count := gpustack.selection_split(spec.pinned_gpus, spec.replicas, world_size,
                                         gpustack.skips_gpu_count_check(spec.env)):
        raise _FieldError("pinned_gpus", (
            f"GPUStack gives each of the {spec.replicas} replica(s) {count} of these {len(spec.pinned_gpus)} GPUs "
            "(gpus_per_replica as set_model_gpus_per_replica fills it in) and picks them per replica; one node's "
            "view judges a replica on every pinned GPU. Describe this node under `workers:` (vram-exporter check "
            "places each replica as GPUStack does), or pin as many GPUs as one replica takes"))


def engine_version_of(entry: ModelEntry, cluster: ClusterSettings) -> EngineVersion:
    """The model's own engine_version, else the cluster's for its backend (``engine_version_of``)."""
    if entry.engine_version is not None:
        return EngineVersion(entry.engine_version, "the manifest's engine_version for the model")
    return cluster.engine_version_of(entry.backend)

def _tuple(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(values)

def read_model_directory(directory: Path, weights_from: WeightsFrom = "local") -> tuple[dict[str, Any], int]:
    """config.json and the weights' size, counted as GPUStack does for ``weights_from``."""
    config_file = directory / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _FieldError("path", f"{config_file} does not exist (path must be a Hugging Face model directory)") from None
    except (OSError, ValueError) as exc:
        raise _FieldError("path", f"cannot read {config_file}: {exc}") from None
    if not isinstance(config, dict):
        raise _FieldError("path", f"{config_file} is not a JSON object")
    weights = weight_files_size(directory, weights_from)
    if weights == 0:
        raise _FieldError("path", f"{directory} has no weight files ({', '.join(WEIGHT_EXTENSIONS)}) at its root")
    return config, weights

def read_adapter_directory(directory: Path) -> tuple[int, int | None, int | None]:
    """A PEFT LoRA adapter's weight files' size and its rank: adapter_config.json's ``r`` and the largest
    of its ``rank_pattern``, as GPUStack's worker reads them (worker/backends/base.py::read_lora_max_rank;
    the file is what marks an adapter, worker/model_file_manager.py::_read_lora_adapter_config)."""
    config_file = directory / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _FieldError("path", f"{config_file} does not exist (path must be a PEFT LoRA adapter directory)") from None
    except (OSError, ValueError) as exc:
        raise _FieldError("path", f"cannot read {config_file}: {exc}") from None
    if not isinstance(config, dict):
        raise _FieldError("path", f"{config_file} is not a JSON object")
    rank = config.get("r") if isinstance(config.get("r"), int) else None
    pattern = config.get("rank_pattern")
    pattern_ranks = [v for v in pattern.values() if isinstance(v, int)] if isinstance(pattern, dict) else []
    weights = weight_files_size(directory)
    if weights == 0:
        raise _FieldError("path", f"{directory} has no weight files ({', '.join(WEIGHT_EXTENSIONS)}) at its root")
    return weights, rank, max(pattern_ranks, default=None)


def weight_files_size(directory: Path, weights_from: WeightsFrom = "local") -> int:
    """Sum of the root-level weight files' sizes, as GPUStack counts them (sparse files count in full;
    symbolic links are followed, as os.scandir's is_file and stat do)."""
    excluded = () if weights_from == "local" else EXCLUDED_FROM_HUB_LISTING
    return sum(
        entry.stat().st_size
        for entry in directory.iterdir()
        if entry.is_file() and entry.name.endswith(WEIGHT_EXTENSIONS) and entry.name not in excluded
    )
