"""Fleet scale: GPUStack's cluster-wide series exported once per fleet, not once per node.

Every exporter reading the same GPUStack server computes the same cluster view. A node exporter with
--gpustack.cluster-series=skip keeps its own series (GPUs, its worker, its models' fit) and leaves the
cluster-wide ones to one exporter: a node's with the default `export`, or a cluster-only exporter
(--no-collector.nvml) on a host that is not a GPU node. Run against GPUStack's recorded API.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT

RECORDED = ROOT / "tests" / "fixtures" / "gpustack"
CLUSTER_FAMILIES = {"vram_model_gpustack_replicas", "vram_model_gpustack_pending_instances",
                    "vram_model_predicted_pending_instances", "vram_model_size_known"}


def series(body: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def names(samples: dict[tuple, float]) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def node_args(recorded_gpustack):
    return ("--nvml.fixture", str(RECORDED / "nvml-error-node.yaml"), "--manifest", str(RECORDED / "overlay.yaml"),
            "--gpustack.url", recorded_gpustack.url, "--gpustack.worker-name", "error-node")


def test_skip_leaves_out_only_the_cluster_series(start_exporter, node_args):
    exporting = series(start_exporter(*node_args).text())
    skipping = series(start_exporter(*node_args, "--gpustack.cluster-series", "skip").text())
    assert CLUSTER_FAMILIES <= names(exporting)
    assert not CLUSTER_FAMILIES & names(skipping)
    # Everything of this node stays: its GPUs, its worker, its models' fit, the exporter's own series.
    assert names(exporting) - names(skipping) == CLUSTER_FAMILIES
    for name in ("vram_gpu_memory_total_bytes", "vram_gpustack_worker_info", "vram_gpu_gpustack_allocated_bytes",
                 "vram_model_schedulable", "vram_model_headroom_bytes"):
        assert name in names(skipping), name
    volatile = {"vram_exporter_collect_duration_seconds", "vram_exporter_gpustack_last_success_timestamp_seconds",
                "vram_exporter_manifest_last_reload_success_timestamp_seconds"}
    assert ({k: v for k, v in skipping.items() if k[0] not in volatile}
            == {k: v for k, v in exporting.items() if k[0] not in CLUSTER_FAMILIES | volatile})


def test_cluster_only_exporter_exports_the_same_cluster_series_and_nothing_of_a_node(start_exporter, node_args,
                                                                                    recorded_gpustack):
    node = series(start_exporter(*node_args).text())
    # On a host that is no GPU node: no GPU, no worker, no node fit.
    exporter = start_exporter("--no-collector.nvml", "--manifest", str(RECORDED / "overlay.yaml"),
                              "--gpustack.url", recorded_gpustack.url)
    cluster = series(exporter.text())
    assert {k: v for k, v in cluster.items() if k[0] in CLUSTER_FAMILIES} == \
        {k: v for k, v in node.items() if k[0] in CLUSTER_FAMILIES}
    assert not {n for n in names(cluster) if n.startswith("vram_gpu")}
    assert not {n for n in names(cluster) if n.startswith("vram_model_") and n not in CLUSTER_FAMILIES}
    collectors = {dict(labels)["collector"] for name, labels in cluster if name == "vram_exporter_collect_success"}
    assert collectors == {"fit", "gpustack"}  # no nvml collector, so VRAMExporterCollectFailing cannot fire for it
    assert cluster[("vram_exporter_collect_success", (("collector", "gpustack"),))] == 1
    assert "no GPUStack worker is named" not in exporter.output()  # it looks for none


@pytest.mark.parametrize("argv, message", [
    (["--no-collector.nvml"], "--no-collector.nvml is a cluster-only exporter: it needs --gpustack.url"),
    (["--no-collector.nvml", "--gpustack.url", "http://127.0.0.1:9", "--gpustack.cluster-series", "skip"],
     "not with --gpustack.cluster-series=skip"),
    (["--no-collector.nvml", "--gpustack.url", "http://127.0.0.1:9", "--nvml.fixture", "x.yaml"],
     "--nvml.fixture and --no-collector.nvml contradict each other"),
    (["--no-collector.nvml", "--gpustack.url", "http://127.0.0.1:9", "--gpustack.worker-name", "gpu-1"],
     "--gpustack.worker-name and --no-collector.nvml contradict each other"),
])
def test_contradicting_fleet_flags_exit_2(argv, message, capsys):
    from vram_exporter.cli import EXIT_BAD_INPUT, main

    assert main(argv) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
