"""What a node's plan is derived from, built one way for ``serve``, ``check --manifest`` and
``check --gpustack.url``: the models (a manifest's, or GPUStack's for this worker), their settings,
the other instances' bookings, the cluster's placement of the candidates here (GPUStack only) and
the GPUs' identities and sizes. Every field is a frozen value: two inputs are the same plan exactly
when they compare equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..rules.model import Cluster, ModelSpec
from ..snapshot import NodeSnapshot
from ..sources.manifest import LoadedManifest, NodeModels


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


def node_inputs(models: LoadedManifest | NodeModels | None, snapshot: NodeSnapshot) -> NodeInputs:
    """The inputs of the node that ``models`` describe, on the GPUs of ``snapshot``. With GPUStack as
    the source (``NodeModels``) the cluster-wide prediction comes with them; without models (no worker
    here, or no readings to judge it on) only the GPUs' bookings are left (GPUStack's defaults)."""
    if models is None:
        return NodeInputs.of(None, (), None, snapshot)
    predicted = models.predicted if isinstance(models, NodeModels) else None
    return NodeInputs.of(models.cluster, models.models, models.booked, snapshot, predicted)


def gpu_sizes(snapshot: NodeSnapshot) -> tuple[GpuSize, ...]:
    return tuple(GpuSize(g.index, g.uuid, g.name, g.up, g.memory.total if g.memory else None,
                         g.memory.reserved if g.memory else None) for g in snapshot.gpus)
