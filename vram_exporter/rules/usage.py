"""Booked against used: each GPU process attributed to the instance it belongs to, and four verdicts.

How GPUStack 2.3.0 runs an engine, and so what is true of an instance's GPU processes
(gpustack/worker/serve_manager.py ``_start_model_instance``, worker/backends/vllm.py ``_create_workload``,
gpustack_runtime/deployer/docker.py):

- The worker starts a provisioning subprocess (``multiprocessing.Process``, titled
  ``gpustack_model_instance_<id>``) and records *its* pid as the instance's ``pid`` (a subordinate
  worker: ``subordinate_workers[].pid``). That process asks the runtime for a container workload named
  after the instance (label ``runtime.gpustack.ai/workload=<name>``; a follower ``<name>-f<i>``) and
  exits once it is created. The pid is in the worker's PID namespace, and the engine is not its child.
- The engine runs in that container, in a PID namespace of its own but on the host's network
  (``WorkloadPlan(host_network=True)``): it listens on the instance's ``port`` (and ``ports``) on the
  host. vLLM's EngineCore and tensor-parallel workers, SGLang's schedulers are children of the process
  that listens, or at least processes of the same container.

So a GPU process belongs to an instance when it or one of its ancestors is the instance's ``pid`` (an
engine run as a plain process under the worker), or listens on one of the instance's ports, or when it
shares a container with a process that does. Anything else belongs to nobody. The nearest ancestor
decides, so an engine inside another engine's process tree is still told apart.

Without GPUStack, a manifest's running model says how to know its processes (``processes:`` with
``ports`` and/or a ``cmdline`` substring, sources/manifest_usage.py): pids are not stable across restarts,
a port and the command line are. A command-line match counts like a port, at the same ancestor; where
several models' substrings match one process, the longest (the most specific) wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

MAX_ANCESTRY = 64  # a ppid chain is short; the bound only guards against a loop in a torn /proc read
# GPUStack's instance states in which no engine process is expected yet (schemas/models.py
# ModelInstanceStateEnum): booked at scheduling, the weights downloading, the container being provisioned.
BEFORE_ENGINE = frozenset({"scheduled", "analyzing", "downloading", "initializing"})


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as /proc shows it: its parent, its container (None: not in one), its listening ports."""

    pid: int
    ppid: int
    container: str | None = None
    ports: frozenset[int] = frozenset()
    cmdline: str = ""  # its arguments joined by spaces (sources/processes.py bounds the length)


@dataclass(frozen=True, slots=True)
class Instance:
    """A running instance with claims on this node's GPUs, and how to recognise its processes."""

    name: str  # GPUStack's instance name (unique in its cluster), or a manifest model's name
    model: str
    state: str
    claims: Mapping[int, int]  # GPU index -> bytes booked there
    pids: frozenset[int] = frozenset()
    ports: frozenset[int] = frozenset()
    cmdline: str | None = None  # a substring of its engine's command line (a manifest's ``processes.cmdline``)
    # False: nothing says how to know its processes (a manifest's running model without ``processes``): its
    # claim still counts on the GPU, but finding no process of it there is no finding.
    watched: bool = True


@dataclass(frozen=True, slots=True)
class GpuProcess:
    gpu: int
    pid: int
    used: int | None  # None: NVML could not say


@dataclass(frozen=True, slots=True)
class InstanceOnGpu:
    """One instance on one GPU: what GPUStack booked for it and what its processes hold."""

    instance: str
    model: str
    gpu: int
    booked: int  # 0: it holds memory here without a claim
    used: int
    processes: int  # how many of its processes are on this GPU
    overrun: bool = False  # uses more than it booked while another instance is or would be placed here
    before_engine: bool = False  # its state says no engine runs yet (BEFORE_ENGINE)
    watched: bool = True  # Instance.watched

    @property
    def idle_claim(self) -> bool:
        """Booked here, no process of it on this GPU, though its state says the engine runs (or that it is
        stuck, or gone wrong): a start-up still loading, or a claim left behind (#5513); the alert waits."""
        return self.booked > 0 and self.processes == 0 and not self.before_engine and self.watched


@dataclass(frozen=True, slots=True)
class GpuUsage:
    gpu: int
    total: int
    booked: int  # the sum of every claim on this GPU
    unattributed: int  # memory of processes that belong to no instance
    instances: tuple[InstanceOnGpu, ...] = ()

    @property
    def overbooked(self) -> bool:
        """More booked than the GPU has (#4703: an embedding and a reranker at 0.5 each on one card)."""
        return self.booked > self.total

    @property
    def room(self) -> int:
        """What GPUStack believes is still free here: where it would place the next instance."""
        return self.total - self.booked


@dataclass(frozen=True, slots=True)
class NodeUsage:
    gpus: tuple[GpuUsage, ...] = ()
    owners: Mapping[int, str] = field(default_factory=dict)  # pid -> instance name, for the attributed


