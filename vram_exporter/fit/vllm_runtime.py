"""vLLM's runtime overhead O as a model of the batch and the model's shape, and the rules that differ
between vLLM versions; fitted to real vLLM runs on an H200 (tests/data/vllm-h200, issue 17).

What the runs showed (vLLM 0.26.0, torch 2.11.0+cu130, NVIDIA H200, driver 580.159.04, dummy weights):

- KV = R - weights - peak activation - non-torch, to the byte, in every case that started
  (``vllm/v1/worker/gpu_worker.py::determine_available_memory``). CUDA graph memory is *not* taken out
  of R in 0.26: its estimate is applied only with VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS set; the
  graphs (0.39-1.20 GiB measured) come on top of R. vLLM 0.33 takes them out of R (DESIGN.md section 3).
- non-torch memory grew by 230 MiB in every dense case (232 MiB for the MoE model): NCCL-free, one GPU.
- The activation peak is that of ``profile_run``: one forward pass of max_num_batched_tokens tokens and a
  sampler pass of max_num_seqs rows (``vllm/v1/worker/gpu_model_runner.py::profile_run``). It grows with
  the batch and the MLP's width; when torch.compile compiles afresh (no compile cache, a first start) it is
  63-245 MiB higher than when it loads its cache. We predict the first start: it is the one that can fail.
- The minimum KV is ceil(max_model_len / B) blocks in 0.26 (auto-fit of Llama-3.1-8B at 6070 blocks gave
  97,120 = 6070 x 16 tokens); 0.33 holds back one block more.
- `vllm serve` on the H200 ran with 8192 batched tokens, the LLM class with 16384, both with 1024
  sequences (``vllm/engine/arg_utils.py::_get_default_max_num_seqs_and_batched_tokens``).

The coefficients below are the least-squares fit of ``fit_peak_model`` to the dense cases of those runs;
tests/test_vllm_h200_replay.py refits them from the data and replays every case against the rulebook.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MIB = 2**20


@dataclass(frozen=True, slots=True)
class VllmRules:
    """What differs between the vLLM versions the rulebook knows."""

    version: str
    held_back_blocks: int  # blocks beyond ceil(max_model_len / B) the minimum KV needs
    graphs_in_budget: bool  # CUDA graph memory is taken out of R (part of O)


VLLM_RULES = {
    # vllm/v1/kv_cache_interface.py AttentionSpec.max_memory_usage_bytes = cdiv(len, B) * page (0.26.0);
    # gpu_worker.py applies the CUDA graph estimate only with VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS.
    "0.26": VllmRules("0.26", held_back_blocks=0, graphs_in_budget=False),
    # DESIGN.md section 3 (vLLM 0.33.0: kv_cache_planning.py holds back one block; O includes graphs).
    "0.33": VllmRules("0.33", held_back_blocks=1, graphs_in_budget=True),
}


def rules_for(version: str) -> VllmRules:
    """The rules of a vLLM version "X.Y[.Z]": the newest known rules not newer than it."""
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    known = sorted(VLLM_RULES, key=lambda v: tuple(int(p) for p in v.split(".")))
    chosen = known[0]
    for v in known:
        if tuple(int(p) for p in v.split(".")) <= major_minor:
            chosen = v
    return VLLM_RULES[chosen]


def default_scheduler_limits(device_total_bytes: int | None, device_name: str = "",
                             usage: str = "serve") -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM uses when neither flag is given.

    vllm/engine/arg_utils.py::_get_default_max_num_seqs_and_batched_tokens (0.26.0): GPUs of 70 GiB or
    more that are not A100s get {LLM class: 16384, serve: 8192} tokens and 1024 sequences; others
    {8192, 2048} tokens and 256 sequences. Measured on the H200: serve 8192, LLM class 16384 and 1024.
    """
    large = device_total_bytes is not None and device_total_bytes >= 70 * 2**30 and "a100" not in device_name.lower()
    if large:
        return (16384 if usage == "llm" else 8192), 1024
    return (8192 if usage == "llm" else 2048), 256


# --- the activation peak -------------------------------------------------------------------------------

def mlp_width(config: Mapping[str, Any]) -> int:
    """The MLP width a token passes through: intermediate_size, or for MoE models the experts a token
    is routed to plus the shared ones, times moe_intermediate_size (whichever is wider)."""
    text = config.get("text_config") or config
    dense = int(text.get("intermediate_size") or 0)
    moe = text.get("moe_intermediate_size")
    if moe and (text.get("num_experts_per_tok") or text.get("n_routed_experts")):
        routed = int(text.get("num_experts_per_tok") or 1) + int(text.get("n_shared_experts") or 0)
        return max(dense, routed * int(moe))
    return dense


def is_moe(config: Mapping[str, Any]) -> bool:
    text = config.get("text_config") or config
    return bool(text.get("moe_intermediate_size") and (text.get("n_routed_experts") or text.get("num_local_experts")
                                                       or text.get("num_experts")))


def peak_feature(config: Mapping[str, Any], max_num_batched_tokens: int) -> int:
    """Bytes of one batch through the MLP: N x (MLP width + hidden) x 2 (bf16 activations)."""
    text = config.get("text_config") or config
    return max_num_batched_tokens * (mlp_width(config) + int(text["hidden_size"])) * 2


