"""GPUStack 2.3's built-in observability, and the supported way to get vram-exporter into it.

What GPUStack's own prerun code (gpustack/cmd/prerun.py, run here in GPUStack's venv) writes at each
start: the built-in Prometheus's config, rewritten whole from a fixed template (no rule_files, no
scrape_config_files: a job added there is lost at the next start), and Grafana's datasource file; files
of ours beside it in the provisioning directory survive. Our own Prometheus (examples/gpustack/) keeps
GPUStack's jobs and adds ours: its config, built on the one GPUStack generates, loads in the real
Prometheus, which scrapes a running exporter and loads the shipped rules.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT, ExporterProcess, free_port, require_tool
from test_e2e_prometheus import Server, wait_for
from test_gpustack_live import gpustack_python

PROVISIONING = ROOT / "grafana" / "provisioning"
DASHBOARDS = ROOT / "grafana" / "dashboards"
EXAMPLE = ROOT / "examples" / "gpustack" / "prometheus.yml"


@pytest.fixture(scope="module")
def prerun(tmp_path_factory):
    out = tmp_path_factory.mktemp("prerun")
    done = subprocess.run([str(gpustack_python()), str(ROOT / "tests" / "gpustack_live" / "prerun_observability.py"),
                           str(out), str(PROVISIONING)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_gpustack_rewrites_its_prometheus_config_at_every_start_without_a_hook(prerun):
    first = (prerun / "first" / "prometheus.yml").read_text()
    assert (prerun / "second" / "prometheus.yml").read_text() == first  # the same template, whatever was there
    config = yaml.safe_load(first)
    assert not {"rule_files", "scrape_config_files"} & set(config)
    assert {job["job_name"] for job in config["scrape_configs"]} >= {
        "gpustack-worker-discovery", "gpustack-proxy-worker-discovery", "gpustack-server"}


def test_our_provisioning_files_survive_a_restart_gpustacks_are_rewritten(prerun):
    provisioning = prerun / "provisioning"
    for path in PROVISIONING.rglob("*.yaml"):
        assert (provisioning / path.relative_to(PROVISIONING)).read_text() == path.read_text()
    gpustack = yaml.safe_load((provisioning / "datasources" / "datasource.yaml").read_text())
    assert "edited by hand" not in (provisioning / "datasources" / "datasource.yaml").read_text()
    (builtin,) = gpustack["datasources"]
    ours = yaml.safe_load((PROVISIONING / "datasources" / "vram-exporter.yaml").read_text())["datasources"]
    # Two data sources side by side in one Grafana: names and UIDs must differ, and only GPUStack's is default.
    assert {d["name"] for d in ours}.isdisjoint({builtin["name"]}) and {d["uid"] for d in ours}.isdisjoint(
        {builtin["uid"]})
    assert builtin["isDefault"] is True and not any(d.get("isDefault") for d in ours)


def test_provisioning_files_are_grafanas_format_and_name_the_dashboards():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "vram-exporter.yaml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"] == "${VRAM_EXPORTER_PROMETHEUS_URL}"  # Grafana expands it from its environment
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "vram-exporter.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    # GPUStack's image provisions every dashboard under /etc/dashboards itself: ours must live elsewhere.
    assert not provider["options"]["path"].startswith("/etc/dashboards")
    uids = [json.loads(path.read_text())["uid"] for path in sorted(DASHBOARDS.glob("*.json"))]
    assert uids == ["vram-gpu-memory", "vram-model-fit"]  # fixed: links and bookmarks outlive re-provisioning


def test_example_keeps_gpustacks_jobs_as_gpustack_generates_them(prerun):
    generated = {job["job_name"]: job for job in yaml.safe_load(
        (prerun / "first" / "prometheus.yml").read_text())["scrape_configs"]}
    example = {job["job_name"]: job for job in yaml.safe_load(EXAMPLE.read_text())["scrape_configs"]}
    for name in ("gpustack-worker-discovery", "gpustack-server"):
        ours, theirs = example[name], generated[name]
        # The same job, with the GPUStack server's address for 127.0.0.1.
        assert yaml.safe_dump(ours).replace("gpustack-server:", "127.0.0.1:").replace("'", "") == \
            yaml.safe_dump(theirs).replace("'", ""), name


def test_config_built_on_gpustacks_loads_and_scrapes_the_exporter(prerun, tmp_path):
    promtool, prometheus = require_tool("promtool"), require_tool("prometheus")
    exporter = ExporterProcess("--nvml.fixture", str(ROOT / "examples" / "seed" / "fixture.yaml"),
                               "--manifest", str(ROOT / "examples" / "seed" / "manifest.yaml"))
    config = yaml.safe_load((prerun / "first" / "prometheus.yml").read_text())
    example = yaml.safe_load(EXAMPLE.read_text())
    (job,) = [job for job in example["scrape_configs"] if job["job_name"] == "vram-exporter"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"instance": "gpu-node-1"}}]
    job["scrape_interval"] = "1s"
    config["rule_files"] = example["rule_files"]
    config["scrape_configs"].append(job)
    shutil.copy(ROOT / "alerts" / "vram-exporter.rules.yml", tmp_path / "vram-exporter.rules.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    checked = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    port = free_port()
    server = Server([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                     f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                    port, "/-/ready")
    try:
        def seed_series():
            result = server.get_json("/api/v1/query", query='vram_gpu_memory_total_bytes{job="vram-exporter"}')
            return result["data"]["result"]
        (sample,) = wait_for(seed_series, 30, "Prometheus did not scrape the exporter")
        assert sample["metric"]["instance"] == "gpu-node-1" and sample["value"][1] == "6436159488"
        groups = server.get_json("/api/v1/rules")["data"]["groups"]
        assert "vram-exporter" in {group["name"] for group in groups}
        jobs = {t["labels"]["job"] for t in server.get_json("/api/v1/targets")["data"]["activeTargets"]}
        assert {"gpustack-server", "vram-exporter"} <= jobs  # GPUStack's jobs kept beside ours
    finally:
        server.stop()
        exporter.stop()
