"""SGLang 0.5.9's own functions, compiled from its wheel and run on the CPU.

SGLang cannot be imported here (it needs torch, CUDA kernels and dozens of packages), so each function
is taken from the wheel's source text as it is (``ast``) and run with plain stand-ins for the few
names it calls that need a GPU: the free memory ``get_available_gpu_memory`` would measure, the world
group, and ``torch._utils._element_size`` (the bytes of a dtype). The arithmetic is SGLang's own.
`make test` downloads the wheel (``pip download --no-deps sglang==0.5.9``) into .cache/sglang/.
"""

from __future__ import annotations

import __future__
import ast
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEEL = Path(os.environ.get("SGLANG_WHEEL", ROOT / ".cache" / "sglang" / "sglang-0.5.9-py3-none-any.whl"))


def wheel() -> zipfile.ZipFile:
    if not WHEEL.exists():
        pytest.fail(f"{WHEEL} is missing: `make test` downloads it (pip download --no-deps sglang==0.5.9 -d "
                    ".cache/sglang)")
    return zipfile.ZipFile(WHEEL)


def function(module: str, name: str, namespace: dict[str, Any], cls: str | None = None):
    """``name`` (a method of ``cls`` when given) from ``sglang/srt/<module>``, defined in ``namespace``."""
    with wheel() as z:
        source = z.read(f"sglang/srt/{module}").decode()
    tree = ast.parse(source)
    body = tree.body
    if cls is not None:
        body = next(node for node in body if isinstance(node, ast.ClassDef) and node.name == cls).body
    node = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)
    node.decorator_list = []
    code = compile(ast.Module(body=[node], type_ignores=[]), f"sglang/srt/{module}", "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)
    return namespace[name]


class Dtype(SimpleNamespace):
    """A torch dtype as far as SGLang's KV arithmetic looks at it: its size."""


TORCH = SimpleNamespace(_utils=SimpleNamespace(_element_size=lambda dtype: dtype.size))
