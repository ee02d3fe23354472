"""The metric catalogue: every family this exporter serves, its name, type, help and label names,
written once. Every builder of a family (the collector, the vLLM-instance comparison, the web
config's reload status) takes them from here; docs/design.md#metric-catalogue lists the same names
(tests/present/test_catalogue.py holds the three together)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .exposition import Family

GPU = ("gpu", "uuid")
MODEL = ("model",)
MODEL_GPU = ("model", "gpu", "uuid")
INSTANCE = ("model", "vllm_instance")  # not "instance": Prometheus sets that to the exporter
# Booked against used: one series per (GPUStack instance, GPU) it is booked on or holds memory on; never a pid.
MODEL_INSTANCE_GPU = ("model_instance", "model", "gpu", "uuid")
NONE: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Spec:
    name: str  # the sample name; for type "info" it ends in _info
    type: str  # "gauge" or "info"
    label_names: tuple[str, ...]
    help: str

    def family(self) -> Family:
        """A new, empty family of this kind."""
        return Family(self.name, self.help, self.type, self.label_names)


def _spec(name: str, kind: str, label_names: tuple[str, ...], help_text: str) -> Spec:
    return Spec(name, kind, label_names, help_text)


CATALOGUE: Mapping[str, Spec] = {spec.name: spec for spec in (
    _spec("vram_gpu_info", "info", (*GPU, "name", "pci_bus_id", "driver_version"),
          "GPU identity as NVML reports it; value is always 1."),
    _spec("vram_gpu_up", "gauge", GPU,
          "1 if NVML answered for this GPU in this scrape, 0 if it raised."),
    _spec("vram_gpu_memory_total_bytes", "gauge", GPU,
          "Framebuffer memory total (NVML)."),
    _spec("vram_gpu_memory_reserved_bytes", "gauge", GPU,
          "Memory the driver reserves for itself (NVML v2 memory info; absent where only v1 answered)."),
    _spec("vram_gpu_memory_used_bytes", "gauge", GPU,
          "Memory in use (NVML v2: driver-reserved excluded; with the v1 fallback it is included)."),
    _spec("vram_gpu_memory_free_bytes", "gauge", GPU,
          "Memory free (NVML)."),
    _spec("vram_gpu_memory_nvml_api_version", "gauge", GPU,
          "Which NVML memory call answered: 2 (nvmlDeviceGetMemoryInfo_v2) or 1 (v1 fallback)."),
    _spec("vram_gpu_process_memory_used_bytes", "gauge", (*GPU, "pid", "process"),
          "GPU memory used by one process (NVML); absent where NVML cannot say, never 0 for unknown."),
    _spec("vram_gpu_system_reserved_bytes", "gauge", GPU,
          "VRAM the GPUStack worker reserves (--system-reserved)."),
    _spec("vram_gpu_claimed_bytes", "gauge", GPU,
          "Sum of GPUStack claims of instances bound to this GPU (any state but Pending)."),
    _spec("vram_gpu_allocatable_bytes", "gauge", GPU,
          "GPUStack's allocatable VRAM: max(total in whole MiB - claims - system reserved, 0)."),
    _spec("vram_gpu_predicted_claim_bytes", "gauge", GPU,
          "What the candidates (with GPUStack as the source: its pending instances) would add to this GPU's "
          "claims, placed one by one as the rulebooks predict; not in vram_gpu_claimed_bytes."),
    _spec("vram_model_weights_bytes", "gauge", MODEL,
          "Model weights: root-level weight files, as GPUStack sums them."),
    _spec("vram_model_estimate_bytes", "gauge", MODEL,
          "GPUStack's estimate E: GPUSTACK_MODEL_VRAM_CLAIM, else int(weights * 1.2) + 2 GiB."),
    _spec("vram_model_kv_cache_bytes_per_token", "gauge", MODEL,
          "KV cache bytes one token needs on one GPU (vLLM page size per token)."),
    _spec("vram_model_kv_cache_required_bytes", "gauge", MODEL,
          "vLLM's minimum KV cache for max_model_len: (ceil(len / block) + 1) blocks."),
    _spec("vram_model_gpu_memory_utilization", "gauge", (*MODEL, "reader"),
          "The fraction of each GPU booked, as each reader sees it: gpu_memory_utilization (GPUStack ignores "
          "the underscore spelling), SGLang's mem_fraction_static (reader sglang), a custom backend's declared "
          "one."),
    _spec("vram_model_backend_info", "gauge", (*MODEL, "backend"),
          "The model's backend (value always 1): vllm, sglang or custom; it picks GPUStack's selector and the "
          "engine's rules."),
    _spec("vram_model_engine_info", "gauge", (*MODEL, "backend", "version", "why"),
          "The engine version the model's verdicts assume (value always 1), and why: what the running engine "
          "reports, the version GPUStack deployed or the model names, GPUStack's runner for the node's CUDA, or "
          "\"version unknown\" and the rules assumed."),
    _spec("vram_model_vllm_budget_bytes", "gauge", MODEL_GPU,
          "vLLM's budget R = ceil((total - reserved) * u)."),
    _spec("vram_model_headroom_bytes", "gauge", (*MODEL_GPU, "check"),
          "Room left by each check; negative means it fails."),
    _spec("vram_model_gpu_memory_utilization_min", "gauge", MODEL_GPU,
          "Smallest gpu_memory_utilization passing every check on this GPU (min > max: none)."),
    _spec("vram_model_gpu_memory_utilization_max", "gauge", MODEL_GPU,
          "Largest gpu_memory_utilization passing every check on this GPU."),
    _spec("vram_model_max_model_len_tokens", "gauge", MODEL_GPU,
          "Longest context whose KV cache fits on this GPU."),
    _spec("vram_model_assigned_gpu", "gauge", MODEL_GPU,
          "1 for each GPU GPUStack places (or has placed) the model's first instance on."),
    _spec("vram_model_schedulable", "gauge", MODEL,
          "1 if GPUStack would place the model on this node."),
    _spec("vram_model_startable", "gauge", MODEL,
          "1 if vLLM would start and serve max_model_len on the GPUs the scheduler picks."),
    _spec("vram_model_replicas_placeable", "gauge", MODEL,
          "How many of the model's replicas this node can place."),
    _spec("vram_model_config_error", "gauge", MODEL,
          "1 if the model cannot be judged (e.g. a tensor-parallel size GPUStack refuses)."),
    _spec("vram_model_fix_info", "gauge", (*MODEL, "knob", "action"),
          "A change that would make the model fit on this node (value always 1)."),
    _spec("vram_exporter_build_info", "info", ("version",),
          "vram-exporter build information; value is always 1."),
    _spec("vram_exporter_collect_success", "gauge", ("collector",),
          "1 if the collector succeeded in this scrape, 0 if it failed."),
    _spec("vram_exporter_collect_duration_seconds", "gauge", ("collector",),
          "How long the collector took in this scrape."),
    _spec("vram_exporter_manifest_last_reload_successful", "gauge", NONE,
          "1 if the last manifest (re)load succeeded, 0 if it failed."),
    _spec("vram_exporter_manifest_last_reload_success_timestamp_seconds", "gauge", NONE,
          "When the manifest was last loaded successfully (Unix time)."),
    _spec("vram_exporter_fix_searches_pending", "gauge", NONE,
          "Models whose fixes wait for the background search (vram_model_fix_info lags meanwhile)."),
    _spec("vram_exporter_gpustack_last_success_timestamp_seconds", "gauge", NONE,
          "When GPUStack's API was last read successfully (Unix time; 0: never)."),
    _spec("vram_model_gpustack_replicas", "gauge", MODEL,
          "Replicas of this model GPUStack is asked to run."),
    _spec("vram_model_gpustack_pending_instances", "gauge", MODEL,
          "Instances of this model GPUStack leaves Pending: its own verdict, read from its API."),
    _spec("vram_model_predicted_pending_instances", "gauge", MODEL,
          "Instances of this model the rulebooks predict GPUStack leaves Pending (its scheduler replayed over "
          "every worker of the model's cluster); absent where the model is not evaluated."),
    _spec("vram_model_size_known", "gauge", MODEL,
          "1 if the weights size and config of this vLLM model are known (local_path readable here, or the "
          "overlay manifest), 0 if not: the model is then not evaluated, never guessed."),
    _spec("vram_gpustack_worker_info", "info", ("worker", "worker_id", "cluster_id", "state"),
          "The GPUStack worker this node is; value is always 1."),
    _spec("vram_gpu_gpustack_allocated_bytes", "gauge", GPU,
          "GPUStack's own memory.allocated for this GPU (the sum of the claims it has bound to it), to compare "
          "with vram_gpu_claimed_bytes."),
    _spec("vram_model_vllm_kv_cache_predicted_bytes", "gauge", INSTANCE,
          "KV cache memory rulebook B predicts for a running vLLM instance."),
    _spec("vram_model_vllm_kv_cache_actual_bytes", "gauge", INSTANCE,
          "KV cache memory the running vLLM allocated (vllm:cache_config_info num_gpu_blocks x block)."),
    _spec("vram_model_vllm_kv_cache_tolerance_bytes", "gauge", INSTANCE,
          "Allowed |actual - predicted| KV: 2% of actual or 256 MiB, whichever is larger."),
    _spec("vram_model_vllm_runtime_overhead_observed_bytes", "gauge", INSTANCE,
          "Runtime overhead O the instance really had: budget - weights - actual KV."),
    _spec("vram_model_vllm_instance_up", "gauge", INSTANCE,
          "1 if the running model's own vLLM answered its /metrics with its KV cache at the last read "
          "(--vllm.metrics-interval), 0 if not."),
    _spec("vram_instance_booked_bytes", "gauge", MODEL_INSTANCE_GPU,
          "Memory GPUStack booked for this instance on this GPU (its computed_resource_claim)."),
    _spec("vram_instance_used_bytes", "gauge", MODEL_INSTANCE_GPU,
          "Memory this instance's processes hold on this GPU (NVML per process, attributed by pid, process tree, "
          "listening port or container)."),
    _spec("vram_instance_overrun", "gauge", MODEL_INSTANCE_GPU,
          "1 if this instance holds more than GPUStack booked for it on this GPU while another instance is booked "
          "there or GPUStack has room left to place one (it places by bookings, not use)."),
    _spec("vram_instance_claim_idle", "gauge", MODEL_INSTANCE_GPU,
          "1 if GPUStack books memory for this instance on this GPU and no process of it is there (normal while "
          "it starts; a claim left behind when it lasts)."),
    _spec("vram_gpu_unattributed_used_bytes", "gauge", GPU,
          "Memory held on this GPU by processes that belong to no GPUStack instance."),
    _spec("vram_gpu_idle_claimed_bytes", "gauge", GPU,
          "Memory booked on this GPU for instances that have no process there."),
    _spec("vram_gpu_overbooked", "gauge", GPU,
          "1 if GPUStack's bookings on this GPU add up to more than its total memory."),
    _spec("vram_exporter_web_config_last_reload_successful", "gauge", NONE,
          "1 if the last --web.config.file (re)load succeeded, 0 if it failed (the last good one serves)."),
    _spec("vram_exporter_web_config_last_reload_success_timestamp_seconds", "gauge", NONE,
          "When the web config was last loaded successfully (Unix time)."),
)}


def family(name: str) -> Family:
    """A new, empty family named ``name`` (KeyError: not in the catalogue)."""
    return CATALOGUE[name].family()
