"""vLLM's own KV cache code, per version, compiled from its wheel's source and run on the CPU.

vLLM cannot be imported here (torch, CUDA kernels, dozens of packages; its wheels are 240-430 MB), so the
methods and functions the KV check is made of are taken from the source text as it is (``ast``) and run
with plain stand-ins for what they read that needs torch: a dtype's size (``get_dtype_size``) and the
config objects' few fields. A spec class is rebuilt from the methods of its class and its bases
(``spec_class``), so ``page_size_bytes``, ``max_memory_usage_bytes`` and the sliding window's
``max_admission_blocks_per_request`` are vLLM's. `make vllm-sources` downloads each wheel once
(``pip download --no-deps vllm==X``) and keeps only the .py files read here, under .cache/vllm/X/.
"""

from __future__ import annotations

import __future__
import ast
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = Path(os.environ.get("VLLM_SOURCES", ROOT / ".cache" / "vllm"))
VERSIONS = ("0.17.1", "0.32.0", "0.33.0", "0.34.0")
# where the KV check lives: kv_cache_utils.py until 0.32, kv_cache_planning.py from 0.33
PLANNING = {"0.17.1": "v1/core/kv_cache_utils.py", "0.32.0": "v1/core/kv_cache_utils.py",
            "0.33.0": "v1/core/kv_cache_planning.py", "0.34.0": "v1/core/kv_cache_planning.py"}
FILES = ("v1/kv_cache_interface.py", "v1/core/kv_cache_utils.py", "v1/core/kv_cache_planning.py",
         "v1/worker/extensible_kv_cache.py", "v1/worker/utils.py", "config/cache.py", "config/vllm.py")


def source(version: str, module: str) -> ast.Module:
    path = SOURCES / version / "vllm" / module
    if not path.exists():
        pytest.fail(f"{path} is missing: `make vllm-sources` extracts it from vllm=={version}'s wheel")
    return ast.parse(path.read_text())


def _compile(nodes: list[ast.stmt], version: str, module: str, namespace: dict[str, Any]) -> None:
    code = compile(ast.Module(body=nodes, type_ignores=[]), f"vllm-{version}/{module}", "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)


def functions(version: str, module: str, names: tuple[str, ...], namespace: dict[str, Any]) -> dict[str, Any]:
    """Module-level functions ``names`` of ``vllm/<module>``, defined in ``namespace`` (absent ones skipped)."""
    tree = source(version, module)
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    for node in nodes:
        node.decorator_list = []
    _compile(nodes, version, module, namespace)
    return namespace


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def spec_class(version: str, chain: tuple[str, ...], namespace: dict[str, Any]) -> type:
    """A class with the methods and properties of vLLM's ``chain`` (base first, so a subclass's win), its
    fields left to the instance (``spec``). Decorators other than @property are dropped."""
    tree = source(version, "v1/kv_cache_interface.py")
    body: dict[str, Any] = {}
    for cls_name in chain:
        cls = _class(tree, cls_name)
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                body.pop(node.target.id, None)  # a dataclass field overrides a base's property
                continue
            if not isinstance(node, ast.FunctionDef) or node.name in ("__post_init__", "merge"):
                continue
            is_property = any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)
            node.decorator_list = []
            scope = dict(namespace)
            _compile([node], version, "v1/kv_cache_interface.py", scope)
            body[node.name] = property(scope[node.name]) if is_property else scope[node.name]
    return type("_".join(chain), (SimpleNamespace,), body)


class Dtype(SimpleNamespace):
    """A torch dtype as far as vLLM's KV arithmetic looks at it: its size."""


def cdiv(a: int, b: int) -> int:  # vllm/utils/math_utils.py::cdiv
    return -(a // -b)


def namespace() -> dict[str, Any]:
    return {"cdiv": cdiv, "math": math, "get_dtype_size": lambda dtype: dtype.size, "format_gib":
            lambda b: round(b / 2**30, 2), "Fraction": __import__("fractions").Fraction, "logger": SimpleNamespace(
                info=lambda *a, **k: None, warning=lambda *a, **k: None, debug=lambda *a, **k: None)}


# Fields vLLM's AttentionSpec has from 0.32 whose defaults the methods read (0.17.1 has none of them).
ATTENTION_DEFAULTS = dict(page_size_padded=None, num_head_slots=None, state_content_bytes=None, tokens_per_state=1,
                          dcp_sharded=True, block_stride_alignment=None, extra_retained_tokens=0,
                          cache_dtype_str=None, alignment=None)


def spec(cls: type, **fields: Any):
    values = {**ATTENTION_DEFAULTS, **fields}
    values.setdefault("head_size_v", values["head_size"])  # AttentionSpec.__post_init__
    return cls(**values)


def vllm_config(*, max_model_len: int, batch: int, batches: int, extensible: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        model_config=SimpleNamespace(max_model_len=max_model_len, original_max_model_len=max_model_len),
        parallel_config=SimpleNamespace(decode_context_parallel_size=1, prefill_context_parallel_size=1),
        scheduler_config=SimpleNamespace(max_num_batched_tokens=batch),
        max_in_flight_tokens=batches * batch,
        cache_config=SimpleNamespace(enable_extensible_kv_cache=extensible, gpu_memory_utilization=None,
                                     resolved_gpu_memory_utilization=1.0 if extensible else 0.92))
