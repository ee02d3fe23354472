"""GPUStack 2.3.0's own version pick (gpustack==2.3.0 and gpustack-runner 0.1.31.post4 in .venv-gpustack)
against rules/runner_pick.py: ``pick_runtime_version`` and ``compare_versions`` on random runner lists and host
versions, and the whole of ``_resolve_image`` (the real method, its runner list, no overrides) for a model on
"Auto" on many host CUDA versions."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from conftest import ROOT
from test_backend_conformance import gpustack_python
from vram_exporter.rules import runner_pick

# Runs in .venv-gpustack: every case through GPUStack's own functions.
_ORACLE = r"""
import json, sys
from types import SimpleNamespace
from gpustack.utils.version import pick_runtime_version
from gpustack.utils.version import compare_versions
from gpustack.worker.backends.base import InferenceServer

class _Server(InferenceServer):
    def start(self):
        pass

def resolve(service, cuda):
    server = object.__new__(_Server)
    server._model = SimpleNamespace(image_name=None, backend=service, backend_version=None)
    server.inference_backend = None
    server._get_device_info = lambda: ("cuda", cuda, None)
    server._fetch_runner_overrides = lambda: []
    return server._resolve_image()[1]

cases = json.load(sys.stdin)
print(json.dumps({
    "pick": [pick_runtime_version(c["candidates"], c["host"]) for c in cases["pick"]],
    "compare": [compare_versions(a, b) for a, b in cases["compare"]],
    "resolve": [resolve(service, cuda) for service, cuda in cases["resolve"]],
}))
"""

_POOL = ["11.8", "12.0", "12.1", "12.4", "12.6", "12.8", "12.9", "13.0", "13.1", "14.0", "v12.8", "12.8.1",
         "12", "13", "8.1.RC1.alpha003", "8.1.rc1", "8.0.beta1", "9.2", "6.2.4", "12.9-1", "7.0.alpha1"]
_HOSTS = [None, "", "12.8", "12.9", "13.0", "12.6", "11.8", "13.2", "14.1", "12", "v12.9", "12.8.0", "12.10",
          "8.1.RC1", "12.4.1", "9"]


def _cases(seed: int, n: int) -> dict:
    rng = random.Random(seed)
    pick = [{"candidates": rng.sample(_POOL, rng.randint(0, 6)), "host": rng.choice(_HOSTS)} for _ in range(n)]
    compare = [(rng.choice(_POOL + _HOSTS[1:]), rng.choice(_POOL + _HOSTS[1:])) for _ in range(n)]
    resolve = [(service, cuda) for service in ("vllm", "sglang", "custom") for cuda in _HOSTS]
    return {"pick": pick, "compare": compare, "resolve": resolve}


@pytest.fixture(scope="module")
def gpustack_answers():
    cases = _cases(seed=21, n=400)
    run = subprocess.run([str(gpustack_python()), "-c", _ORACLE], input=json.dumps(cases), capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-4000:]
    return cases, json.loads(run.stdout.strip().splitlines()[-1])


def test_pick_runtime_version_agrees(gpustack_answers):
    cases, theirs = gpustack_answers
    ours = [runner_pick.pick_runtime_version(c["candidates"], c["host"]) for c in cases["pick"]]
    disagree = [(c, o, t) for c, o, t in zip(cases["pick"], ours, theirs["pick"]) if o != t]
    assert not disagree, disagree[:5]
    assert len(set(theirs["pick"])) > 5  # the cases reach the pick's every branch, not one answer


def test_compare_versions_agrees(gpustack_answers):
    cases, theirs = gpustack_answers
    ours = [runner_pick.compare_versions(a, b) for a, b in cases["compare"]]
    assert ours == theirs["compare"]


def test_runner_version_is_gpustacks_resolve_image(gpustack_answers):
    """The version GPUStack's worker deploys a model on "Auto" with, from its runner list, per host CUDA."""
    cases, theirs = gpustack_answers
    for (service, cuda), version in zip(cases["resolve"], theirs["resolve"]):
        picked = runner_pick.runner_version(service, cuda or None)
        assert (picked.version if picked else None) == version, (service, cuda)


def test_issue_table():
    """The table of issue 21, as `check` says it."""
    assert {cuda: (runner_pick.runner_version("vllm", cuda).version, runner_pick.runner_version("sglang", cuda).version)
            for cuda in ("12.8", "12.9", "13.0", "13.1")} == {
        "12.8": ("0.17.1", "0.5.9"), "12.9": ("0.32.0", "0.5.18"), "13.0": ("0.32.0", "0.5.22"),
        "13.1": ("0.32.0", "0.5.22")}
    assert runner_pick.runner_version("vllm", "12.8").why == "GPUStack's runner for CUDA 12.8 (cuda12.8, " \
                                                             "gpustack-runner 0.1.31.post4)"


def test_choose_follows_gpustacks_order():
    assert runner_pick.choose("vllm", detected="0.18.0", deployed="0.17.1", chosen="0.20.2", cuda="13.0") \
        == runner_pick.EngineVersion("0.18.0", "the running engine reports it")
    assert runner_pick.choose("vllm", deployed="0.17.1", chosen="0.20.2", cuda="13.0").version == "0.17.1"
    assert runner_pick.choose("sglang", chosen="0.5.6.post2", cuda="13.0").version == "0.5.6.post2"
    assert runner_pick.choose("sglang", cuda="12.9").version == "0.5.18"
    unknown = runner_pick.choose("vllm", cuda_known=False)
    assert unknown.why.startswith("version unknown: the rules of vLLM ")
    assert runner_pick.choose("custom", cuda="13.0").why.startswith("version unknown")


def test_a_detected_answer_that_is_no_version_is_said_and_the_next_source_decides():
    """GPUStack stores whatever the engine answered on /version: "dev" must not become the rules' version."""
    found = runner_pick.choose("vllm", detected="dev", deployed="0.32.0", cuda="12.8")
    assert found.version == "0.32.0"
    assert "'dev': not a version, ignored" in found.why
    assert runner_pick.choose("vllm", detected="v0.34.0").version == "0.34.0"
