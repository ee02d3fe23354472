"""SGLang's own default --mem-fraction-static by version (rules/backends/sglang/versions.py ``graph_era_fraction``,
engine.py ``default_mem_fraction_static``) against each version's own function run on the CPU
(tests/sglang_source.py): 0.5.18's ``ServerArgs._handle_gpu_memory_settings``, 0.5.22's and 0.5.23's
``arg_groups/memory_hook.py::handle_gpu_memory_settings``, with their ``reserve_for_graph_mb``,
``reserve_for_deepep_a2a_mb`` and prefill graph sizes from the same wheel; only the card's size, the model
config and the platform are stood in for. 0.5.9's is run in test_rulebook_sglang.py."""

from __future__ import annotations

import copy
import functools
import itertools
import logging
from types import SimpleNamespace

import pytest

from sglang_source import function, wheel_of
from vram_exporter.rules.backends.sglang import engine as sglang
from vram_exporter.rules.model import Architecture
from vram_exporter.units import MIB

CARDS_MIB = [6138, 8192, 12288, 16384, 23028, 24564, 40960, 46068, 49140, 81559, 97871, 143771, 183359]
QWEN_7B = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
           "torch_dtype": "bfloat16", "max_position_embeddings": 32768}

BACKEND = SimpleNamespace(FULL="full", BREAKABLE="breakable", DISABLED="disabled", TC_PIECEWISE="tc_piecewise")
NEW = ("0.5.18", "0.5.22", "0.5.23")
FLAG = {"tp_size": "--tp-size", "pp_size": "--pp-size", "chunked_prefill_size": "--chunked-prefill-size",
        "cuda_graph_max_bs": "--cuda-graph-max-bs", "max_total_tokens": "--max-total-tokens",
        "max_running_requests": "--max-running-requests", "speculative_algorithm": "--speculative-algorithm"}
VARIANTS = [{}, {"tp_size": 2}, {"tp_size": 4}, {"tp_size": 8, "pp_size": 2}, {"chunked_prefill_size": 4096},
            {"chunked_prefill_size": -1}, {"cuda_graph_max_bs": 64}, {"max_total_tokens": 3000},
            {"max_running_requests": 16}, {"speculative_algorithm": "EAGLE"}, {"chunked_prefill_size": 16384}]


def _server_args(gpu_mem: float, mla: bool, args: dict) -> SimpleNamespace:
    phase = lambda backend: SimpleNamespace(max_bs=None, bs=None, backend=backend)  # noqa: E731
    sa = SimpleNamespace(
        chunked_prefill_size=None, tp_size=1, pp_size=1, dp_size=1, attn_dp_size=1, device="cuda",
        cuda_graph_config=SimpleNamespace(decode=phase(BACKEND.FULL), prefill=phase(BACKEND.BREAKABLE)),
        max_total_tokens=None, max_running_requests=None, model_path="/models/qwen2.5-7b", mem_fraction_static=None,
        disaggregation_mode="null", max_prefill_tokens=16384, language_only=False, language_model_only=False,
        enable_symm_mem=False, speculative_algorithm=None, speculative_num_draft_tokens=None, torch_compile_max_bs=None,
        moe_a2a_backend="none", enable_dp_attention=False, _cuda_graph_config_locked=set())
    for key, value in args.items():
        setattr(sa, key, value)
    # --cuda-graph-max-bs is the deprecated alias of --cuda-graph-max-bs-decode: cuda_graph_config[decode].max_bs
    sa.cuda_graph_config.decode.max_bs = args.get("cuda_graph_max_bs")
    sa.gpu_mem, sa.mla = gpu_mem, mla
    return sa


@functools.cache
def _functions_0518():
    wheel_file = wheel_of("0.5.18")
    envs = SimpleNamespace(SGLANG_SYMM_MEM_PREALLOC_GB_SIZE=None)
    namespace = {"envs": envs, "Backend": BACKEND, "resolved_view": lambda sa: sa, "logger": logging.getLogger("t")}
    handle = function("server_args.py", "_handle_gpu_memory_settings", namespace, cls="ServerArgs", wheel_file=wheel_file)
    graphs = function("server_args.py", "reserve_for_graph_mb", dict(namespace), cls="ServerArgs", wheel_file=wheel_file)
    deepep = function("server_args.py", "reserve_for_deepep_a2a_mb", dict(namespace), cls="ServerArgs",
                      wheel_file=wheel_file)
    prefill = function("server_args.py", "_generate_prefill_cuda_graph_batch_sizes", {}, cls="ServerArgs",
                       wheel_file=wheel_file)
    return handle, graphs, deepep, prefill


