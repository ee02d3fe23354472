"""A manifest's running models as rules/usage.py attributes processes to them: booked against used
without GPUStack.

A model placed on this node (``placed_on``) books what the rules say it claims there (rules/node.py
``placed_claims``); with ``processes`` (sources/manifest.py ``ProcessMatch``) its engine is known by a
port it listens on and a piece of its command line. Booked against used is computed only once some
running model says ``processes``: before that nothing could be told apart, and every engine's memory
would count as nobody's. A running model without ``processes`` still books its claim on the GPU
(``watched`` False: no process found of it is no finding); its processes count as nobody's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ModelError
from ..rules.model import Cluster, ModelSpec
from ..rules.node import placed_claims
from ..rules.usage import Instance, NodeUsage
from ..snapshot import GpuReading, NodeSnapshot
from .gpustack_usage import read_usage
from .manifest import LoadedManifest, ProcessMatch

RUNNING = "running"  # a placed model's engine runs, as far as a manifest can say


def read_manifest_usage(manifest: LoadedManifest, snapshot: NodeSnapshot, proc_root: Path | None) -> NodeUsage | None:
    """Booked against used for the manifest's running models; None where none says ``processes``."""
    instances = manifest_instances(manifest, snapshot)
    return read_usage(snapshot, instances, proc_root) if instances else None


def says_processes(manifest: LoadedManifest) -> bool:
    """Some model of the manifest says how its processes are known: booked against used is computed."""
    return any(entry.processes is not None for entry in manifest.entries)


def manifest_instances(manifest: LoadedManifest, snapshot: NodeSnapshot) -> tuple[Instance, ...]:
    """Every running model of the manifest with its claims here, in manifest order; () where none says
    ``processes``."""
    if not says_processes(manifest):
        return ()
    matches: Mapping[str, ProcessMatch | None] = {entry.name: entry.processes for entry in manifest.entries}
    gpus = [gpu for gpu in snapshot.gpus if gpu.up]
    return tuple(_instance(model, matches.get(model.name), manifest.cluster, gpus)
                 for model in manifest.models if model.placed)


def _instance(model: ModelSpec, match: ProcessMatch | None, cluster: Cluster, gpus: Sequence[GpuReading]) -> Instance:
    if match is None:
        return Instance(model.name, model.name, RUNNING, _claims(model, cluster, gpus), watched=False)
    return Instance(model.name, model.name, RUNNING, _claims(model, cluster, gpus), ports=frozenset(match.ports),
                    cmdline=match.cmdline)


def _claims(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> dict[int, int]:
    try:
        return {index: claim for index, claim in placed_claims(model, cluster, gpus).items() if claim > 0}
    except ModelError:
        return {}  # it cannot be judged (its verdict says why): no claim to set beside its memory
