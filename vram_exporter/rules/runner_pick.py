"""Which engine version a model runs, chosen as GPUStack 2.3.0 chooses it (docs/rulebooks.md#engine-versions).

An instance's version, in GPUStack's order of knowledge:
1. what the running engine answers on its ``/version`` (the instance's ``api_detected_backend_version``,
   gpustack/worker/runtime_metrics_aggregator.py::fetch_and_update_api_backend_version); where the exporter
   reads a running vLLM itself (a model's ``metrics_url``, sources/vllm_client.py), its own answer on
   ``/version`` at this step (``running``), before GPUStack's: the same answer, read now, where GPUStack keeps
   the first it read and never asks again;
2. the version GPUStack resolved when it deployed the instance (the instance's ``backend_version``) or the
   model's ``backend_version`` (a version the user picked, or the one GPUStack wrote back at the first
   deploy: base.py::_update_model_backend_service_version);
3. with the version left on "Auto": the runner GPUStack picks for the worker's CUDA
   (gpustack/worker/backends/base.py::_resolve_image): among gpustack-runner's CUDA builds that ship the
   backend (deprecated ones left out), the newest not above the host's CUDA
   (gpustack/utils/version.py::pick_runtime_version), and of that build its newest engine version.

``RUNNERS`` is gpustack-runner 0.1.31.post4's list (the version gpustack 2.3.0 pins; its
gpustack_runner/runner.py.json, CUDA, linux/amd64, not deprecated): CUDA build -> the newest engine
version of that build. tests/rules/test_runner_pick.py checks it and ``pick_runtime_version`` against
GPUStack's own code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cmp_to_key

from . import backends
from .model import EngineVersion

RUNNERS: Mapping[str, Mapping[str, str]] = {
    "vllm": {"12.8": "0.17.1", "12.9": "0.32.0", "13.0": "0.32.0"},
    "sglang": {"12.8": "0.5.9", "12.9": "0.5.18", "13.0": "0.5.22"},
}
RUNNER_PACKAGE = "gpustack-runner 0.1.31.post4"

# Where a running engine answers its version, on the server of its /metrics: GPUStack's BackendVersionAPI
# (gpustack/worker/runtime_metrics_client.py) for the engines whose answer is read here. vLLM serves
# ``GET /version`` -> ``{"version": "0.34.0"}`` beside ``/metrics`` (vllm/entrypoints/serve/instrumentator/
# basic.py::show_version, registered with the metrics route by register_instrumentator_api_routers; read in
# 0.17.1 and 0.34.0). SGLang's get_server_info is not read (no SGLang instance is read at all).
VERSION_PATHS: Mapping[str, str] = {backends.VLLM: "version"}

# What a running engine's answer must look like to be taken as its version: a release our rules can order
# ("0.34.0", "0.11.0rc1", "0.34.1.dev3+g1a2b3c", "v0.17.1"); vLLM answers "dev" where its _version.py is missing
# (vllm/version.py), and a proxy or GPUStack's router may answer anything.
_VERSION = re.compile(r"v?[0-9]+\.[0-9]+[0-9A-Za-z.+_-]{0,48}")

# The version whose rules apply where none is known (the rules' own reference versions); a custom
# backend has none: it runs whatever its command runs.
ASSUMED: Mapping[str, str] = {"vllm": "0.33", "sglang": "0.5.9"}


def compare_versions(a: str | None, b: str | None) -> int:
    """gpustack_runtime's tolerant compare (deployer/__utils__.py::compare_versions): -1, 0 or 1.
    Dot-separated parts; digits compare as numbers, alpha/beta/rc before a release, other text by
    its characters; a missing part is 0; a leading "v" is ignored."""
    a, b = (a or "").removeprefix("v"), (b or "").removeprefix("v")
    if a == b:
        return 0
    left, right = _explode(a), _explode(b)
    width = max(len(left), len(right))
    left += [0] * (width - len(left))
    right += [0] * (width - len(right))
    for x, y in zip(left, right):
        if isinstance(x, list) != isinstance(y, list):
            x, y = (x, [y]) if isinstance(x, list) else ([x], y)
        if x < y:
            return -1
        if x > y:
            return 1
    return 0


_PRE_RELEASE = (("alpha", -3), ("beta", -2), ("rc", -1))


def _explode(version: str) -> list:
    parts: list = []
    for part in version.replace("-", ".").replace("_", ".").replace("+", ".").split("."):
        if part.isdigit():
            parts.append(int(part))
            continue
        rank = next(((r, part[len(p):]) for p, r in _PRE_RELEASE if part.startswith(p)), None)
        parts.append([rank[0], *map(ord, rank[1])] if rank else [ord(c) for c in part])
    return parts


def _major(version: str) -> str:
    return version.removeprefix("v").split(".", 1)[0]


def pick_runtime_version(candidates: Iterable[str], host: str | None) -> str | None:
    """GPUStack's pick among runner builds for a host runtime (gpustack/utils/version.py): no host
    version, the newest; else the newest not above the host; else (all newer) the newest of the host's
    major, else the oldest; no candidates, None."""
    ordered = sorted(candidates, key=cmp_to_key(compare_versions), reverse=True)
    if not ordered:
        return None
    if not host:
        return ordered[0]
    for candidate in ordered:
        if compare_versions(candidate, host) <= 0:
            return candidate
    return next((c for c in ordered if _major(c) == _major(host)), ordered[-1])


def runner_version(backend: str, cuda: str | None) -> EngineVersion | None:
    """The engine version of the runner GPUStack picks for ``cuda`` (None: not detected), or None
    where gpustack-runner ships no runner for the backend (Custom)."""
    builds = RUNNERS.get(backend)
    if not builds:
        return None
    if len(builds) == 1:  # base.py: "Return directly if there is only one versioned backend"
        build = next(iter(builds))
    else:
        build = pick_runtime_version(builds, cuda)
    host = f"CUDA {cuda}" if cuda else "no CUDA version known: the newest"
    return EngineVersion(builds[build], f"GPUStack's runner for {host} (cuda{build}, {RUNNER_PACKAGE})")


def choose(backend: str, *, detected: str | None = None, deployed: str | None = None, chosen: str | None = None,
           cuda: str | None = None, cuda_known: bool = True) -> EngineVersion:
    """The version a verdict assumes for a model of ``backend``, in GPUStack's order (module docstring).
    ``detected``: what the running engine answers; ``deployed``: the instance's backend_version;
    ``chosen``: the model's backend_version; ``cuda``: the worker's CUDA version (``cuda_known`` False:
    nothing says it, and the runner pick is not made)."""
    if detected and not is_version(detected):  # an engine's own word for a build ("dev"): said, not used
        found = choose(backend, deployed=deployed, chosen=chosen, cuda=cuda, cuda_known=cuda_known)
        return EngineVersion(found.version, f"{found.why} (the running engine reports {detected!r}: not a "
                                            "version, ignored)")
    if detected:
        return EngineVersion(detected.removeprefix("v"), "the running engine reports it")
    if deployed:
        return EngineVersion(deployed, "the version GPUStack deployed the instance with")
    if chosen:
        return EngineVersion(chosen, "the model's backend_version")
    if cuda_known:
        picked = runner_version(backend, cuda)
        if picked is not None:
            return picked
    return unknown(backend)


def is_version(text: str) -> bool:
    """Whether a running engine's answer is a version the rules can use (``_VERSION``)."""
    return _VERSION.fullmatch(text) is not None


def running(backend: str, current: EngineVersion | None, answered: str | None, not_a_version: str | None = None
            ) -> EngineVersion | None:
    """A model's version once its running engine was asked (step 1, before whatever ``current`` came from):
    ``answered``, the version it answered on its version path (``VERSION_PATHS``; a leading "v" dropped, as
    the rules read "X.Y"); else ``current``, with ``not_a_version`` (what it answered instead, in words) said
    and ignored: the next source decides."""
    engine = backends.of(backend).display_name
    path = VERSION_PATHS.get(backend, "version")
    if answered:
        return EngineVersion(answered.removeprefix("v"), f"the running {engine} answered {answered} on /{path}")
    if not_a_version and current is not None:
        return EngineVersion(current.version, f"{current.why} (the running {engine} answered {not_a_version} "
                                              f"on /{path}: not a version, ignored)")
    return current


def unknown(backend: str) -> EngineVersion:
    """Said, not guessed: the version is not known and the rules of the reference version apply."""
    reference = ASSUMED.get(backend)
    if reference is None:
        return EngineVersion("unknown", "version unknown: a custom backend runs its own command")
    engine = backends.of(backend).display_name
    return EngineVersion(reference, f"version unknown: the rules of {engine} {reference} are assumed")
