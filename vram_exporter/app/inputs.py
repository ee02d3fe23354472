"""What a node's plan is derived from, built one way for ``serve``, ``check --manifest`` and
``check --gpustack.url``: the models (a manifest's, or GPUStack's for this worker), their settings,
the other instances' bookings, the cluster's placement of the candidates here (GPUStack only) and
the GPUs' identities and sizes. Every field is a frozen value: two inputs are the same plan exactly
when they compare equal. With ``serve``, each running vLLM's own answer on /version
(sources/vllm_client.py) is the version its model's verdicts assume; ``check`` asks no engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ..rules import runner_pick
from ..rules.model import Cluster, ModelSpec
from ..snapshot import NodeSnapshot
from ..sources.manifest import LoadedManifest, NodeModels
from ..sources.vllm_instance import VersionAnswer


@dataclass(frozen=True, slots=True)
class GpuSize:
    """What the static fit reads of a GPU: its identity and sizes (its name gives vLLM's default batch),
    never its free memory."""

    index: int
    uuid: str
    name: str
    up: bool
    total: int | None
    reserved: int | None


@dataclass(frozen=True, slots=True)
class NodeInputs:
    """Everything a plan is derived from, compared by value."""

    cluster: Cluster
    models: tuple[ModelSpec, ...]
    booked: tuple[tuple[int, int], ...]
    gpus: tuple[GpuSize, ...]
    predicted: tuple[tuple[int, int], ...] | None = None  # the cluster's placement of the candidates here

    @classmethod
    def of(cls, cluster: Cluster | None, models, booked: Mapping[int, int] | None,
           snapshot: NodeSnapshot, predicted: Mapping[int, int] | None = None) -> NodeInputs:
        return cls(cluster or Cluster(), tuple(models), tuple(sorted((booked or {}).items())), gpu_sizes(snapshot),
                   None if predicted is None else tuple(sorted(predicted.items())))


def node_inputs(models: LoadedManifest | NodeModels | None, snapshot: NodeSnapshot,
                answers: Mapping[str, VersionAnswer] | None = None) -> NodeInputs:
    """The inputs of the node that ``models`` describe, on the GPUs of ``snapshot``. With GPUStack as
    the source (``NodeModels``) the cluster-wide prediction comes with them; without models (no worker
    here, or no readings to judge it on) only the GPUs' bookings are left (GPUStack's defaults).
    ``answers``: what the running models' engines answered on /version, by model name."""
    if models is None:
        return NodeInputs.of(None, (), None, snapshot)
    predicted = models.predicted if isinstance(models, NodeModels) else None
    return NodeInputs.of(models.cluster, answered(models.models, answers), models.booked, snapshot, predicted)


def answered(models: Iterable[ModelSpec], answers: Mapping[str, VersionAnswer] | None) -> tuple[ModelSpec, ...]:
    """Each running model whose engine answered on /version, at the URL the model names now, with the
    version it answered first (rules/runner_pick.py ``running``)."""
    if not answers:
        return tuple(models)
    return tuple(_answered(model, answers.get(model.name)) for model in models)


def _answered(model: ModelSpec, answer: VersionAnswer | None) -> ModelSpec:
    if answer is None or not model.placed or answer.metrics_url != model.metrics_url:
        return model
    version = runner_pick.running(model.backend, model.engine_version, answer.version, answer.not_a_version)
    return model if version == model.engine_version else replace(model, engine_version=version)


def gpu_sizes(snapshot: NodeSnapshot) -> tuple[GpuSize, ...]:
    return tuple(GpuSize(g.index, g.uuid, g.name, g.up, g.memory.total if g.memory else None,
                         g.memory.reserved if g.memory else None) for g in snapshot.gpus)
