"""End to end against a real GPUStack 2.3.0 server: its scheduler decides, our exporter predicts.

One server (PostgreSQL 15 + gpustack in its own virtual environment, all on 127.0.0.1) holds one
cluster per scenario. Workers with made-up GPUs register through GPUStack's API; models are created
one by one and GPUStack's decision awaited; then a real ``vram-exporter`` process per worker reads the
same server through ``--gpustack.url`` and must agree with GPUStack on every model (pending instances)
and on every GPU (our claimed bytes against GPUStack's ``memory.allocated``). Run by ``make
test-gpustack`` (part of .ci/run); how the server runs without GPUs: docs/gpustack-live.md.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, ExporterProcess, free_port
from gpustack_live.harness import (GIB, GpuStackServer, Postgres, Worker, WorkerFiles, model_dir, nvml_fixture,
                                   wait_for)

pytestmark = pytest.mark.gpustack_live

QWEN_1_5B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_size": 1536, "intermediate_size": 8960,
             "vocab_size": 151936, "torch_dtype": "bfloat16", "max_position_embeddings": 32768,
             "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True}
QWEN_1_5B_WEIGHTS = 3087467144
QWEN_7B = {**QWEN_1_5B, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
           "intermediate_size": 18944, "vocab_size": 152064, "tie_word_embeddings": False}
QWEN_7B_WEIGHTS = 15231233024


def gpustack_python() -> Path:
    python = Path(os.environ.get("GPUSTACK_PYTHON", ROOT / ".venv-gpustack" / "bin" / "python"))
    if not python.exists():
        pytest.fail(f"{python} is missing: `make test-gpustack` installs gpustack==2.3.0 in .venv-gpustack")
    return python


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpustack")
    os.chmod(work, 0o755)  # PostgreSQL runs as `postgres` and must reach its directory
    for parent in work.parents:
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o005)
    postgres = Postgres(work, free_port())
    files = WorkerFiles()
    server = None
    try:
        database = postgres.start()
        server = GpuStackServer(gpustack_python(), work, database, free_port(), free_port())
        server.wait_ready()
        key_file = work / "api-key"
        key_file.write_text(server.api_key() + "\n")
        yield Live(server, work, key_file, files.port)
        if record := os.environ.get("GPUSTACK_RECORD"):  # refresh tests/fixtures/gpustack (see its README)
            record_api(server, Path(record))
    finally:
        if server is not None:
            server.stop()
        postgres.stop()
        files.stop()
        shutil.rmtree(work / "pg", ignore_errors=True)


def record_api(server: GpuStackServer, directory: Path) -> None:
    """The server's answers, for the unit tests that replay them without a server."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    for kind in ("workers", "models", "model-instances"):
        document = server.request("GET", f"/v2/{kind}?perPage=100")
        (directory / f"{kind}.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


class Live:
    def __init__(self, server: GpuStackServer, work: Path, key_file: Path, files_port: int) -> None:
        self.server, self.work, self.key_file, self.files_port = server, work, key_file, files_port
        self.models = work / "models"

    def model(self, name: str, config: dict, weights: int) -> Path:
        return model_dir(self.models, name, config, weights)

    def cluster(self, name: str) -> int:
        return self.server.create_cluster(name)

    def worker(self, cluster_id: int, name: str, gpu_mib: list[int], reserved_gib: int = 0) -> Worker:
        return self.server.register_worker(cluster_id, name, gpu_mib, reserved_gib, port=self.files_port)

    def exporter(self, worker: Worker | None, *extra: str) -> ExporterProcess:
        args = ["--gpustack.url", self.server.url, "--gpustack.api-key-file", str(self.key_file), *extra]
        fixture = self.work / f"nvml-{worker.name if worker else 'none'}.yaml"
        fixture.write_text(nvml_fixture(worker) if worker else "driver_version: 580.159.04\ngpus: []\n")
        args += ["--nvml.fixture", str(fixture)]
        if worker is not None:
            args += ["--gpustack.worker-name", worker.name]
        return ExporterProcess(*args)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{labels: value} of one metric in an exposition."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            labels = tuple(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            found[labels] = float(match.group(2))
    return found


def by_model(text: str, name: str) -> dict[str, float]:
    return {dict(labels)["model"]: value for labels, value in samples(text, name).items()}


def gpustack_pending(server: GpuStackServer, model_id: int) -> int:
    return sum(1 for inst in server.instances(model_id) if inst["state"] == "pending")


def allocated(server: GpuStackServer, worker: Worker) -> dict[str, int]:
    answer = server.request("GET", f"/v2/workers/{worker.id}")
    return {str(gpu["index"]): gpu["memory"]["allocated"] for gpu in answer["status"]["gpu_devices"]}


def assert_agrees(live: Live, worker: Worker, models: dict[str, int]) -> str:
    """The exporter playing ``worker`` agrees with GPUStack on every model and every GPU."""
    exporter = live.exporter(worker)
    try:
        text = exporter.text()
    finally:
        log = exporter.stop()
    assert samples(text, "vram_exporter_collect_success")[(("collector", "gpustack"),)] == 1, log
    actual, predicted = by_model(text, "vram_model_gpustack_pending_instances"), by_model(
        text, "vram_model_predicted_pending_instances")
    for name, model_id in models.items():
        truth = gpustack_pending(live.server, model_id)
        assert actual[name] == truth, f"{name}: exporter read {actual[name]} pending, the API says {truth}"
        assert predicted[name] == truth, f"{name}: predicted {predicted[name]} pending, GPUStack left {truth}"
    claimed = {dict(labels)["gpu"]: value for labels, value in samples(text, "vram_gpu_claimed_bytes").items()}
    theirs = {dict(labels)["gpu"]: value
              for labels, value in samples(text, "vram_gpu_gpustack_allocated_bytes").items()}
    assert theirs == allocated(live.server, worker)
    assert claimed == theirs, "our claimed bytes per GPU differ from GPUStack's memory.allocated"
    return text


def test_seed_scenario_pending_as_gpustack_decides(live):
    """docs/design.md#the-seed-scenario-worked: 6138 MiB card, 1 GiB reserved, g = 0.9: GPUStack leaves it Pending."""
    cluster = live.cluster("seed")
    worker = live.worker(cluster, "seed-node", [6138], reserved_gib=1)
    model_id = live.server.create_model(cluster, "seed-qwen", live.model("seed-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS),
                                        backend_parameters=["--gpu-memory-utilization=0.9"])
    assert gpustack_pending(live.server, model_id) == 1
    text = assert_agrees(live, worker, {"seed-qwen": model_id})
    assert by_model(text, "vram_model_schedulable") == {"seed-qwen": 0}
    assert by_model(text, "vram_model_estimate_bytes")["seed-qwen"] == int(QWEN_1_5B_WEIGHTS * 1.2) + 2 * GIB
    state_message = live.server.instances(model_id)[0]["state_message"]
    assert "only has 4.99 GiB allocatable VRAM (83.32%)" in state_message


def test_reservation_makes_the_difference(live):
    """The same model at g = 0.95: placed on a worker reserving nothing, Pending where 1 GiB is reserved."""
    path = live.model("reserve-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS)
    outcomes = {}
    for reserved in (0, 1):
        cluster = live.cluster(f"reserve-{reserved}")
        worker = live.worker(cluster, f"reserve-{reserved}-node", [6138], reserved_gib=reserved)
        name = f"reserve-{reserved}-qwen"
        model_id = live.server.create_model(cluster, name, path, backend_parameters=["--gpu-memory-utilization=0.95"])
        outcomes[reserved] = gpustack_pending(live.server, model_id)
        assert_agrees(live, worker, {name: model_id})
    assert outcomes == {0: 0, 1: 1}


def test_second_replica_no_longer_fits(live):
    """Two replicas at g = 0.9 on one 24564 MiB card: the first takes 90 %, the second stays Pending."""
    cluster = live.cluster("replicas")
    worker = live.worker(cluster, "replicas-node", [24564])
    model_id = live.server.create_model(cluster, "replica-qwen", live.model("replica-qwen", QWEN_1_5B,
                                                                            QWEN_1_5B_WEIGHTS), replicas=2)
    assert sorted(i["state"] for i in live.server.instances(model_id)) == ["pending", "scheduled"]
    text = assert_agrees(live, worker, {"replica-qwen": model_id})
    assert by_model(text, "vram_model_gpustack_replicas")["replica-qwen"] == 2


def test_tensor_parallel_across_two_gpus(live):
    """A 7B model too big for one 12 GiB GPU at g = 0.9 is split over both GPUs of the worker."""
    cluster = live.cluster("tp")
    worker = live.worker(cluster, "tp-node", [12288, 12288])
    model_id = live.server.create_model(cluster, "tp-qwen7b", live.model("tp-qwen7b", QWEN_7B, QWEN_7B_WEIGHTS))
    [instance] = live.server.instances(model_id)
    assert instance["state"] == "scheduled" and sorted(instance["gpu_indexes"]) == [0, 1]
    assert_agrees(live, worker, {"tp-qwen7b": model_id})


def test_manual_pinning_overcommits(live):
    """Pinned to GPU 0 with one replica, GPUStack accepts the model although both its tests fail there;
    a second model, not pinned, then finds no room and stays Pending."""
    cluster = live.cluster("pinning")
    worker = live.worker(cluster, "pin-node", [6138], reserved_gib=1)
    path = live.model("pin-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS)
    pinned = live.server.create_model(cluster, "pin-qwen", path, gpu_ids=["pin-node:cuda:0"])
    free = live.server.create_model(cluster, "pin-other", path, backend_parameters=["--gpu-memory-utilization=0.05"],
                                    env={"GPUSTACK_MODEL_VRAM_CLAIM": str(200 * 2**20)})
    assert gpustack_pending(live.server, pinned) == 0
    text = assert_agrees(live, worker, {"pin-qwen": pinned, "pin-other": free})
    assert gpustack_pending(live.server, free) == 1


def test_error_instance_keeps_its_claim(live):
    """An instance in state error still holds its claim: the next model does not get that GPU."""
    cluster = live.cluster("error")
    worker = live.worker(cluster, "error-node", [24564])
    path = live.model("error-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS)
    first = live.server.create_model(cluster, "error-first", path)
    [instance] = live.server.instances(first)
    live.server.request("PUT", f"/v2/model-instances/{instance['id']}",
                        {**instance, "state": "error", "state_message": "made to fail by the test"})
    wait_for(lambda: live.server.instances(first)[0]["state"] == "error", "the instance in state error")
    second = live.server.create_model(cluster, "error-second", path)
    assert gpustack_pending(live.server, second) == 1
    assert_agrees(live, worker, {"error-first": first, "error-second": second})


def test_underscore_spelling_is_not_read_by_gpustack(live):
    """--gpu_memory_utilization=0.95 is vLLM's spelling only: GPUStack keeps 0.9 and leaves the model
    Pending where 0.95 would have placed it (the reserve-0 worker above)."""
    cluster = live.cluster("underscore")
    worker = live.worker(cluster, "underscore-node", [6138])
    model_id = live.server.create_model(cluster, "underscore-qwen",
                                        live.model("underscore-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS),
                                        backend_parameters=["--gpu_memory_utilization=0.95"])
    assert gpustack_pending(live.server, model_id) == 1
    text = assert_agrees(live, worker, {"underscore-qwen": model_id})
    readers = {dict(labels)["reader"]: value
               for labels, value in samples(text, "vram_model_gpu_memory_utilization").items()}
    assert readers == {"gpustack": 0.9, "vllm": 0.95}


def test_url_and_key_alone_show_every_model(live):
    """No worker name, no manifest: the exporter still shows GPUStack's verdict and ours for every model."""
    cluster = live.cluster("alone")
    live.worker(cluster, "alone-node", [6138])
    live.server.create_model(cluster, "alone-qwen", live.model("alone-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS))
    names = {m["name"] for m in live.server.request("GET", "/v2/models?perPage=100")["items"]}
    exporter = live.exporter(None)
    try:
        text = exporter.text()
    finally:
        exporter.stop()
    assert set(by_model(text, "vram_model_gpustack_pending_instances")) == names
    assert set(by_model(text, "vram_model_predicted_pending_instances")) == names
    assert by_model(text, "vram_model_gpustack_pending_instances") == by_model(
        text, "vram_model_predicted_pending_instances")


# --- issue 14: every path GPUStack's placement takes ------------------------------------------------

MISTRAL_NEMO = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "num_hidden_layers": 40,
                "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 5120, "head_dim": 128,
                "intermediate_size": 14336, "vocab_size": 131072, "torch_dtype": "bfloat16",
                "max_position_embeddings": 1024000}
NEMO_SHARD = 12_247_076_864  # Mistral-Nemo-Instruct-2407: 24.5 GB in shards, the same again consolidated


def _agree_everywhere(live: Live, workers: list[Worker], models: dict[str, int]) -> None:
    for worker in workers:
        assert_agrees(live, worker, models)


def test_local_directory_counts_consolidated_safetensors(live):
    """Point 1: from a local directory GPUStack counts consolidated.safetensors beside the shards
    (calculator.py::calculate_llm_model_weight_size), so the model needs twice its weights."""
    cluster = live.cluster("consolidated")
    worker = live.worker(cluster, "consolidated-node", [49140])
    files = {"model-00001-of-00002.safetensors": NEMO_SHARD, "model-00002-of-00002.safetensors": NEMO_SHARD,
             "consolidated.safetensors": 2 * NEMO_SHARD}
    path = model_dir(live.models, "nemo-consolidated", MISTRAL_NEMO, 0, files)
    model_id = live.server.create_model(cluster, "nemo-consolidated", path)
    assert gpustack_pending(live.server, model_id) == 1
    assert "requires approximately 56.75 GiB" in live.server.instances(model_id)[0]["state_message"]
    assert_agrees(live, worker, {"nemo-consolidated": model_id})


def test_one_gpu_per_replica_across_workers_and_no_overcommit_for_replicas(live):
    """Point 2: three replicas pinned to three GPUs of two workers take one each (gpus_per_replica 1,
    spread); two replicas pinned to two GPUs too small for them both stay Pending ("manual scheduling for
    multi-replica model instances does not allow overcommit")."""
    cluster = live.cluster("pin-replicas")
    one = live.worker(cluster, "pinrep-a", [24564, 24564])
    two = live.worker(cluster, "pinrep-b", [24564])
    path = live.model("pinrep-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS)
    three = live.server.create_model(cluster, "pinrep-three", path, replicas=3,
                                     backend_parameters=["--gpu-memory-utilization=0.3"],
                                     gpu_ids=["pinrep-a:cuda:0", "pinrep-a:cuda:1", "pinrep-b:cuda:0"])
    placed = sorted((i["worker_id"], tuple(i["gpu_indexes"])) for i in live.server.instances(three))
    assert placed == sorted([(one.id, (0,)), (one.id, (1,)), (two.id, (0,))])
    small = live.worker(cluster, "pinrep-small", [6138, 6138], reserved_gib=1)
    refused = live.server.create_model(cluster, "pinrep-refused", path, replicas=2,
                                       gpu_ids=["pinrep-small:cuda:0", "pinrep-small:cuda:1"])
    assert gpustack_pending(live.server, refused) == 2
    assert "does not allow overcommit" in live.server.instances(refused)[0]["state_message"]
    _agree_everywhere(live, [one, two, small], {"pinrep-three": three, "pinrep-refused": refused})


def test_selector_with_fewer_gpus_than_the_world_size(live):
    """Point 3: TP 2 with one GPU selected: gpus_per_replica becomes 2 and one GPU can never hold it."""
    cluster = live.cluster("pin-fewer")
    worker = live.worker(cluster, "pinfewer-node", [24564, 24564])
    model_id = live.server.create_model(cluster, "pinfewer-qwen", live.model("pinfewer-qwen", QWEN_1_5B,
                                                                             QWEN_1_5B_WEIGHTS),
                                        backend_parameters=["--tensor-parallel-size=2"],
                                        gpu_ids=["pinfewer-node:cuda:0"])
    assert gpustack_pending(live.server, model_id) == 1
    text = assert_agrees(live, worker, {"pinfewer-qwen": model_id})
    assert by_model(text, "vram_model_predicted_pending_instances")["pinfewer-qwen"] == 1


def test_pending_model_spread_over_two_workers_on_the_next_check(live):
    """Point 5: a 7B model too big for either 16 GiB worker alone waits while a small model holds one of
    them; once that is deleted we predict GPUStack's next check spreads it over both workers, and forcing
    that check (deleting the pending instance) shows GPUStack doing exactly that."""
    cluster = live.cluster("spread")
    workers = [live.worker(cluster, f"spread-{n}", [16384]) for n in ("a", "b")]
    small = live.server.create_model(cluster, "spread-small", live.model("spread-small", QWEN_1_5B, QWEN_1_5B_WEIGHTS))
    big = live.server.create_model(cluster, "spread-big", live.model("spread-big", QWEN_7B, QWEN_7B_WEIGHTS))
    assert gpustack_pending(live.server, big) == 1
    _agree_everywhere(live, workers, {"spread-small": small, "spread-big": big})
    live.server.request("DELETE", f"/v2/models/{small}")
    wait_for(lambda: not live.server.instances(small), "the small model's instance gone")
    exporter = live.exporter(workers[0])
    try:
        text = exporter.text()
    finally:
        exporter.stop()
    assert by_model(text, "vram_model_predicted_pending_instances")["spread-big"] == 0
    # Point 4: GPUStack's claims stay GPUStack's; what the predicted placement adds has its own series.
    predicted = {dict(labels)["gpu"]: value for labels, value in samples(text, "vram_gpu_predicted_claim_bytes").items()}
    assert predicted == {"0": int(16384 * 2**20 * 0.9)}
    assert samples(text, "vram_gpu_claimed_bytes") == {(("gpu", "0"), ("uuid", workers[0].gpu_uuid(0))): 0}
    [pending] = live.server.instances(big)
    live.server.request("DELETE", f"/v2/model-instances/{pending['id']}")
    wait_for(lambda: live.server.decided(big, 1) and live.server.instances(big)[0]["id"] != pending["id"],
             "GPUStack's new decision on spread-big")
    [placed] = live.server.instances(big)
    assert placed["state"] == "scheduled"
    assert len((placed.get("distributed_servers") or {}).get("subordinate_workers") or []) == 1
    _agree_everywhere(live, workers, {"spread-big": big})


def test_binpack_and_spread_choose_different_gpus(live):
    """Point 6: two small models on a two-GPU worker: spread puts the second on the empty GPU, binpack on
    the fuller one; a third model's verdict depends on that choice and we predict it either way."""
    for strategy, expect_same_gpu in (("spread", False), ("binpack", True)):
        cluster = live.cluster(f"strategy-{strategy}")
        worker = live.worker(cluster, f"strategy-{strategy}-node", [24564, 24564])
        path = live.model(f"strategy-{strategy}-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS)
        ids = {}
        for n in range(2):
            name = f"strategy-{strategy}-{n}"
            ids[name] = live.server.create_model(cluster, name, path, placement_strategy=strategy,
                                                 backend_parameters=["--gpu-memory-utilization=0.4"])
        gpus = [tuple(live.server.instances(i)[0]["gpu_indexes"]) for i in ids.values()]
        assert (gpus[0] == gpus[1]) is expect_same_gpu, gpus
        big = f"strategy-{strategy}-big"
        ids[big] = live.server.create_model(cluster, big, path, backend_parameters=["--gpu-memory-utilization=0.7"])
        assert gpustack_pending(live.server, ids[big]) == (0 if expect_same_gpu else 1)
        assert_agrees(live, worker, ids)


LIVE_SCENARIOS = int(os.environ.get("GPUSTACK_LIVE_SCENARIOS", "3"))
LIVE_SEED = int(os.environ.get("GPUSTACK_LIVE_SEED", "14"))


@pytest.mark.parametrize("number", range(LIVE_SCENARIOS))
def test_random_clusters_agree_on_every_model_and_gpu(live, number):
    """Random clusters nobody hand-made (conformance/cluster_run.py's generator, a fixed seed): workers
    register, models are created one by one, and an exporter per worker must agree with GPUStack on every
    model's pending instances and every GPU's claims. `make test-gpustack-random` runs more of them."""
    import random
    import sys

    sys.path.insert(0, str(ROOT / "conformance"))
    from cluster_run import scenario

    spec, _ = scenario(random.Random(LIVE_SEED * 1000 + number), number)
    prefix = f"r{LIVE_SEED}-{number}"
    cluster = live.cluster(prefix)
    names = {w["name"]: f"{prefix}-{w['name']}" for w in spec["workers"]}
    workers = [live.worker(cluster, names[w["name"]], [t // 2**20 for t in w["gpus"]], w["system_reserved"] // GIB)
               for w in spec["workers"]]
    models = {}
    for m in spec["models"]:
        name = f"{prefix}-{m['name']}"
        path = model_dir(live.models, name, m["config"], 0, m["files"])
        gpu_ids = [names[i.split(":")[0]] + i[i.index(":"):] for i in m.get("gpu_ids", [])] or None
        models[name] = live.server.create_model(
            cluster, name, path, replicas=m["replicas"], backend_parameters=m["params"], env=m.get("env"),
            gpu_ids=gpu_ids, placement_strategy=m["strategy"], distributed=m.get("distributed"))
    _agree_everywhere(live, workers, models)
