"""The house's one-way layout (docs/architecture.md).

The package has wings stacked by the direction of data; a module imports only its own wing and those below:

    ground   errors, units, snapshot, filestamp   shared vocabulary
    rules    pure: GPUStack's scheduler and the engines' memory rules (one folder per backend)
    sources  the outside world -> frozen values (NVML, manifest, GPUStack, vLLM)
    present  values -> bytes (metric catalogue, collector, renderer, report, pages)
    app      time, threads, HTTP (plan, exporter, server, web)
    cli      flags -> serve | check | capture

Only sources/nvml.py imports pynvml, only the HTTP edges import aiohttp, rules/ does no I/O, nothing imports
inside a function to dodge a circle, and only rules/backends/ names a backend.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT


PACKAGE = ROOT / "vram_exporter"
GROUND = {"errors", "units", "snapshot", "filestamp", "__init__"}
WINGS = ("ground", "rules", "sources", "present", "app", "cli")
HTTP_EDGES = {"app/server.py", "sources/gpustack_client.py", "sources/vllm_client.py"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def dotted(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["vram_exporter", *parts])


def wing_of(module: str) -> str:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top in GROUND:
        return "ground"
    assert top in WINGS, f"{module}: {top} is in no wing"
    return top


def imported(path: Path, *, top_level_only: bool = False) -> list[tuple[str, int, bool]]:
    """(absolute module, line, inside a function) for every import of ``path``, names of modules included."""
    tree = ast.parse(path.read_text())
    package = dotted(path) if path.name == "__init__.py" else dotted(path).rsplit(".", 1)[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # annotations only, never executed
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([child.module] if child.module else []))
                found.append((base, child.lineno, in_function))
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    if _is_module(candidate):
                        found.append((candidate, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [f for f in found if not (top_level_only and f[2])]


def _is_type_checking(test) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _is_module(name: str) -> bool:
    if not name.startswith("vram_exporter"):
        return False
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def own_imports(path: Path) -> list[tuple[str, int, bool]]:
    return [(m, line, inner) for m, line, inner in imported(path) if m.startswith("vram_exporter")]


def externals(path: Path) -> set[str]:
    return {m.split(".")[0] for m, _, _ in imported(path) if not m.startswith("vram_exporter") and m}


def test_every_module_lives_in_a_wing():
    for path in modules():
        wing_of(dotted(path))


def test_imports_go_one_way():
    upward = []
    for path in modules():
        mine = WINGS.index(wing_of(dotted(path)))
        for module, line, _ in own_imports(path):
            if module == "vram_exporter":
                continue  # the package's face: __version__
            if WINGS.index(wing_of(module)) > mine:
                upward.append(f"{rel(path)}:{line} imports {module}")
    assert upward == []


def test_no_circle_between_modules():
    graph = {dotted(p): {m for m, _, _ in own_imports(p) if m != "vram_exporter" and _is_module(m)} for p in modules()}
    # A package is reached through its __init__: an import of a submodule runs its parents first.
    circles = []
    state: dict[str, int] = {}

    def walk(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    assert circles == []


def test_no_import_inside_a_function_within_the_package():
    """A late import of our own module hides a circle or a wrong direction; cli.py alone imports its
    subcommands late (a `check` needs no aiohttp)."""
    late = [f"{rel(p)}:{line} {m}" for p in modules() if rel(p) != "cli.py"
            for m, line, inner in own_imports(p) if inner]
    assert late == []


def test_only_nvml_imports_pynvml():
    offenders = [rel(p) for p in modules() if "pynvml" in externals(p) and rel(p) != "sources/nvml.py"]
    assert offenders == []


def test_only_the_http_edges_import_aiohttp():
    offenders = [rel(p) for p in modules() if "aiohttp" in externals(p) and rel(p) not in HTTP_EDGES]
    assert offenders == []


def test_rules_are_pure():
    forbidden = {"pynvml", "aiohttp", "prometheus_client", "yaml", "pydantic", "os", "pathlib", "subprocess",
                 "socket", "asyncio", "time", "logging", "threading"}
    rules = list((PACKAGE / "rules").rglob("*.py"))
    assert len(rules) > 10
    for path in rules:
        assert externals(path) & forbidden == set(), rel(path)


BACKEND_TEST = re.compile(r"""\bbackend\s*(==|!=)|==\s*["'](vllm|sglang|custom)["']|\bbackend\s+(not\s+)?in\s""")


def test_only_rules_backends_names_a_backend():
    offenders = []
    for path in modules():
        if rel(path).startswith("rules/backends/"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if BACKEND_TEST.search(code):
                offenders.append(f"{rel(path)}:{number}: {line.strip()}")
    assert offenders == []


def test_a_backend_folder_has_the_same_shape_as_the_others():
    folders = sorted(p for p in (PACKAGE / "rules" / "backends").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert [p.name for p in folders] == ["custom", "sglang", "vllm"]
    for folder in folders:
        names = {p.name for p in folder.glob("*.py")}
        assert {"__init__.py", "selector.py", "fit.py"} <= names, folder.name


def test_docstrings_point_inside_the_repository():
    """Every file a docstring or comment names as ours exists (no DESIGN.md outside the repository)."""
    missing = []
    pattern = re.compile(r"\b((?:docs|tests|conformance|benchmarks|tools|examples|alerts|grafana|deploy)/[\w./-]+\.\w+)")
    for path in modules():
        text = path.read_text()
        if "DESIGN.md" in text:
            missing.append(f"{rel(path)}: DESIGN.md")
        for name in pattern.findall(text):
            if ".." in name:
                continue  # a range of files (run-1..6.json)
            if not (ROOT / name.rstrip(".")).exists():
                missing.append(f"{rel(path)}: {name}")
    assert missing == []


def test_tests_mirror_the_wings():
    for wing in ("rules", "sources", "present", "app"):
        assert list((ROOT / "tests" / wing).glob("test_*.py")), wing
