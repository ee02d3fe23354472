"""backend_parameters read twice: the way GPUStack reads them, and the way vLLM does.

The two readers disagree on purpose, because the real programs do:
- GPUStack (gpustack 2.3.0 ``gpustack/utils/command.py``: ``flatten_to_argv``,
  ``_iter_param_pairs``, ``find_parameter``) matches keys exactly after stripping
  leading dashes, and the FIRST occurrence wins. ``--gpu_memory_utilization`` is
  therefore invisible to it: it keeps its default 0.9.
- vLLM (argparse via ``FlexibleArgumentParser``) accepts dashes or underscores,
  aliases (``-tp``, ``--device-memory-utilization``), and the LAST occurrence wins.
"""

from __future__ import annotations

from ..errors import ModelError

import functools
import json
import math
import re
import shlex
from decimal import Decimal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

GPUSTACK_DEFAULT_GMU = 0.9  # vllm_resource_fit_selector.py::_set_gpu_memory_utilization
# Beyond this a --gpu-memory-utilization is a typo, not a fraction (GPUStack itself does not bound it, but
# its arithmetic overflows from about 1e300 and fails on inf and nan); a finite 1.5 is still replayed as it is.
MAX_GMU = 100.0


def _is_key(token: str) -> bool:
    """gpustack ``is_parameter_key``: starts with '-', is not a number, is not '--'."""
    if not token.startswith("-") or len(token) <= 1 or token == "--":
        return False
    try:
        float(token)
    except ValueError:
        return True
    return False


def argv_tokens(parameters: Sequence[str] | None) -> list[str]:
    """gpustack ``flatten_to_argv``: an entry that starts with a key is shell-split, others kept whole."""
    tokens: list[str] = []
    for entry in parameters or ():
        stripped = (entry or "").strip()
        if not stripped:
            continue
        if _is_key(stripped.split(None, 1)[0]):
            tokens.extend(shlex.split(stripped))
        else:
            tokens.append(stripped)
    return tokens


def param_pairs(parameters: Sequence[str] | None) -> Iterator[tuple[str, str | None]]:
    """(key without leading dashes, value or None) in order, as GPUStack pairs them."""
    tokens = argv_tokens(parameters)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not _is_key(token):
            i += 1
        elif "=" in token:
            key, _, value = token.partition("=")
            yield key.lstrip("-"), value
            i += 1
        elif i + 1 < len(tokens) and not _is_key(tokens[i + 1]):
            yield token.lstrip("-"), tokens[i + 1]
            i += 2
        else:
            yield token.lstrip("-"), None
            i += 1


# --- GPUStack's reading -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuStackParams:
    gpu_memory_utilization: float
    gmu_given: bool
    world_size: int | None  # tp * pp * pcp * dp as requested; None: not requested
    tensor_parallel_size: int | None
    language_model_only: bool = False  # --language-model-only: the vision heads need not divide TP
    mp_arguments_problem: str | None = None  # GPUStack's refusal of the MP executor's dp / dpl


_FALSY = frozenset({"0", "false", "no", "off", "f", "n"})


def last_number(last: Mapping[str, str | None], name: str, kind, default, *, engine: str):
    """An engine's value of ``--name`` from its argparse reading (``last``: the last of each key), or
    ``default`` when absent; the engine's refusal when it is not a ``kind``."""
    raw = last.get(name)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ModelError(f"{engine} cannot read --{name} {raw!r}") from None


def find_bool_parameter(parameters: Sequence[str] | None, names: Sequence[str]) -> bool:
    """gpustack ``find_bool_parameter``: the first occurrence; a bare flag or any value but a falsy one is on."""
    for key, value in param_pairs(parameters):
        if key in names:
            return value is None or value.lower() not in _FALSY
    return False


def first_parameter(parameters: Sequence[str] | None, names: Sequence[str]) -> str | None:
    """gpustack ``find_parameter``: the first value of any of ``names`` (GPUStack reads the FIRST occurrence)."""
    for key, value in param_pairs(parameters):
        if key in names and value is not None:
            return value
    return None


def first_int_parameter(parameters: Sequence[str] | None, names: Sequence[str]) -> int | None:
    """gpustack ``find_int_parameter``: the first value of any of ``names``, None when absent or not an int."""
    return _first_int(parameters, names)


def _first_int(parameters: Sequence[str] | None, names: Sequence[str]) -> int | None:
    value = first_parameter(parameters, names)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # GPUStack's find_int_parameter ignores what it cannot parse


