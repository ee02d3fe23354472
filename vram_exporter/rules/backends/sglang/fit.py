"""SGLang's fit of one model on one node: GPUStack's SGLang selector (selector.py) and SGLang's own KV
pool (engine.py), through the fit every non-vLLM backend shares (rules/backends/shared_fit.py).

Checks (``vram_model_headroom_bytes{check}``, negative fails):
- ``gpustack_estimate`` = T x f - E and ``gpustack_allocatable`` = A - T x f (f GPUStack's
  --mem-fraction-static: rules/gpustack.py ``gpu_tests``, the same tests the selector places by);
- ``sglang_kv_pool``: the KV pool SGLang would size here, in bytes (<= 0: "Not enough memory");
- ``sglang_context``: that pool minus one request at the full context length (SGLang then starts
  but caps requests at the pool: the explain page says so).
The version the model runs (``model.engine_version``, else versions.REFERENCE) picks the pool's rule and
SGLang's own default fraction (versions.py). Under GPUStack 2.3.0 SGLang takes the fraction GPUStack booked:
its worker passes ``--mem-fraction-static`` = the claim's vram_utilization unless the user's parameters name
``mem-fraction-static`` (gpustack/worker/backends/sglang.py, find_parameter), the user's parameters coming
after it; SGLang's own default decides only under GPUStack 0.6's scheduler (its worker not read).
The free memory SGLang sizes its pool from is taken as the GPU's CUDA total minus what the models
placed before it take and the process's own context (``vllm_context_overhead``, the same CUDA
context): memory held by other processes is not counted here (node.py ``with_free`` applies it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ....snapshot import GpuReading
from ....units import GIB, gib
from ... import gpustack
from ...model import Cluster, ModelSpec
from ...verdicts import GpuFit, ModelFit
from ..shared_fit import SharedFit, booking_on
from ..vllm.engine import cuda_total
from . import engine as sglang, selector, versions

REQ_FLOOR = sglang.REQ_MARGIN + 1  # max_req_input_len = pool - 1 - 5 must be > 0


class Engine:
    """What SGLang's pool needs of a model, whichever GPU it lands on."""

    CHECKS = ("sglang_kv_pool", "sglang_context")

    def __init__(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]):
        self.params = p = model.read(sglang.sglang_params)
        arch = model.arch
        self.version = model.engine_version.version if model.engine_version else versions.REFERENCE
        self.rule = versions.pool_rule(self.version)
        self.fraction = self._fraction(model, cluster, gpus)
        self.multimodal = arch.has_vision
        self.transport = sglang.feature_transport(p, model.env)
        self.env = model.env
        self.mm_reserved = (round(versions.multimodal_reservation_gib(
            multimodal=self.multimodal, feature_transport=self.transport, env=self.env) * GIB)
            if self.rule.reserves_multimodal else 0)
        self.cell = sglang.cell_size(arch, tp=p.tp, pp=p.pp, kv_bytes=sglang.kv_bytes_per_element(arch, p.kv_cache_dtype))
        given = model.max_model_len if model.max_model_len is not None else p.context_length
        self.context_len = sglang.context_length(arch.hf_context_len, given, model.env)
        self.required = self.context_len * self.cell
        self.weights = math.ceil(model.weights_bytes / (p.tp * p.pp))
        self.overhead = 0 if model.runtime_overhead is None else model.runtime_overhead
        self.context_overhead = cluster.vllm_context_overhead

    def _fraction(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> float:
        if self.params.mem_fraction_static is not None:
            return self.params.mem_fraction_static
        if cluster.scheduler == "gpustack":  # GPUStack passes what it books
            book = booking_on(selector, model, gpustack.views_of(gpus, {}, cluster.system_reserved_vram))
            if book.fraction:
                return book.fraction
        smallest = min((g.memory.total for g in gpus), default=0)  # SGLang sizes its own default on this node
        return sglang.default_mem_fraction_static(smallest, self.params, model.arch, self.version)

    def free_at_start(self, gpu: GpuReading, committed: int) -> int:
        return cuda_total(gpu.memory.total, gpu.memory.reserved) - committed - self.context_overhead

    def pool_tokens(self, gpu: GpuReading, committed: int) -> int:
        return sglang.pool_tokens(free_at_start=self.free_at_start(gpu, committed), mem_fraction_static=self.fraction,
                                  weights=self.weights, pre_pool_overhead=self.overhead, cell=self.cell,
                                  page_size=self.params.page_size, max_total_tokens=self.params.max_total_tokens,
                                  rule=self.rule, multimodal=self.multimodal, transport=self.transport, env=self.env)

    def _gib(self, f: GpuFit) -> tuple[float, float]:
        """(free after the weights, free before them) in GiB on a GPU of the fit, as SGLang measures them."""
        free = f.cuda_total - f.committed - self.context_overhead
        return (free - self.weights - self.overhead) / GIB, free / GIB

    def named_fraction(self, f: GpuFit) -> float | None:
        """The X of "Raise --mem-fraction-static above X" where this version says it there (an empty budget)."""
        available, pre = self._gib(f)
        budget = versions.rest_gib(self.rule, available_gib=available, pre_gib=pre,
                                   mem_fraction_static=self.fraction, multimodal=self.multimodal,
                                   feature_transport=self.transport, env=self.env)
        if not self.rule.names_the_fraction or budget > 0:
            return None
        return math.ceil(versions.minimum_fraction(available_gib=available, pre_gib=pre) * 1000) / 1000

    def empty_pool_of(self, f: GpuFit) -> str:
        """SGLang's words for an empty pool there: from 0.5.18 an empty budget names the fraction to pass."""
        if self.named_fraction(f) is None:
            return sglang.not_enough_memory(self.fraction)
        available, pre = self._gib(f)
        return versions.no_kv_memory(self.fraction, available_gib=available, pre_gib=pre)


def _gpu_fit(model, gpu, view, context, book, estimate, n, engine: Engine, running=False) -> GpuFit:
    committed = context.committed.get(gpu.index, 0)
    tests = selector.single_gpu_tests(view, estimate, book.fraction or 0.0, n)
    headroom: dict[str, float] = {"gpustack_estimate": tests.estimate_headroom,
                                  "gpustack_allocatable": tests.allocatable_headroom}
    tokens = engine.pool_tokens(gpu, committed)
    headroom["sglang_kv_pool"] = tokens * engine.cell if tokens > REQ_FLOOR else -engine.cell * (REQ_FLOOR - tokens)
    headroom["sglang_context"] = (tokens - engine.context_len) * engine.cell
    free_at_start = engine.free_at_start(gpu, committed)
    budget = int(free_at_start * engine.fraction)
    # SGLang's pool comes from the free memory at start: the free memory that gives one full-context request.
    need = (None if running else committed + engine.context_overhead
            + math.ceil((engine.weights + engine.overhead + engine.mm_reserved + engine.required) / engine.fraction)
            if engine.fraction > 0 else None)
    longest = max(min(engine.context_len, tokens), 0)
    # The window of --mem-fraction-static: GPUStack's two tests, and SGLang's pool holding the context.
    lows = [estimate / (n * view.total) if view.total else 1.0,
            (engine.weights + engine.overhead + engine.mm_reserved + engine.required) / free_at_start
            if free_at_start > 0 else 1.0]
    lo = max(*lows, 0.0)
    hi = min(view.allocatable / view.total if view.total else 0.0, 1.0)
    return GpuFit(gpu.index, gpu.uuid, budget, headroom, math.ceil(lo * 10_000) / 10_000,
                  math.floor(hi * 10_000) / 10_000, longest, committed=committed, free_need=need,
                  kv_bytes=max(tokens, 0) * engine.cell, weights=engine.weights, free_check="sglang_free_memory",
                  cuda_total=cuda_total(gpu.memory.total, gpu.memory.reserved),
                  gmu_max_static=math.floor(hi * 10_000) / 10_000)


def _say(fit: ModelFit, engine: Engine, book: gpustack.Booking) -> list[str]:
    said = []
    if not book.fraction_given and abs(engine.fraction - (book.fraction or 0)) > 1e-9:
        said.append(f"GPUStack books --mem-fraction-static={book.fraction} (its port of SGLang's default for "
                    f"the smallest card) while SGLang {engine.version} will take {engine.fraction:.4g}: write "
                    f"--mem-fraction-static explicitly so both read the same")
    for f in fit.per_gpu:
        if f.index not in fit.gpus:
            continue
        if f.headroom["sglang_kv_pool"] < 0:
            said.append(f"GPU {f.index}: SGLang fails: " + engine.empty_pool_of(f))
        elif f.headroom["sglang_context"] < 0:
            said.append(f"GPU {f.index}: SGLang starts, but its KV pool holds {f.kv_bytes // engine.cell} tokens "
                        f"({gib(f.kv_bytes)}): requests are capped below the context length "
                        f"{engine.context_len} ({gib(engine.required)} needed)")
    return said


def free_reasons(fit: ModelFit, f: GpuFit) -> list[str]:
    """SGLang's pool on this GPU's free memory, where it falls short of one full-context request."""
    if f.headroom.get("sglang_free_memory", 0) >= 0:
        return []
    return [f"GPU {f.index}: SGLang sizes its KV pool from the free memory at start: with the free "
            f"memory of now it falls {gib(-f.headroom['sglang_free_memory'])} short of one request of "
            f"{fit.max_model_len} tokens (other processes hold it), and SGLang would cap requests"]


FIT = SharedFit(selector, Engine, _gpu_fit, _say, free_reasons)
