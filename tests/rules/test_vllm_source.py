"""Our vLLM KV rules against vLLM's own code, per version (0.17.1, 0.32.0, 0.33.0, 0.34.0), exact to the byte.

For random model shapes (GQA, MHA, MQA, MLA, MoE's attention, all-sliding windows, fp8 / fp16 / fp32 KV,
TP 1-8, explicit and default block sizes, batch flags), vLLM's ``check_enough_kv_cache_memory`` (its
spec classes' ``page_size_bytes`` and ``max_memory_usage_bytes``, the sliding window's admission blocks,
the held-back null block where the version has it) decides the smallest KV memory that starts, and its
error's "estimated maximum model length" below it; ours must say the same (rules/backends/vllm/engine.py
with the version's rules, versions.py). What is not vLLM's here: the dtype's size, the config fields, the
KV heads per rank (max(1, heads // TP), vllm/config/model.py::get_num_kv_heads) and, for one uniform
group, the pool's bytes per block (one page per layer, ``_get_kv_cache_bytes_per_block``).
"""

from __future__ import annotations

import ast
import random
import re
from types import SimpleNamespace

import pytest

from vllm_source import (PLANNING, VERSIONS, Dtype, _compile, functions, namespace, source, spec, spec_class,
                         vllm_config)
from vram_exporter.rules.backends.vllm import engine as vllm, versions
from vram_exporter.rules.model import Architecture

CASES = 40
CHECK = ("_check_enough_kv_cache_memory", "max_memory_usage_bytes", "estimate_max_model_len",
         "check_enough_kv_cache_memory", "_more_kv_cache_memory_hint")


class Vllm:
    """One version's KV check, compiled from its source."""

    def __init__(self, version: str):
        self.version = version
        ns = namespace()
        ns["get_kv_cache_groups"] = lambda config, specs: [list(specs.values())]
        ns["_pool_bytes_per_block"] = lambda config, groups: sum(s.page_size_bytes for s in groups[0])
        self.check = functions(version, PLANNING[version], CHECK, ns)["check_enough_kv_cache_memory"]
        base = ("KVCacheSpec", "AttentionSpec")
        self.full = spec_class(version, base + ("FullAttentionSpec",), namespace())
        self.mla = spec_class(version, base + ("FullAttentionSpec", "MLAAttentionSpec"), namespace())
        self.sliding = spec_class(version, base + ("SlidingWindowSpec",), namespace())

    def outcome(self, config, specs, available: int) -> str | None:
        """None where vLLM starts; else its error."""
        try:
            self.check(config, specs, available)
        except ValueError as exc:
            return str(exc)
        return None

    def minimum(self, config, specs) -> int:
        """The smallest KV memory vLLM's check passes (it is monotone in the memory)."""
        lo, hi = 1, 2**50
        while lo < hi:
            mid = (lo + hi) // 2
            if self.outcome(config, specs, mid) is None:
                hi = mid
            else:
                lo = mid + 1
        return lo


@pytest.fixture(scope="module", params=VERSIONS)
def engine(request) -> Vllm:
    return Vllm(request.param)


def random_case(rng: random.Random) -> dict:
    kind = rng.choice(["gqa", "mha", "mqa", "mla", "sliding", "moe"])
    heads = rng.choice([8, 16, 32, 40, 64, 128])
    kv_heads = {"gqa": rng.choice([1, 2, 4, 8]), "mha": heads, "mqa": 1, "moe": rng.choice([4, 8, 16])}.get(kind, 8)
    config = {"num_hidden_layers": rng.randint(1, 80), "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "head_dim": rng.choice([64, 80, 96, 128, 256]), "hidden_size": 4096,
              "torch_dtype": rng.choice(["bfloat16", "float16", "float32"]),
              "max_position_embeddings": rng.choice([2048, 4096, 32768, 131072])}
    if kind == "mla":
        config |= {"kv_lora_rank": rng.choice([256, 512]), "qk_rope_head_dim": 64}
    if kind == "sliding":
        config["sliding_window"] = rng.choice([512, 1024, 4096, 8192])
    if kind == "moe":
        config |= {"n_routed_experts": 64, "num_experts_per_tok": 6, "moe_intermediate_size": 1408}
    return {"config": config, "tp": rng.choice([1, 2, 4, 8]), "fp8": rng.random() < 0.3,
            "block": rng.choice([None, None, 16, 32, 64]), "batch": rng.choice([None, 512, 2048, 8192]),
            "len": rng.choice([1, 100, 4096, 10000, 32768, 131072])}