def gpustack_params(parameters: Sequence[str] | None) -> GpuStackParams:
    """Raises ValueError where GPUStack would refuse the model (bad float, non-positive sizes)."""
    raw_gmu = first_parameter(parameters, ["gpu-memory-utilization"])
    gmu = GPUSTACK_DEFAULT_GMU
    if raw_gmu is not None:
        try:
            gmu = float(raw_gmu)
        except ValueError:
            raise ModelError(f"GPUStack cannot read --gpu-memory-utilization={raw_gmu!r} as a number") from None
        if not math.isfinite(gmu) or abs(gmu) > MAX_GMU:
            # GPUStack's own arithmetic (int(g * 100), int(T * g)) fails on it: the model is never placed.
            raise ModelError(f"--gpu-memory-utilization={raw_gmu} is no fraction of a card: GPUStack cannot "
                             "schedule it (not modelled)")
    sizes = {
        "tensor-parallel-size": _first_int(parameters, ["tensor-parallel-size", "tp"]),
        "pipeline-parallel-size": _first_int(parameters, ["pipeline-parallel-size", "pp"]),
        "prefill-context-parallel-size": _first_int(parameters, ["prefill-context-parallel-size", "pcp"]),
        "data-parallel-size": _first_int(parameters, ["data-parallel-size", "dp"]),
    }
    local = _first_int(parameters, ["data-parallel-size-local", "dpl"])
    for name, value in (*sizes.items(), ("data-parallel-size-local", local)):
        if value is not None and value <= 0:
            raise ModelError(f"vLLM: --{name} {value} must be positive.")  # GPUStack's own words
    world = _world_size(sizes, local, find_bool_parameter(parameters, ["data-parallel-hybrid-lb"]))
    dp = sizes["data-parallel-size"]
    mp_problem = (f"vLLM multi-node: --data-parallel-size {dp} must be a multiple of --data-parallel-size-local "
                  f"{local}." if dp is not None and local is not None and dp % local else None)
    return GpuStackParams(gmu, raw_gmu is not None, world, sizes["tensor-parallel-size"],
                          find_bool_parameter(parameters, ["language-model-only"]), mp_problem)


def _world_size(sizes: dict[str, int | None], local: int | None, hybrid_lb: bool) -> int | None:
    """vllm_resource_fit_selector.py::get_world_size_from_backend_parameters: tp x pp x pcp x dp; with
    --data-parallel-hybrid-lb the deployment runs only its local ranks (dp = dpl), and without dpl
    GPUStack infers nothing."""
    if hybrid_lb:
        if local is None:
            return None
        sizes = {**sizes, "data-parallel-size": local}
    if not any(sizes.values()):
        return None
    return math.prod(v for v in sizes.values() if v)


def executor_is_mp(parameters: Sequence[str] | None, backend_version: str | None, image_name: str | None) -> bool:
    """utils/command.py::resolve_executor_backend: an explicit --distributed-executor-backend wins (only
    "mp" is MP); else Ray, unless the model pins an image, or runs a "-custom" backend version from vLLM
    0.18.0 on (should_default_to_ray)."""
    for key, value in param_pairs(parameters):
        if key == "distributed-executor-backend" and value is not None:
            return value == "mp"
    if image_name:
        return True
    if not backend_version or "-custom" not in backend_version:
        return False
    return _compare_versions(backend_version, "0.18.0") >= 0


def _compare_versions(a: str, b: str) -> int:
    """gpustack_runtime/deployer/__utils__.py::compare_versions: dotted parts, numbers as numbers, the rest
    as code points (alpha < beta < rc < release)."""
    def explode(v: str) -> list:
        parts = []
        for x in re.split(r"[.\-_+]", v.removeprefix("v")):
            if x.isdigit():
                parts.append(int(x))
            else:
                tag = next((t for t in ("alpha", "beta", "rc") if x.startswith(t)), None)
                rank = {"alpha": -3, "beta": -2, "rc": -1}.get(tag or "")
                parts.append([rank, *map(ord, x[len(tag):])] if tag else list(map(ord, x)))
        return parts
    if a.removeprefix("v") == b.removeprefix("v"):
        return 0
    left, right = explode(a), explode(b)
    width = max(len(left), len(right))
    left, right = left + [0] * (width - len(left)), right + [0] * (width - len(right))
    for x, y in zip(left, right):
        if isinstance(x, list) != isinstance(y, list):
            x, y = (x, [y]) if isinstance(x, list) else ([x], y)
        if x != y:
            return -1 if x < y else 1
    return 0