@dataclass(frozen=True, slots=True)
class PeakModel:
    base: float  # bytes independent of the batch (sampler, workspaces)
    per_feature_byte: float  # bytes of peak per byte of peak_feature
    moe_extra: float = 0.0  # added for MoE models (routing, fused-MoE buffers)

    def predict(self, config: Mapping[str, Any], max_num_batched_tokens: int) -> int:
        extra = self.moe_extra if is_moe(config) else 0.0
        return round(self.base + self.per_feature_byte * peak_feature(config, max_num_batched_tokens) + extra)


def fit_peak_model(points: Iterable[tuple[Mapping[str, Any], int, int]]) -> PeakModel:
    """Least squares of peak = base + slope x feature over dense (config, batch, peak) points; the MoE
    extra is the mean residual of the MoE points (the runs hold one)."""
    pts = list(points)
    dense = [(peak_feature(c, n), p) for c, n, p in pts if not is_moe(c)]
    if len(dense) < 2:
        raise ValueError("need two dense points at least")
    mx = sum(x for x, _ in dense) / len(dense)
    my = sum(y for _, y in dense) / len(dense)
    sxx = sum((x - mx) ** 2 for x, _ in dense)
    slope = sum((x - mx) * (y - my) for x, y in dense) / sxx
    base = my - slope * mx
    moe = [p - (base + slope * peak_feature(c, n)) for c, n, p in pts if is_moe(c)]
    return PeakModel(base=base, per_feature_byte=slope, moe_extra=sum(moe) / len(moe) if moe else 0.0)


# Fitted to the first-start (fresh torch.compile) cases of tests/data/vllm-h200/run-*.json (Qwen2.5-0.5B,
# Qwen2.5-1.5B at 2048/8192/16384 tokens, Qwen2.5-32B, Llama-3.1-8B dense; DeepSeek-V2-Lite for the MoE
# extra). Dense residuals within +-113 MiB (Llama-3.1-8B counted twice: bf16 and fp8-KV runs peaked alike).
# max_num_seqs is not a term: the runs varied it only together with the batch (2048/256), and the
# sampler pass it sizes (max_num_seqs x vocab) stays below the forward pass in every case measured. tests/test_vllm_h200_replay.py checks these numbers against a refit.
H200_VLLM_026_PEAK = PeakModel(base=263_857_829, per_feature_byte=2.7194836, moe_extra=318_483_040)
# non-torch memory growth during vLLM's profiling, one GPU, no NCCL: 230 MiB (dense) on the H200 runs.
H200_VLLM_026_NON_TORCH = 241_172_480


# --- CUDA graph memory (outside R in 0.26, inside O in 0.33) --------------------------------------------

def graph_feature(config: Mapping[str, Any]) -> tuple[float, float]:
    """(layers, largest captured decode batch x MLP width x 2 bytes) -- the two inputs of the graph model."""
    text = config.get("text_config") or config
    return float(text["num_hidden_layers"]), 512.0 * (mlp_width(config) + int(text["hidden_size"])) * 2


@dataclass(frozen=True, slots=True)
class RuntimeOverhead:
    peak_activation: int
    non_torch: int
    cuda_graphs: int  # estimate; counted in O only where the version takes graphs out of R

    def total(self, rules: VllmRules) -> int:
        return self.peak_activation + self.non_torch + (self.cuda_graphs if rules.graphs_in_budget else 0)


# CUDA graph pool measured per case (vLLM's "Graph capturing finished ..., took X GiB"): 0.39 GiB
# (Qwen2.5-0.5B, 24 layers) to 1.20 GiB (DeepSeek-V2-Lite, 27 layers). Neither layers nor MLP width fit
# them (a linear fit misses by up to 0.6 GiB), so this is an upper bound, not a fit: the largest pool per
# layer measured, 0.98 GiB / 32 layers for dense models (Llama-3.1-8B, Mistral-7B), 1.20 GiB / 27 for MoE
# (DeepSeek-V2-Lite), times the layers. It matters only where graphs count in O (0.33), which no run
# here could measure; a running instance calibrates it (vram_exporter/vllm_instance.py).
GRAPH_PER_LAYER_BOUND = 0.98 * 2**30 / 32
GRAPH_PER_LAYER_BOUND_MOE = 1.20 * 2**30 / 27


def runtime_overhead(config: Mapping[str, Any], max_num_batched_tokens: int,
                     peak: PeakModel = H200_VLLM_026_PEAK, non_torch: int = H200_VLLM_026_NON_TORCH) -> RuntimeOverhead:
    """O's parts for one model and batch, from the fitted model."""
    layers, _ = graph_feature(config)
    return RuntimeOverhead(
        peak_activation=peak.predict(config, max_num_batched_tokens),
        non_torch=non_torch,
        cuda_graphs=round((GRAPH_PER_LAYER_BOUND_MOE if is_moe(config) else GRAPH_PER_LAYER_BOUND) * layers),
    )


def suggested_runtime_overhead(config: Mapping[str, Any], *, device_total_bytes: int | None, device_name: str = "",
                               max_num_batched_tokens: int | None = None, version: str = "0.33") -> int:
    """O for the manifest's per-model ``runtime_overhead``: the fitted model at the batch `vllm serve` will
    use (the flag, else its default for the GPU), for a first start; graphs counted where the version
    takes them out of R. Calibrated on an H200 with vLLM 0.26; on other GPUs and versions a starting
    point, to be checked against a running instance (vram_exporter/vllm_instance.py)."""
    batch = max_num_batched_tokens or default_scheduler_limits(device_total_bytes, device_name, "serve")[0]
    return runtime_overhead(config, batch).total(rules_for(version))