def both(engine: Vllm, case: dict):
    """(vLLM's config and specs, our terms) for one case."""
    rules = versions.rules_for(engine.version)
    arch = Architecture.from_config(case["config"])
    dtype_bytes = vllm.kv_dtype_bytes(arch, "fp8" if case["fp8"] else "auto", "auto")
    block = vllm.block_tokens(arch, case["block"], rules.block_tokens)
    batch = case["batch"] or vllm.SLIDING_BATCH_TOKENS
    length = min(case["len"], arch.max_position_embeddings)
    dtype = Dtype(size=dtype_bytes)
    if arch.mla:
        one = spec(engine.mla, block_size=block, num_kv_heads=1, head_size=arch.kv_lora_rank + arch.qk_rope_head_dim,
                   dtype=dtype, head_size_v=0)
    else:
        fields = dict(block_size=block, num_kv_heads=max(1, arch.kv_heads // case["tp"]), head_size=arch.head_dim,
                      dtype=dtype)
        one = (spec(engine.sliding, sliding_window=arch.sliding_window, **fields) if arch.sliding_window
               else spec(engine.full, sliding_window=None, attention_chunk_size=None, **fields))
    specs = {f"model.layers.{i}.self_attn": one for i in range(arch.layers)}
    config = vllm_config(max_model_len=length, batch=batch, batches=rules.in_flight_batches)
    per_token = vllm.bytes_per_token(arch, tp=case["tp"], pp=1, dtype_bytes=dtype_bytes)
    ours = dict(arch=arch, block=block, per_token=per_token, length=length, held=rules.held_back_blocks,
                in_flight=rules.in_flight_batches * batch)
    return config, specs, ours


def test_minimum_kv_memory_is_vllms_to_the_byte(engine):
    rng = random.Random(f"minimum-{engine.version}")
    for _ in range(CASES):
        case = random_case(rng)
        config, specs, o = both(engine, case)
        ours = vllm.required_kv_bytes(o["arch"], o["length"], o["block"], o["per_token"], held_back=o["held"],
                                      batch_tokens=o["in_flight"])
        assert ours == engine.minimum(config, specs), case


def test_longest_context_in_the_error_is_vllms(engine):
    """Below the minimum vLLM names the longest context that fits; ours is the same number."""
    rng = random.Random(f"longest-{engine.version}")
    checked = 0
    while checked < CASES:
        case = random_case(rng)
        config, specs, o = both(engine, case)
        needed = engine.minimum(config, specs)
        available = rng.randint(1, needed - 1) if needed > 1 else 1
        error = engine.outcome(config, specs, available)
        if error is None or "estimated maximum model length" not in error:
            continue
        theirs = int(re.search(r"estimated maximum model length is (\d+)", error).group(1))
        ours = vllm.longest_context(o["arch"], available, o["block"], o["per_token"], o["length"],
                                    held_back=o["held"], batch_tokens=o["in_flight"])
        assert ours == theirs, case
        checked += 1


def test_the_versions_differ_where_the_source_does():
    """The case issue 21 names, run through each version's own code: Mistral-7B-v0.1 (32 layers, 8 KV heads,
    window 4096) at 32768 tokens with serve's H100 batch (8192)."""
    case = {"config": {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                       "hidden_size": 4096, "torch_dtype": "bfloat16", "max_position_embeddings": 32768,
                       "sliding_window": 4096},
            "tp": 1, "fp8": False, "block": None, "batch": 8192, "len": 32768}
    page = 2 * 8 * 128 * 2 * 32  # bytes per token, all layers
    blocks = {}
    for version in VERSIONS:
        engine = Vllm(version)
        config, specs, o = both(engine, case)
        blocks[version] = engine.minimum(config, specs) // (o["block"] * page)
    # 0.17.1: one batch in flight, nothing held back; 0.32-0.33: two batches and the null block; 0.34: 64-token blocks
    assert blocks == {"0.17.1": -(-(4095 + 8192) // 16) + 1, "0.32.0": 1282, "0.33.0": 1282,
                      "0.34.0": -(-(4095 + 16384) // 64) + 1 + 1}


def test_extensible_kv_sizing_is_vllm_034s():
    """vLLM 0.34's measure_kv_cache_bytes (extensible_kv_cache.py, its margin constants with CUDA's values)
    against ours on random measurements."""
    ns = namespace() | {"current_platform": SimpleNamespace(is_rocm=lambda: False)}
    tree = source("0.34.0", "v1/worker/extensible_kv_cache.py")
    constants = [n for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id.startswith("KV_CACHE_MARGIN") for t in n.targets)]
    _compile(constants, "0.34.0", "v1/worker/extensible_kv_cache.py", ns)
    theirs = functions("0.34.0", "v1/worker/extensible_kv_cache.py", ("measure_kv_cache_bytes",), ns)[
        "measure_kv_cache_bytes"]
    rng = random.Random("extensible")
    for _ in range(500):
        total = rng.choice([24, 48, 80, 141]) * 2**30
        init_free = rng.randint(total // 4, total)
        committed = rng.randint(0, 2**30)
        free = rng.randint(0, init_free - committed)
        m = dict(init_free_memory=init_free, free_memory=free, committed_bytes=committed,
                 requested_memory=rng.choice([init_free, total, int(total * 0.9)]),
                 transient_peak_bytes=rng.randint(0, 8 * 2**30), torch_reserve_growth_bytes=rng.randint(0, 2**30))
        assert vllm.extensible_kv_bytes(init_free=init_free, free=free, committed=committed,
                                        requested=m["requested_memory"], transient_peak=m["transient_peak_bytes"],
                                        torch_growth=m["torch_reserve_growth_bytes"]) == theirs(**m), m


# --- Interleaved sliding and full layers (Gemma-2/3, layer_types) --------------------------------------------
# vLLM's grouping (_get_kv_cache_groups_uniform_page_size with create_kv_cache_group_specs) and its start-up
# check over the groups (_max_memory_usage_bytes_from_groups, _estimate_max_model_len_from_groups,
# _check_enough_kv_cache_memory, after the null block where get_kv_cache_configs takes it out), compiled from
# each version's source. Stand-ins: the spec's merge (alike specs merge to the first, unlike ones raise as
# vLLM's do), KVCacheGroupSpec, and the pool's bytes per block (the widest group's pages,
# _get_kv_cache_bytes_per_block with no stride alignment). Sliding and full layers share one page size here
# (Gemma's), so 0.34's _get_packed_kv_cache_groups (mixed page sizes only) returns None and is not reached.
GROUPED = ("_get_kv_cache_groups_uniform_page_size", "create_kv_cache_group_specs", "get_uniform_page_size",
           "_max_memory_usage_bytes_from_groups", "_estimate_max_model_len_from_groups",
           "_check_enough_kv_cache_memory", "_more_kv_cache_memory_hint")
NULL_BLOCK_TAKEN = {"0.17.1": False, "0.32.0": True, "0.33.0": True, "0.34.0": True}  # get_kv_cache_configs


class _UniformType:  # UniformTypeKVCacheSpecs: never built for mixed kinds, only isinstance-checked
    pass


def _mergeable(cls: type) -> type:
    def merge(_cls, specs):
        if any(vars(s) != vars(specs[0]) or type(s) is not type(specs[0]) for s in specs):
            raise AssertionError("unlike specs")
        return specs[0]
    return type(cls.__name__, (cls,), {"merge": classmethod(merge),
                                      "__hash__": lambda self: hash(tuple(sorted(map(repr, vars(self).items()))))})


class GroupedVllm(Vllm):
    def __init__(self, version: str):
        super().__init__(version)
        self.full, self.sliding = _mergeable(self.full), _mergeable(self.sliding)
        ns = namespace() | {"defaultdict": __import__("collections").defaultdict, "UniformTypeKVCacheSpecs": _UniformType,
                            "KVCacheGroupSpec": lambda names, spec: SimpleNamespace(
                                layer_names=names, kv_cache_spec=spec, host_resident=False)}
        pool = lambda groups: max(sum(g.kv_cache_spec.page_size_bytes for _ in g.layer_names) for g in groups)
        ns["_pool_bytes_per_block"] = lambda config, groups: pool(groups)
        ns["_pool_bytes_per_block_from_builder"] = lambda builder, config, groups: pool(groups)
        self.ns = functions(version, PLANNING[version], GROUPED, ns)

    def outcome(self, config, specs, available: int) -> str | None:
        ns, builder = self.ns, ()  # from 0.33 the memory functions take the config builder first
        groups = ns["_get_kv_cache_groups_uniform_page_size"](dict(specs))
        takes_builder = "builder" in ns["_max_memory_usage_bytes_from_groups"].__code__.co_varnames[:1]
        first = (builder,) if takes_builder else ()
        if NULL_BLOCK_TAKEN[self.version]:
            available -= ns["_pool_bytes_per_block"](config, groups)
        hint = (ns["_more_kv_cache_memory_hint"](config),) if "_more_kv_cache_memory_hint" in ns else ()
        try:
            ns["_check_enough_kv_cache_memory"](
                available, lambda: ns["_max_memory_usage_bytes_from_groups"](*first, config, groups),
                config.model_config.max_model_len,
                lambda am: ns["_estimate_max_model_len_from_groups"](*first, config, groups, am), *hint)
        except ValueError as exc:
            return str(exc)
        return None


@pytest.fixture(scope="module", params=VERSIONS)
def grouped(request) -> GroupedVllm:
    return GroupedVllm(request.param)


def interleaved_case(rng: random.Random) -> dict:
    layers = rng.randint(2, 62)
    shape = rng.choice(["gemma2", "gemma2-published", "gemma3", "random"])
    config = {"num_hidden_layers": layers, "num_attention_heads": 16, "num_key_value_heads": rng.choice([1, 2, 4, 8, 16]),
              "head_dim": rng.choice([128, 256]), "hidden_size": 2304, "torch_dtype": "bfloat16",
              "sliding_window": rng.choice([512, 1024, 4096]), "max_position_embeddings": rng.choice([8192, 32768, 131072])}
    if shape == "gemma2-published":  # no layer_types: every other layer slides (gemma2.py via Gemma2Config)
        config |= {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}
    elif shape == "gemma3":
        config["sliding_window_pattern"] = rng.choice([2, 4, 6])
        config["num_hidden_layers"] = max(layers, config["sliding_window_pattern"])  # at least one full layer
    else:
        sliding = [i % 2 == 0 for i in range(layers)] if shape == "gemma2" else \
            [rng.random() < 0.7 for _ in range(layers)]
        if all(sliding) or not any(sliding):
            sliding[0], sliding[-1] = True, False
        config["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    return {"config": config, "tp": rng.choice([1, 2, 4, 8]), "fp8": rng.random() < 0.3,
            "block": rng.choice([None, None, 16, 32, 64]), "batch": rng.choice([None, 512, 2048, 8192]),
            "len": rng.choice([1, 100, 4096, 10000, 32768, 131072])}


def grouped_both(engine: GroupedVllm, case: dict):
    rules = versions.rules_for(engine.version)
    config, _, ours = both(engine, case | {"config": {k: v for k, v in case["config"].items()
                                                     if k not in ("sliding_window",)}})
    arch = Architecture.from_config(case["config"])
    assert arch.layer_windows, case
    config.attention_config = SimpleNamespace(hisparse_config=None)  # read by the estimate from 0.32
    dtype_bytes = vllm.kv_dtype_bytes(arch, "fp8" if case["fp8"] else "auto", "auto")
    fields = dict(block_size=ours["block"], num_kv_heads=max(1, arch.kv_heads // case["tp"]), head_size=arch.head_dim,
                  dtype=Dtype(size=dtype_bytes))
    specs = {f"model.layers.{i}.self_attn": spec(engine.sliding, sliding_window=w, **fields) if w else
             spec(engine.full, sliding_window=None, attention_chunk_size=None, **fields)
             for i, w in enumerate(arch.layer_windows)}
    per_token = vllm.bytes_per_token(arch, tp=case["tp"], pp=1, dtype_bytes=dtype_bytes)
    return config, specs, ours | dict(arch=arch, per_token=per_token, rules=rules)


def test_interleaved_minimum_is_vllms_grouping_to_the_byte(grouped):
    rng = random.Random(f"interleaved-{grouped.version}")
    for _ in range(CASES):
        case = interleaved_case(rng)
        config, specs, o = grouped_both(grouped, case)
        ours = vllm.required_kv_bytes(o["arch"], o["length"], o["block"], o["per_token"], held_back=o["held"],
                                      batch_tokens=o["in_flight"], rules=o["rules"])
        assert ours == grouped.minimum(config, specs), case


def test_interleaved_longest_context_is_vllms(grouped):
    rng = random.Random(f"interleaved-longest-{grouped.version}")
    checked = 0
    while checked < CASES // 2:
        case = interleaved_case(rng)
        config, specs, o = grouped_both(grouped, case)
        needed = grouped.minimum(config, specs)
        available = rng.randint(1, needed - 1) if needed > 1 else 1
        error = grouped.outcome(config, specs, available)
        if error is None or "estimated maximum model length" not in error:
            continue
        theirs = int(re.search(r"estimated maximum model length is (\d+)", error).group(1))
        ours = vllm.longest_context(o["arch"], available, o["block"], o["per_token"], o["length"],
                                    held_back=o["held"], batch_tokens=o["in_flight"], rules=o["rules"])
        assert ours == theirs, case
        checked += 1


def test_the_flags_the_unset_fix_removes_are_those_that_size_vllm_034s_kv_cache():
    """versions.KV_SIZING_FLAGS (what the fix "remove --gpu-memory-utilization" and its what-if remove): the
    utilization, whose unset value is the extensible cache's 1.0, and every CacheConfig field whose being set
    turns the extensible cache off in vLLM 0.34's ``VllmConfig._resolve_extensible_kv_cache``."""
    resolver = next(node for node in ast.walk(source("0.34.0", "config/vllm.py"))
                    if isinstance(node, ast.FunctionDef) and node.name == "_resolve_extensible_kv_cache")
    turning_off = {node.left.attr for node in ast.walk(resolver)
                   if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute)
                   and isinstance(node.left.value, ast.Name) and node.left.value.id == "cache_config"
                   and isinstance(node.ops[0], ast.IsNot) and isinstance(node.comparators[0], ast.Constant)
                   and node.comparators[0].value is None}
    assert turning_off == {"kv_cache_memory_bytes", "num_gpu_blocks_override"}
    assert set(versions.KV_SIZING_FLAGS) == {"gpu-memory-utilization", *(f.replace("_", "-") for f in turning_off)}
    assert versions.KV_BYTES_FLAG.replace("-", "_") in turning_off