# --- vLLM's reading -----------------------------------------------------------------------

_VLLM_ALIASES = {
    "tp": "tensor-parallel-size",
    "pp": "pipeline-parallel-size",
    "dp": "data-parallel-size",
    "device-memory-utilization": "gpu-memory-utilization",
    "sc": "speculative-config",  # vLLM 0.34's short form
}
# vllm/config/lora.py MaxLoRARanks (0.17.1-0.34.0): argparse refuses any other --max-lora-rank.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LORA_DTYPES = ("auto", "float16", "bfloat16")  # vllm/config/lora.py LoRADType


@dataclass(frozen=True, slots=True)
class VllmParams:
    gpu_memory_utilization: float | None  # None: not given, vLLM's default applies
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int | None  # None: the model's own (max_position_embeddings); -1: "auto"
    kv_cache_dtype: str
    dtype: str
    block_size: int | None
    spelled_with_underscore: bool
    max_num_batched_tokens: int | None = None  # None: vLLM's default for the GPU
    max_num_seqs: int | None = None  # None: vLLM's default for the GPU  # --gpu_memory_utilization: vLLM reads it, GPUStack does not
    # The KV cache sized directly (vllm/config/cache.py, 0.17.1-0.34.0); either turns 0.34's extensible KV
    # cache off (vllm/config/vllm.py::_resolve_extensible_kv_cache).
    kv_cache_memory_bytes: int | None = None
    num_gpu_blocks_override: int | None = None
    lora: VllmLoraParams | None = None  # --enable-lora and its settings; None: LoRA off
    speculative_config: Mapping[str, object] | None = None  # --speculative-config's JSON object


@dataclass(frozen=True, slots=True)
class VllmLoraParams:
    """vLLM's LoRAConfig as its flags set it (vllm/engine/arg_utils.py, vllm/config/lora.py, 0.17.1-0.34.0)."""

    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # None (or <= 0): max_loras; CPU memory only
    lora_dtype: str = "auto"  # auto: the model's dtype
    fully_sharded_loras: bool = False
    specialize_active_lora: bool = False  # one CUDA graph set per active-adapter count (power of 2)
    target_modules: tuple[str, ...] | None = None  # --lora-target-modules (0.34)


def _vllm_key(key: str) -> str:
    key = key.replace("_", "-")
    return _VLLM_ALIASES.get(key, key)


def parse_model_len(text: str) -> int:
    """vLLM's ``--max-model-len``: 4k = 4000, 1K = 1024, 128K = 131072; auto or -1 = longest that fits (-1)."""
    text = text.strip()
    if text.lower() == "auto" or text == "-1":
        return -1
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", text)
    if not match:
        raise ModelError(f"--max-model-len {text!r}: expected tokens like 32768, 4k, 128K or auto")
    number, suffix = Decimal(match.group(1)), match.group(2)
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}[suffix]
    return int(number * scale)


def human_readable_int(text: str) -> int:
    """vLLM's ``human_readable_int`` (vllm/utils/argparse_utils.py, 0.34.0; --kv-cache-memory-bytes,
    --max-num-batched-tokens): 1k = 1000, 1K = 1024, 25.6k = 25600, 1G = 2**30; no decimals with K/M/G/T."""
    text = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", text)
    if not match:
        return int(text)
    number, suffix = match.groups()
    if suffix.islower():
        return int(float(number) * 10 ** {"k": 3, "m": 6, "g": 9, "t": 12}[suffix])
    return int(number) * 2 ** {"K": 10, "M": 20, "G": 30, "T": 40}[suffix]


def vllm_params(parameters: Sequence[str] | None) -> VllmParams:
    last: dict[str, str | None] = {}
    underscore = False
    for key, value in param_pairs(parameters):
        name = _vllm_key(key)
        if name == "gpu-memory-utilization" and "_" in key:
            underscore = True
        if name.startswith("no-"):  # argparse.BooleanOptionalAction's --no-X: X off, the last one wins
            name, value = name[3:], "false"
        elif name in _BOOLEAN_FLAGS:
            if value is not None:
                raise ModelError(f"vLLM's --{name} takes no value (argparse: ignored explicit argument {value!r})")
            value = "true"
        last[name] = value  # argparse: the last one wins

    number = functools.partial(last_number, last, engine="vLLM")

    raw_len = last.get("max-model-len")
    return VllmParams(
        gpu_memory_utilization=number("gpu-memory-utilization", float, None),
        tensor_parallel_size=number("tensor-parallel-size", int, 1),
        pipeline_parallel_size=number("pipeline-parallel-size", int, 1),
        max_model_len=parse_model_len(raw_len) if raw_len is not None else None,
        kv_cache_dtype=(last.get("kv-cache-dtype") or "auto"),
        dtype=(last.get("dtype") or "auto"),
        block_size=number("block-size", int, None),
        spelled_with_underscore=underscore,
        max_num_batched_tokens=number("max-num-batched-tokens", int, None),
        max_num_seqs=number("max-num-seqs", int, None),
        kv_cache_memory_bytes=number("kv-cache-memory-bytes", human_readable_int, None),
        num_gpu_blocks_override=number("num-gpu-blocks-override", int, None),
        lora=_lora_params(last, number),
        speculative_config=_speculative_config(last.get("speculative-config")),
    )


