"""vLLM's runtime overhead O as a model of the batch and the model's shape, and the rules that differ
between vLLM versions; fitted to real vLLM runs on an H200 (tests/data/vllm-h200, issue 17).

What the runs showed (vLLM 0.26.0, torch 2.11.0+cu130, NVIDIA H200, driver 580.159.04, dummy weights):

- KV = R - weights - peak activation - non-torch, to the byte, in every case that started
  (``vllm/v1/worker/gpu_worker.py::determine_available_memory``). CUDA graph memory is *not* taken out
  of R in 0.26: its estimate is applied only with VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS set; the
  graphs (0.24-1.20 GiB measured) come on top of R. vLLM 0.33 takes them out of R (docs/rulebooks.md#b-vllms-start-up-and-kv-cache).
- non-torch memory grew by 230 MiB in every dense case (232 MiB for the MoE model): NCCL-free, one GPU.
- The activation peak is that of ``profile_run``: a forward pass of max_num_batched_tokens tokens, then a
  sampler pass (``vllm/v1/worker/gpu_model_runner.py::profile_run``). It is the forward pass's width
  times the batch, plus what a first start's torch.compile adds (see PeakModel below).
- The minimum KV is ceil(max_model_len / B) blocks in 0.26 (auto-fit of Llama-3.1-8B at 6070 blocks gave
  97,120 = 6070 x 16 tokens); 0.33 holds back one block more.
- `vllm serve` on the H200 ran with 8192 batched tokens, the LLM class with 16384, both with 1024
  sequences (``vllm/engine/arg_utils.py::_get_default_max_num_seqs_and_batched_tokens``).

The coefficients below are ``fit_peak_model`` of those runs' first starts; tests/rules/test_vllm_h200_replay.py
refits them from the data and replays every case against the rulebook, with this O and with the constant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .engine import default_scheduler_limits  # noqa: F401 - the one rule, read here for O's batch
from .versions import VLLM_RULES, VllmRules, rules_for  # noqa: F401 - the rules by version live in versions.py

if TYPE_CHECKING:
    from ...model import Architecture


# --- the activation peak -------------------------------------------------------------------------------
#
# vLLM's peak activation is the torch memory profile_run allocates above what was allocated before it
# (vllm/utils/mem_utils.py::memory_profiling resets the peak first; vllm/v1/worker/gpu_model_runner.py::
# profile_run, 0.26.0): one forward pass of max_num_batched_tokens tokens (its hidden states kept), then a
# sampler pass over min(tokens, max_num_seqs) rows. What the H200 runs showed (run-4/run-5 also swept the
# forward pass inside the started worker, payload/run_probe.py::sweep):
#  - the forward pass peaks at tokens x dtype x 3 x (MLP width + hidden), to 1 byte a token, in all seven
#    shapes (0.5B-32B GQA, Llama-2-7B and Phi-3.5 MHA, DeepSeek-V2-Lite, whose dense first layer is its
#    widest; at 8192 tokens its router's logits, experts x dtype a token, came on top): gate_up (2W),
#    its activation (W), the residual, the normed input and the output (3H) alive together;
#  - vLLM's peak is that pass plus the start-up's own extra: 92-335 MiB on a first start (92 MiB in 8 of
#    the 15 dense first starts; 266 MiB for Llama-3.1-8B at 8192 tokens, 335 MiB for Qwen2.5-1.5B at
#    2048), 479-513 MiB for the MoE model, 32-218 MiB when torch.compile loads its cache. It is
#    reproducible to the byte, does not follow max_num_seqs, and is gone when profile_run runs again after
#    start-up (run-6); what sets it is not in the source we read. We take the middle of the first-start
#    range, so every first start measured is within +-122 MiB (MoE +-17 MiB): the start that can fail
#    is the first one.
#  - the sampler pass never led at start-up: a cache-hit start of Qwen2.5-1.5B at 8192 tokens and 256
#    rows peaked at the forward pass + 33 MiB, though after start-up the same sampler pass takes 16 bytes
#    per row x vocabulary entry (622 MB there; profile_run re-run after start-up is led by it). So it is
#    not a term; with a small batch, many sequences and a large vocabulary it could lead at start-up too,
#    which no run here showed.


def mlp_width(arch: Architecture) -> int | None:
    """The widest MLP a token passes through: the dense one (where the model has dense layers), the
    routed experts of a token together, or the shared ones (vLLM runs them apart). None: not in config.json."""
    moe = arch.moe
    widths = [arch.intermediate_size or 0] if moe is None or moe.dense_layers > 0 else []
    if moe is not None:
        widths += [moe.experts_per_token * moe.expert_intermediate_size, moe.shared_intermediate_size]
    width = max(widths, default=0)
    return width or None


def forward_peak_bytes(arch: Architecture, tokens: int) -> int | None:
    """profile_run's forward pass of `tokens` tokens, above what was allocated before it."""
    width = mlp_width(arch)
    if width is None or arch.hidden_size is None:
        return None
    return tokens * arch.dtype_bytes * 3 * (width + arch.hidden_size)


@dataclass(frozen=True, slots=True)
class PeakModel:
    first_start_extra: float  # on top of the forward pass, torch.compile compiling afresh (dense models)
    moe_first_start_extra: float  # the same for MoE models (fused-MoE kernels' buffers)

    def predict(self, arch: Architecture, max_num_batched_tokens: int) -> int | None:
        """The peak activation of a first start; None where config.json lacks the MLP's shape."""
        forward = forward_peak_bytes(arch, max_num_batched_tokens)
        if forward is None:
            return None
        return round(forward + (self.moe_first_start_extra if arch.moe else self.first_start_extra))


