"""GPUStack's instances with claims on this node's GPUs, as rules/usage.py attributes processes to them.

An instance's part on this worker: its own record where it is the main worker (``pid``, ``port``,
``ports``), a subordinate worker's entry where this node serves as one (``subordinate_workers[].pid``,
``ports``). Why these recognise the engine's processes is in rules/usage.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from .gpustack_api import GpuStackState, ModelInstance, Worker
from .processes import read_tree
from ..rules.usage import GpuProcess, Instance, NodeUsage, ProcessInfo, node_usage
from ..snapshot import NodeSnapshot

log = logging.getLogger(__name__)


def read_usage(snapshot: NodeSnapshot, instances: Sequence[Instance], proc_root: Path | None) -> NodeUsage | None:
    """Booked against used on this node's GPUs, reading the GPU processes' tree under ``proc_root`` (None:
    not read; every process then belongs to nobody but an instance's recorded pid). None without NVML."""
    if not snapshot.ok:
        return None
    processes = [GpuProcess(gpu.index, proc.pid, proc.used_bytes) for gpu in snapshot.gpus for proc in gpu.processes]
    pids = sorted({proc.pid for proc in processes})
    tree = _tree(pids, proc_root) if proc_root is not None and pids else {}
    totals = {gpu.index: gpu.memory.total for gpu in snapshot.gpus if gpu.up}
    return node_usage(totals, processes, tree, instances)


def _tree(pids: Sequence[int], proc_root: Path) -> dict[int, ProcessInfo]:
    """The processes' tree; every read in it is bounded and allowed to fail (sources/processes.py), and a
    /proc of a form not foreseen costs the attribution, never the scrape."""
    try:
        return read_tree(pids, proc_root)
    except Exception:  # noqa: BLE001 - the GPU metrics must not go down with an odd /proc
        log.warning("the GPU processes under %s could not be read; their memory counts as nobody's", proc_root,
                    exc_info=True)
        return {}


def instances_on(worker: Worker, state: GpuStackState) -> tuple[Instance, ...]:
    """Every instance that books memory on this worker's GPUs (a stuck pending one included: its
    claims still count in GPUStack's books), in id order."""
    models = {model.id: model.name for model in state.models}
    found = []
    for inst in sorted(state.instances, key=lambda i: i.id):
        claims = {index: size for (wid, index), size in inst.claims().items() if wid == worker.id and size > 0}
        if claims:
            pids, ports = _recognised_by(inst, worker.id)
            found.append(Instance(inst.name or f"instance-{inst.id}", inst.model_name or models.get(inst.model_id, ""),
                                  inst.state, claims, pids, ports))
    return tuple(found)


def _recognised_by(inst: ModelInstance, worker_id: int) -> tuple[frozenset[int], frozenset[int]]:
    pids: set[int] = set()
    ports: set[int] = set()
    if inst.worker_id == worker_id:
        pids |= {inst.pid} if inst.pid else set()
        ports |= {p for p in [inst.port, *(inst.ports or [])] if p}
    for sub in inst.subordinates:
        if sub.worker_id == worker_id:
            pids |= {sub.pid} if sub.pid else set()
            ports |= {p for p in [sub.port, *(sub.ports or [])] if p}
    return frozenset(pids), frozenset(ports)