# vLLM's BooleanOptionalAction flags read here (--X on, --no-X off)
_BOOLEAN_FLAGS = frozenset({"enable-lora", "fully-sharded-loras", "specialize-active-lora"})


def _lora_params(last: Mapping[str, str | None], number) -> VllmLoraParams | None:
    """LoRAConfig, built only with --enable-lora (arg_utils.py create_engine_config); argparse checks the
    choices of --max-lora-rank and --lora-dtype whether LoRA is on or not."""
    rank = number("max-lora-rank", int, 16)
    if rank not in MAX_LORA_RANKS:
        raise ModelError(f"vLLM refuses --max-lora-rank {rank}: choose from {', '.join(map(str, MAX_LORA_RANKS))}")
    dtype = last.get("lora-dtype") or "auto"
    if dtype not in LORA_DTYPES:
        raise ModelError(f"vLLM refuses --lora-dtype {dtype!r}: choose from {', '.join(LORA_DTYPES)}")
    if last.get("enable-lora") != "true":
        return None
    max_loras = number("max-loras", int, 1)
    cpu = number("max-cpu-loras", int, None)
    cpu = cpu if cpu and cpu > 0 else None  # arg_utils.py: "if self.max_cpu_loras and self.max_cpu_loras > 0"
    if max_loras < 1:
        raise ModelError(f"vLLM refuses --max-loras {max_loras}: it must be at least 1")
    if cpu is not None and cpu < max_loras:
        raise ModelError(f"vLLM fails: max_cpu_loras ({cpu}) must be >= max_loras ({max_loras}).")
    targets = last.get("lora-target-modules")
    return VllmLoraParams(max_loras=max_loras, max_lora_rank=rank, max_cpu_loras=cpu, lora_dtype=dtype,
                          fully_sharded_loras=last.get("fully-sharded-loras") == "true",
                          specialize_active_lora=last.get("specialize-active-lora") == "true",
                          target_modules=tuple(targets.split()) if targets else None)


def _speculative_config(raw: str | None) -> Mapping[str, object] | None:
    """--speculative-config: a JSON object (arg_utils.py: ``optional_type(json.loads)``)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ModelError(f"vLLM cannot read --speculative-config {raw!r}: it takes a JSON object (GPUStack splits "
                         "a parameter as a shell does: give the JSON as an entry of its own, or in single quotes)"
                         ) from None
    if not isinstance(value, dict):
        raise ModelError(f"vLLM cannot read --speculative-config {raw!r}: it takes a JSON object")
    return value


def with_param(parameters: Sequence[str], name: str, value: object) -> tuple[str, ...]:
    """``parameters`` with every spelling of ``--name`` removed and ``--name=value`` appended.

    Written with dashes so that GPUStack and vLLM both read it (see the module docstring).
    """
    return _with_param(tuple(parameters), name, value)


def without_param(parameters: Sequence[str], name: str) -> tuple[str, ...]:
    """``parameters`` without any spelling of ``--name``."""
    return _with_param(tuple(parameters), name, "")[:-1]


@lru_cache(maxsize=8192, typed=True)  # the fix search writes the same few values into the same lists
def _with_param(parameters: tuple[str, ...], name: str, value: object) -> tuple[str, ...]:
    tokens = argv_tokens(parameters)
    kept: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if _is_key(token) and _vllm_key(token.partition("=")[0].lstrip("-")) == name:
            has_separate_value = "=" not in token and i + 1 < len(tokens) and not _is_key(tokens[i + 1])
            i += 2 if has_separate_value else 1
            continue
        kept.append(token)
        i += 1
    return (*kept, f"--{name}={value}")
