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


WHEELS = Path(os.environ.get("SGLANG_WHEELS", WHEEL.parent))  # the other versions' wheels (sglang-<version>-*.whl)


def wheel(path: Path = WHEEL) -> zipfile.ZipFile:
    if not path.exists():
        pytest.fail(f"{path} is missing: `make test` downloads it (pip download --no-deps sglang==<version> -d "
                    ".cache/sglang)")
    return zipfile.ZipFile(path)


def wheel_of(version: str) -> Path:
    """The wheel of SGLang ``version`` (pure Python up to 0.5.9, built per platform since)."""
    found = sorted(WHEELS.glob(f"sglang-{version}-*.whl"))
    if not found:
        pytest.fail(f"no sglang-{version} wheel in {WHEELS}: `make test` downloads it (pip download --no-deps "
                    f"sglang=={version} -d .cache/sglang)")
    return found[0]


def source(module: str, wheel_file: Path = WHEEL) -> str:
    with wheel(wheel_file) as z:
        return z.read(f"sglang/srt/{module}").decode()


def function(module: str, name: str, namespace: dict[str, Any], cls: str | None = None, wheel_file: Path = WHEEL):
    """``name`` (a method of ``cls`` when given) from ``sglang/srt/<module>``, defined in ``namespace``; imports
    inside its body are dropped (their names come from ``namespace``: SGLang's package cannot be imported)."""
    with wheel(wheel_file) as z:
        source = z.read(f"sglang/srt/{module}").decode()
    tree = ast.parse(source)
    body = tree.body
    if cls is not None:
        body = next(node for node in body if isinstance(node, ast.ClassDef) and node.name == cls).body
    node = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)
    node.decorator_list = []
    node.body = [n for n in node.body if not isinstance(n, (ast.Import, ast.ImportFrom))]
    code = compile(ast.Module(body=[node], type_ignores=[]), f"sglang/srt/{module}", "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)
    return namespace[name]


class Dtype(SimpleNamespace):
    """A torch dtype as far as SGLang's KV arithmetic looks at it: its size."""


TORCH = SimpleNamespace(_utils=SimpleNamespace(_element_size=lambda dtype: dtype.size))
