"""Where the instances booked against used come from (sources/gpustack_usage.py, sources/manifest_usage.py):
GPUStack's records, a distributed instance's subordinate part included, or a manifest's running models that
say how their processes are known; and reading them never takes the scrape down."""

from __future__ import annotations

import pytest

from conftest import ROOT
from fake_proc import FakeProcess, write_proc
from vram_exporter.rules.node import placed_claims
from vram_exporter.rules.usage import Instance
from vram_exporter.sources import gpustack_usage
from vram_exporter.sources.fake_nvml import FakeNvml
from vram_exporter.sources.gpustack_api import GpuStackState, ModelInstance, Worker
from vram_exporter.sources.gpustack_usage import instances_on, read_usage
from vram_exporter.sources.manifest import load_manifest
from vram_exporter.sources.manifest_usage import manifest_instances, read_manifest_usage
from vram_exporter.sources.nvml import NvmlReader
from vram_exporter.sources.yamlfile import InputFileError

GIB = 1 << 30
EXAMPLE = ROOT / "examples" / "booked-vs-used"


@pytest.fixture(scope="module")
def snapshot():
    return NvmlReader(FakeNvml.watching(EXAMPLE / "fixture.yaml"), proc_root=None).read()


def test_4210_on_a_subordinate_worker_the_instance_is_its_part_there_known_by_the_subordinates_marks():
    """#4210, distributed: worker 2 serves as a subordinate. Its bookings are the subordinate's claims, and its
    processes are known by the subordinate's pid and ports only: the main worker's pid is in another host's
    PID namespace (a process of the same number here is someone else's)."""
    workers = tuple(Worker.model_validate({"id": n, "name": f"w{n}", "state": "ready"}) for n in (1, 2))
    inst = ModelInstance.model_validate({
        "id": 7, "name": "llama-70b-x", "model_id": 1, "model_name": "llama-70b", "state": "running",
        "worker_id": 1, "pid": 4242, "port": 40000, "gpu_indexes": [0, 1],
        "computed_resource_claim": {"vram": {"0": 36 * GIB, "1": 36 * GIB}},
        "distributed_servers": {"subordinate_workers": [{
            "worker_id": 2, "pid": 515, "ports": [40100, 40101], "gpu_indexes": [0, 1], "state": "running",
            "computed_resource_claim": {"vram": {"0": 30 * GIB, "1": 31 * GIB}}}]}})
    state = GpuStackState(workers, (), (inst,))
    part = Instance("llama-70b-x", "llama-70b", "running", {0: 30 * GIB, 1: 31 * GIB}, frozenset({515}),
                    frozenset({40100, 40101}))
    assert instances_on(workers[1], state) == (part,)
    assert instances_on(workers[0], state)[0].claims == {0: 36 * GIB, 1: 36 * GIB}


def test_a_manifests_running_models_book_what_the_rules_say_and_are_known_as_it_says(snapshot):
    manifest = load_manifest(EXAMPLE / "manifest.yaml")
    found = {inst.name: inst for inst in manifest_instances(manifest, snapshot)}
    specs = {model.name: model for model in manifest.models}
    gpus = [gpu for gpu in snapshot.gpus if gpu.up]
    for name, inst in found.items():
        assert inst.claims == placed_claims(specs[name], manifest.cluster, gpus) and inst.state == "running"
    assert (found["qwen2.5-7b-instruct"].ports, found["qwen2.5-7b-instruct"].cmdline) == (frozenset({8001}), None)
    assert found["llama-3.1-8b-instruct"].cmdline == "/models/llama-3.1-8b-instruct"
    assert not found["phi-3.5-mini-instruct"].watched and found["mistral-7b-v0.1"].watched


def test_a_manifest_where_no_model_says_processes_computes_nothing(tmp_path, snapshot):
    text = (EXAMPLE / "manifest.yaml").read_text().replace("    processes:", "    # processes:")
    (tmp_path / "m.yaml").write_text(text)
    manifest = load_manifest(tmp_path / "m.yaml")
    assert manifest_instances(manifest, snapshot) == ()
    assert read_manifest_usage(manifest, snapshot, EXAMPLE / "proc") is None


def test_the_examples_processes_are_attributed_through_their_command_lines(snapshot):
    usage = read_manifest_usage(load_manifest(EXAMPLE / "manifest.yaml"), snapshot, EXAMPLE / "proc")
    assert usage.owners == {4101: "qwen2.5-7b-instruct", 4201: "llama-3.1-8b-instruct"}
    assert usage.gpus[1].unattributed == 26 * GIB  # phi (not known) and the notebook


@pytest.mark.parametrize(("processes", "message"), [
    ("{}", "processes needs ports, cmdline or both"),
    ("{ports: [70000]}", "less than or equal to 65535"),
    ("{cmdline: ''}", "at least 1 character"),
    ("{ports: [8000], pids: [12]}", "pids"),
])
def test_processes_is_checked_where_it_is_written(tmp_path, processes, message):
    text = (EXAMPLE / "manifest.yaml").read_text().replace("{ports: [8001]}", processes)
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(InputFileError, match=message):
        load_manifest(tmp_path / "m.yaml")


def test_processes_need_a_running_model(tmp_path):
    text = (EXAMPLE / "manifest.yaml").read_text().replace("    placed_on: [0]\n    processes: {ports: [8001]}",
                                                           "    processes: {ports: [8001]}")
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(InputFileError, match="it needs placed_on"):
        load_manifest(tmp_path / "m.yaml")


def test_a_proc_of_a_form_not_foreseen_costs_the_attribution_never_the_scrape(tmp_path, snapshot, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("something /proc made the reader trip over")

    monkeypatch.setattr(gpustack_usage, "read_tree", broken)
    qwen = Instance("q", "q", "running", {0: GIB}, ports=frozenset({8001}))
    usage = read_usage(snapshot, [qwen], write_proc(tmp_path, [FakeProcess(4101, 1)]))
    assert usage.owners == {} and usage.gpus[0].unattributed == 72 * GIB
    assert "counts as nobody's" in caplog.text
