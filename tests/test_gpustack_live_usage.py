"""Booked against used, end to end: a real GPUStack 2.3.0 decides and books, an NVML fixture and a /proc of our
own stand for the engines its worker would have started, a real Prometheus evaluates the shipped alerts.

The instances are made ``running`` with a pid and a port through GPUStack's own API, as its worker does
(serve_manager.py's patch after it starts the provisioning process). Their engines are written into the /proc
the exporter reads (``--processes.proc-root``) as GPUStack 2.3.0 runs them: in a container, on the host
network, under containerd's shim rather than under the recorded pid (rules/usage.py). One node, two GPUs:

- GPU 0: ``big`` (g = 0.5) holds 20 GiB, beside ``small`` (g = 0.3), which has no process: the overrun of
  GPUStack #3034 and the claim without a process of #5513;
- GPU 1: ``embed`` and ``rerank`` pinned at g = 0.6 each (booked 1.2 x the card: #4703), and 3 GiB held by a
  process of nobody (#4151). ``embed`` runs as a plain process under its recorded pid; ``rerank``'s GPU
  process is a container-mate of its listener, not its child.

Then each cause is removed and each alert must resolve.
"""

from __future__ import annotations

import shutil
import time

import pytest

from conftest import ExporterProcess, free_port, require_tool
from fake_proc import FakeProcess, write_proc
from gpustack_live.harness import GIB, MIB, wait_for
from test_e2e_prometheus import Server, shortened_rules
from test_explain_page import chromium, keep, screenshot
from test_gpustack_live import QWEN_1_5B, QWEN_1_5B_WEIGHTS, live, samples  # noqa: F401 - live: the server fixture

pytestmark = pytest.mark.gpustack_live

GPU_MIB = 24564
TOTAL = GPU_MIB * MIB
CONTAINER_BIG, CONTAINER_SMALL, CONTAINER_RERANK = ("b1" * 32, "5a" * 32, "7e" * 32)
PORTS = {"big": 40001, "small": 40002, "embed": 40003, "rerank": 40004}
EMBED_PID = 2000
NOBODY_RED = (0xB0, 0x00, 0x20)  # present/page_usage.py: memory of no instance
ALERTS = ("VRAMInstanceOverrun", "VRAMClaimWithoutProcess", "VRAMMemoryOfNoInstance", "VRAMGPUOverbooked")


def engines(small_started: bool) -> list[FakeProcess]:
    """The process trees GPUStack's worker leaves on the node (pids in the host's namespace)."""
    procs = [
        FakeProcess(900, 1, "containerd-shim"),
        FakeProcess(1000, 900, "vllm", CONTAINER_BIG, ports=(PORTS["big"],),
                    argv=("vllm", "serve", "/models/big", "--port", str(PORTS["big"]))),
        FakeProcess(1002, 1000, "VLLM::EngineCor", CONTAINER_BIG),
        FakeProcess(EMBED_PID, 1, "python3"),
        FakeProcess(2001, EMBED_PID, "VLLM::EngineCor"),
        FakeProcess(901, 1, "containerd-shim"),
        FakeProcess(1100, 901, "vllm", CONTAINER_RERANK, ports=(PORTS["rerank"],)),
        FakeProcess(1101, 901, "ray::RayWorker", CONTAINER_RERANK),
        FakeProcess(3000, 1, "python3"),
    ]
    if small_started:
        procs += [FakeProcess(902, 1, "containerd-shim"),
                  FakeProcess(1200, 902, "vllm", CONTAINER_SMALL, argv=("vllm", "serve", "--port", str(PORTS["small"]))),
                  FakeProcess(1202, 1200, "VLLM::EngineCor", CONTAINER_SMALL)]
    return procs