def fit_peak_model(points: Iterable[tuple[Architecture, int, int]]) -> PeakModel:
    """Fit to first-start (arch, max_num_batched_tokens, measured peak) points: each extra is the middle
    of the range of the measured peaks over the forward pass (dense and MoE apart), which minimises the
    largest miss."""
    def middle(residuals: list[int]) -> float:
        return (min(residuals) + max(residuals)) / 2

    dense = [p - forward_peak_bytes(a, n) for a, n, p in points if a.moe is None]
    moe = [p - forward_peak_bytes(a, n) for a, n, p in points if a.moe is not None]
    if not dense:
        raise ValueError("need a dense first start")
    return PeakModel(first_start_extra=middle(dense), moe_first_start_extra=middle(moe) if moe else middle(dense))


# The fit of tests/data/vllm-h200/run-1..6.json's first starts (tests/rules/test_vllm_h200_replay.py refits it
# from the data and checks these numbers).
H200_VLLM_026_PEAK = PeakModel(first_start_extra=223_883_264, moe_first_start_extra=520_106_496)
# non-torch memory growth during vLLM's profiling, one GPU, no NCCL: 230 MiB in every case on the H200.
H200_VLLM_026_NON_TORCH = 241_172_480


# --- CUDA graph memory (outside R in 0.26, inside O in 0.33) --------------------------------------------

# CUDA graph pool measured per case (vLLM's "Graph capturing finished ..., took X GiB"): 0.24 GiB
# (Qwen2.5-0.5B, 24 layers, 128 sequences) to 1.20 GiB (DeepSeek-V2-Lite, 27 layers). Neither layers nor
# MLP width fit them (a linear fit misses by up to 0.6 GiB), so this is an upper bound, not a fit: the
# largest pool per layer measured, 0.99 GiB / 32 layers for dense models (Llama-3.1-8B), 1.20 GiB / 27
# for MoE (DeepSeek-V2-Lite), times the layers. It matters only where graphs count in O (0.33), which no
# run here could measure; a running instance calibrates it (vram_exporter/sources/vllm_instance.py).
GRAPH_PER_LAYER_BOUND = 0.99 * 2**30 / 32
GRAPH_PER_LAYER_BOUND_MOE = 1.20 * 2**30 / 27


@dataclass(frozen=True, slots=True)
class RuntimeOverhead:
    peak_activation: int
    non_torch: int
    cuda_graphs: int  # upper bound; counted in O only where the version takes graphs out of R

    def total(self, rules: VllmRules, graph_sets: int = 1) -> int:
        """O; ``graph_sets``: how many times each graph is captured (LoRA: lora.py ``graph_sets``)."""
        graphs = self.cuda_graphs * graph_sets if rules.graphs_in_budget else 0
        return self.peak_activation + self.non_torch + graphs


def runtime_overhead(arch: Architecture, max_num_batched_tokens: int,
                     peak: PeakModel = H200_VLLM_026_PEAK, non_torch: int = H200_VLLM_026_NON_TORCH
                     ) -> RuntimeOverhead | None:
    """O's parts for one model and batch, from the fitted model; None where config.json lacks the MLP."""
    activation = peak.predict(arch, max_num_batched_tokens)
    if activation is None:
        return None
    per_layer = GRAPH_PER_LAYER_BOUND_MOE if arch.moe else GRAPH_PER_LAYER_BOUND
    return RuntimeOverhead(peak_activation=activation, non_torch=non_torch, cuda_graphs=round(per_layer * arch.layers))


def fitted_runtime_overhead(arch: Architecture, *, version: str, device_total_bytes: int | None,
                            device_name: str = "", max_num_batched_tokens: int | None = None,
                            graph_sets: int = 1, extra_activation: int = 0) -> int | None:
    """O the rulebook uses when neither the model nor the cluster sets one: the fitted model at the batch
    `vllm serve` runs (its flags, else its defaults for the GPU), for a first start, the CUDA graphs counted
    where the version takes them out of R. Calibrated on an H200 with vLLM 0.26; elsewhere a starting
    point, checked against a running instance (vram_exporter/sources/vllm_instance.py). None: config.json lacks
    the MLP's shape. ``graph_sets`` and ``extra_activation``: what LoRA adds (rules/backends/vllm/lora.py)."""
    rules = rules_for(version)
    tokens = max_num_batched_tokens or rules.batch_defaults(device_total_bytes, device_name)[0]
    parts = runtime_overhead(arch, tokens)
    return None if parts is None else parts.total(rules, graph_sets) + extra_activation


def fitted_transient_peak(arch: Architecture, *, version: str, device_total_bytes: int | None,
                          device_name: str = "", max_num_batched_tokens: int | None = None,
                          extra_activation: int = 0) -> int | None:
    """The activation peak part of the fitted O (``fitted_runtime_overhead``'s batch): what vLLM 0.34's
    extensible KV cache measures as its transient peak (vllm/v1/worker/extensible_kv_cache.py,
    ExtensibleKVCache.record_transient_peak: allocated peak - current over profiling and warm-up). None:
    config.json lacks the MLP's shape."""
    tokens = max_num_batched_tokens or rules_for(version).batch_defaults(device_total_bytes, device_name)[0]
    parts = runtime_overhead(arch, tokens)
    return None if parts is None else parts.peak_activation + extra_activation