def attribute(pids: Iterable[int], tree: Mapping[int, ProcessInfo], instances: Sequence[Instance]) -> dict[int, str]:
    """pid -> the name of the instance it belongs to; a pid of nobody is absent. ``tree`` holds the GPU
    processes, their ancestors and their container-mates (sources/processes.py)."""
    marks = _Marks.of(instances)
    containers: dict[str, str] = {}
    for pid in sorted(tree):  # the listener may be a container-mate of the GPU processes, not their ancestor
        owner = _nearest_owner(pid, tree, marks)
        if owner is not None and tree[pid].container is not None:
            containers.setdefault(tree[pid].container, owner)
    owners: dict[int, str] = {}
    for pid in pids:
        info = tree.get(pid)
        owner = _nearest_owner(pid, tree, marks) or (containers.get(info.container) if info else None)
        if owner is not None:
            owners[pid] = owner
    return owners


@dataclass(frozen=True, slots=True)
class _Marks:
    """What tells the instances' processes apart: pid -> instance, port -> instance, and the command-line
    substrings, longest first (the most specific wins; equal lengths keep the instances' order)."""

    by_pid: Mapping[int, str]
    by_port: Mapping[int, str]
    by_cmdline: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, instances: Sequence[Instance]) -> _Marks:
        cmdlines = [(inst.cmdline, inst.name) for inst in instances if inst.cmdline]
        return cls({pid: inst.name for inst in instances for pid in inst.pids},
                   {port: inst.name for inst in instances for port in inst.ports},
                   tuple(sorted(cmdlines, key=lambda pair: -len(pair[0]))))

    def owner_of(self, info: ProcessInfo) -> str | None:
        """The instance this one process itself is marked as (its pid aside), or None."""
        for port in sorted(info.ports):
            if port in self.by_port:
                return self.by_port[port]
        return next((name for text, name in self.by_cmdline if text in info.cmdline), None)


def _nearest_owner(pid: int, tree: Mapping[int, ProcessInfo], marks: _Marks) -> str | None:
    if pid in marks.by_pid:
        return marks.by_pid[pid]  # the pid itself, even where /proc cannot show it
    for ancestor in _ancestry(pid, tree):
        if ancestor in marks.by_pid:
            return marks.by_pid[ancestor]
        if (owner := marks.owner_of(tree[ancestor])) is not None:
            return owner
    return None


def _ancestry(pid: int, tree: Mapping[int, ProcessInfo]) -> list[int]:
    """pid, its parent, ... as far as /proc shows them (pid 0 and unknown pids end the chain)."""
    chain: list[int] = []
    while pid in tree and pid not in chain and len(chain) < MAX_ANCESTRY:
        chain.append(pid)
        pid = tree[pid].ppid
    return chain


def node_usage(totals: Mapping[int, int], processes: Sequence[GpuProcess], tree: Mapping[int, ProcessInfo],
               instances: Sequence[Instance]) -> NodeUsage:
    """Every GPU of this node: booked and used per instance, used by nobody, and the verdicts."""
    owners = attribute(sorted({p.pid for p in processes}), tree, instances)
    gpus = tuple(_gpu_usage(index, total, [p for p in processes if p.gpu == index], owners, instances)
                 for index, total in sorted(totals.items()))
    return NodeUsage(gpus, owners)


def _gpu_usage(index: int, total: int, processes: Sequence[GpuProcess], owners: Mapping[int, str],
               instances: Sequence[Instance]) -> GpuUsage:
    booked = {inst.name: inst.claims[index] for inst in instances if inst.claims.get(index)}
    used: dict[str, int] = {}
    count: dict[str, int] = {}
    unattributed = 0
    for proc in processes:
        owner = owners.get(proc.pid)
        if owner is None:
            unattributed += proc.used or 0
            continue
        used[owner] = used.get(owner, 0) + (proc.used or 0)
        count[owner] = count.get(owner, 0) + 1
    total_booked = sum(booked.values())
    by_name = {inst.name: inst for inst in instances}
    rows = []
    for name in sorted(booked.keys() | used.keys()):
        inst = by_name[name]
        row = InstanceOnGpu(name, inst.model, index, booked.get(name, 0), used.get(name, 0), count.get(name, 0),
                            before_engine=inst.state in BEFORE_ENGINE, watched=inst.watched)
        rows.append(_judged(row, others_booked=total_booked - row.booked, room=total - total_booked))
    return GpuUsage(index, total, total_booked, unattributed, tuple(rows))


def _judged(row: InstanceOnGpu, *, others_booked: int, room: int) -> InstanceOnGpu:
    """Overrun: it holds more than GPUStack booked for it, and that matters because GPUStack places by its
    bookings, not by what is used: another instance already booked here (#3034: placed on a GPU another
    one filled, OOM), or room left in GPUStack's books, where it would place the next one (vLLM 0.34 takes
    about all free memory at start while GPUStack books 0.9 x total)."""
    over = row.used > row.booked and (others_booked > 0 or room > 0)
    return replace(row, overrun=over)