def nvml(worker, gpu0: list[tuple[int, int]], gpu1: list[tuple[int, int]]) -> str:
    lines = ["driver_version: 580.159.04", "gpus:"]
    for index, processes in enumerate((gpu0, gpu1)):
        used = sum(size for _, size in processes)
        lines += [f"- index: {index}", "  name: NVIDIA Made-Up GPU", f"  uuid: {worker.gpu_uuid(index)}",
                  f"  pci_bus_id: '00000000:{index + 1:02x}:00.0'",
                  f"  memory: {{total: {TOTAL}, reserved: 0, used: {used}, free: {TOTAL - used}}}",
                  "  processes: [" + ", ".join(f"{{pid: {pid}, name: p{pid}, used: {size}}}"
                                               for pid, size in processes) + "]"]
    return "\n".join(lines) + "\n"


def run(live, instance: dict, **fields) -> None:
    """What GPUStack's worker patches once it started an instance."""
    live.server.request("PUT", f"/v2/model-instances/{instance['id']}", {**instance, **fields})


@pytest.fixture(scope="module")
def node(live, tmp_path_factory):
    work = tmp_path_factory.mktemp("usage")
    cluster = live.cluster("usage")
    worker = live.worker(cluster, "usage-node", [GPU_MIB, GPU_MIB])
    path = live.model("usage-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS)
    models = {}
    for name, gpu, fraction in (("big", 0, 0.5), ("small", 0, 0.3), ("embed", 1, 0.6), ("rerank", 1, 0.6)):
        models[name] = live.server.create_model(cluster, name, path, gpu_ids=[f"usage-node:cuda:{gpu}"],
                                                backend_parameters=[f"--gpu-memory-utilization={fraction}"])
    instances = {name: live.server.instances(model_id)[0] for name, model_id in models.items()}
    assert all(i["state"] == "scheduled" for i in instances.values()), instances
    for name, inst in instances.items():
        run(live, inst, state="running", port=PORTS[name], ports=[PORTS[name]],
            pid=EMBED_PID if name == "embed" else 4242 + inst["id"])  # the provisioning process, long gone
    wait_for(lambda: all(i["state"] == "running" for i in live.server.instances()
                         if i["model_id"] in models.values()), "the instances running")
    names = {name: live.server.instances(model_id)[0]["name"] for name, model_id in models.items()}
    proc, fixture = work / "proc", work / "nvml.yaml"
    write_proc(proc, engines(small_started=False))
    fixture.write_text(nvml(worker, [(1002, 20 * GIB)], [(2001, 10 * GIB), (1101, 10 * GIB), (3000, 3 * GIB)]))
    exporter = ExporterProcess("--gpustack.url", live.server.url, "--gpustack.api-key-file", str(live.key_file),
                               "--gpustack.worker-name", "usage-node", "--gpustack.refresh-interval", "1",
                               "--nvml.fixture", str(fixture), "--processes.proc-root", str(proc))
    wait_for(lambda: "vram_instance_booked_bytes" in exporter.text(), "the exporter's first GPUStack view")
    yield {"worker": worker, "models": models, "names": names, "proc": proc, "fixture": fixture,
           "exporter": exporter, "work": work}
    exporter.stop()


def by_instance(text: str, family: str) -> dict[tuple[str, str], float]:
    return {(dict(labels)["model_instance"], dict(labels)["gpu"]): value
            for labels, value in samples(text, family).items()}


def by_gpu(text: str, family: str) -> dict[str, float]:
    return {dict(labels)["gpu"]: value for labels, value in samples(text, family).items()}


def test_each_instance_is_booked_and_used_side_by_side(node):
    text, n = node["exporter"].text(), node["names"]
    assert by_instance(text, "vram_instance_booked_bytes") == {
        (n["big"], "0"): int(0.5 * TOTAL), (n["small"], "0"): int(0.3 * TOTAL),
        (n["embed"], "1"): int(0.6 * TOTAL), (n["rerank"], "1"): int(0.6 * TOTAL)}
    assert by_instance(text, "vram_instance_used_bytes") == {
        (n["big"], "0"): 20 * GIB, (n["small"], "0"): 0, (n["embed"], "1"): 10 * GIB, (n["rerank"], "1"): 10 * GIB}
    assert by_gpu(text, "vram_gpu_unattributed_used_bytes") == {"0": 0, "1": 3 * GIB}


def test_the_four_verdicts(node):
    text, n = node["exporter"].text(), node["names"]
    overrun = by_instance(text, "vram_instance_overrun")
    assert {key for key, value in overrun.items() if value} == {(n["big"], "0")}
    idle = by_instance(text, "vram_instance_claim_idle")
    assert {key for key, value in idle.items() if value} == {(n["small"], "0")}
    assert by_gpu(text, "vram_gpu_idle_claimed_bytes") == {"0": int(0.3 * TOTAL), "1": 0}
    assert by_gpu(text, "vram_gpu_overbooked") == {"0": 0, "1": 1}


def test_the_page_opens_with_the_node_at_a_glance(node, update_golden):
    """In headless Chromium: each GPU's booked and used bars, big's overrun named, the model list below."""
    n = node["names"]
    dom = chromium("--dump-dom", node["exporter"].url + "/").stdout
    glance = dom[dom.index("This node at a glance"):dom.index("<h2>Models</h2>")]
    assert all(n[name] in glance for name in ("big", "small", "embed", "rerank"))
    assert "uses more than booked" in glance and "booked, no process here" in glance
    assert "more than the card" in glance  # GPU 1: embed and rerank at 0.6 each
    assert dom.count("GPUStack placed it and does not re-check a placed instance") >= 1
    shot = node["work"] / "glance.png"
    colours = screenshot(node["exporter"].url + "/", shot, "1200,900")
    assert colours.get(NOBODY_RED, 0) > 200, "GPU 1's memory of no instance is not drawn"
    keep(shot, "explain-usage.png", update_golden)


def test_each_alert_fires_in_prometheus_and_resolves_when_its_cause_goes(node, live):
    prometheus = require_tool("prometheus")
    work = node["work"]
    shortened_rules(work / "rules.yml")
    port = free_port()
    config = (f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{work / 'rules.yml'}']\n"
              "scrape_configs:\n- job_name: vram-exporter\n  static_configs:\n"
              f"  - targets: ['127.0.0.1:{node['exporter'].port}']\n    labels: {{instance: usage-node}}\n")
    (work / "prometheus.yml").write_text(config)
    prom = Server([prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{port}"], port, "/-/ready")
    try:
        def firing() -> set[tuple[str, str]]:
            alerts = prom.get_json("/api/v1/alerts")["data"]["alerts"]
            return {(a["labels"]["alertname"], a["labels"].get("model_instance") or a["labels"]["gpu"])
                    for a in alerts if a["state"] == "firing" and a["labels"]["alertname"] in ALERTS}

        n = node["names"]
        expected = {("VRAMInstanceOverrun", n["big"]), ("VRAMClaimWithoutProcess", n["small"]),
                    ("VRAMMemoryOfNoInstance", "1"), ("VRAMGPUOverbooked", "1")}
        wait_for(lambda: firing() == expected, "the four alerts firing", timeout=120)

        # The causes go: big back inside its booking, small's engine up, the stray process ended, rerank deleted.
        shutil.rmtree(node["proc"])
        write_proc(node["proc"], engines(small_started=True))
        # rerank's engine goes with its model: left on the card it would hold memory of no instance.
        node["fixture"].write_text(nvml(node["worker"], [(1002, 10 * GIB), (1202, 6 * GIB)], [(2001, 10 * GIB)]))
        live.server.request("DELETE", f"/v2/models/{node['models']['rerank']}")
        try:
            wait_for(lambda: firing() == set(), "every alert resolved", timeout=120)
        except TimeoutError:
            pytest.fail(f"still firing: {firing()}; exporter:\n{node['exporter'].text()}")
        text = node["exporter"].text()
        assert by_instance(text, "vram_instance_used_bytes")[(n["small"], "0")] == 6 * GIB
    finally:
        prom.stop()
