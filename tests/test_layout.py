"""The one-way layout: only nvml.py imports pynvml, only the HTTP edges import aiohttp, and the
rulebooks (fit/) import neither, nor anything that does I/O."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "vram_exporter"
HTTP_EDGES = {"server.py", "gpustack_client.py", "vllm_client.py"}


def imports_of(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_only_nvml_imports_pynvml():
    offenders = [p.name for p in modules() if "pynvml" in imports_of(p) and p.name != "nvml.py"]
    assert offenders == []


def test_only_the_http_edges_import_aiohttp():
    offenders = [p.name for p in modules() if "aiohttp" in imports_of(p) and p.name not in HTTP_EDGES]
    assert offenders == []


def test_rulebooks_are_pure():
    forbidden = {"pynvml", "aiohttp", "prometheus_client", "yaml", "pydantic", "os", "pathlib", "subprocess",
                 "socket", "asyncio", "time", "logging"}
    for path in (PACKAGE / "fit").glob("*.py"):
        assert imports_of(path) & forbidden == set(), path.name