def _run_0518(gpu_mem: float, mla: bool, args: dict) -> float:
    handle, graphs, deepep, prefill = _functions_0518()
    sa = _server_args(gpu_mem, mla, args)
    sa._resolved = lambda: sa
    sa.use_mla_backend = lambda: mla
    sa.post_capture_kv_sizing_planned = lambda: False
    sa.get_model_config = lambda: SimpleNamespace(is_multimodal=False)
    sa._generate_decode_cuda_graph_batch_sizes = lambda max_bs: [max_bs]
    sa._generate_prefill_cuda_graph_batch_sizes = lambda max_bs: prefill(sa, max_bs)
    sa.reserve_for_graph_mb = lambda: graphs(sa)
    sa.reserve_for_deepep_a2a_mb = lambda: deepep(sa)
    handle(sa, gpu_mem)
    return sa.mem_fraction_static


@functools.cache
def _hook(version: str):
    """(the handler, the box its stand-ins read the server args from)."""
    box = SimpleNamespace(sa=None)
    wheel_file = wheel_of(version)
    module = "arg_groups/memory_hook.py"

    def declare(sa, who, **values):
        for key, value in values.items():
            setattr(sa, key, value)

    namespace = {
        "copy": copy, "logger": logging.getLogger("t"), "Backend": BACKEND, "Phase": SimpleNamespace(PREFILL="prefill"),
        "envs": SimpleNamespace(SGLANG_SYMM_MEM_PREALLOC_GB_SIZE=None), "_DEFAULT_PP_PREFILL_CUDA_GRAPH_MAX_TOKENS": 8192,
        "resolving_view": lambda sa: sa, "resolved_view": lambda sa: sa, "declare_resolution": declare,
        "get_device_memory_capacity": lambda device: box.sa.gpu_mem, "use_mla_backend": lambda sa: sa.mla,
        "model_config_of": lambda sa: SimpleNamespace(is_multimodal=False), "post_capture_kv_sizing_planned": lambda sa: False,
        "attn_dp_enabled_of": lambda sa: sa.enable_dp_attention, "get_platform": lambda: SimpleNamespace(is_xpu=False),
        "generate_decode_cuda_graph_batch_sizes": lambda sa, max_bs: [max_bs],
        "expand_multimodal_decode_graph_to_running_limit": lambda sa, config, gpu_mem: None,
    }
    function("arg_groups/cuda_graph_hook.py", "generate_prefill_cuda_graph_batch_sizes", namespace, wheel_file=wheel_file)
    function(module, "reserve_for_graph_mb", namespace, wheel_file=wheel_file)
    function(module, "reserve_for_deepep_a2a_mb", namespace, wheel_file=wheel_file)
    return function(module, "handle_gpu_memory_settings", namespace, wheel_file=wheel_file), box


def _run_hook(version: str, gpu_mem: float, mla: bool, args: dict) -> float:
    handle, box = _hook(version)
    box.sa = sa = _server_args(gpu_mem, mla, args)
    handle(sa)
    return sa.mem_fraction_static


def sglangs_fraction(version: str, gpu_mem: float, args: dict, mla: bool = False) -> float:
    return _run_0518(gpu_mem, mla, args) if version == "0.5.18" else _run_hook(version, gpu_mem, mla, args)


MLA = {**QWEN_7B, "kv_lora_rank": 512, "qk_rope_head_dim": 64}


@pytest.mark.parametrize("version, mla", list(itertools.product(NEW, (False, True))))
def test_default_fraction_is_sglangs_own_per_version(version, mla):
    arch = Architecture.from_config(MLA if mla else QWEN_7B)
    for card, args in itertools.product(CARDS_MIB, VARIANTS):
        params = sglang.sglang_params([f"{FLAG[k]}={v}" for k, v in args.items()])
        ours = sglang.default_mem_fraction_static(card * MIB, params, arch, version)
        assert ours == sglangs_fraction(version, float(card), args, mla), (card, args)


def test_the_cards_the_issue_names():
    """RTX 4090 (24564 MiB) and H100 80GB (81559 MiB), TP 1: 0.5.9's default against 0.5.23's."""
    arch = Architecture.from_config(QWEN_7B)
    params = sglang.sglang_params([])
    by_version = {v: [sglang.default_mem_fraction_static(mib * MIB, params, arch, v) for mib in (24564, 81559)]
                  for v in ("0.5.9", "0.5.18", "0.5.23")}
    assert by_version == {"0.5.9": [0.847, 0.835], "0.5.18": [0.833, 0.83], "0.5.23": [0.704, 0.83]}
