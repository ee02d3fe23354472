"""deploy/kubernetes: what a GPU node's exporter needs, and the PrometheusRule in sync with alerts/."""

from __future__ import annotations

import sys

import yaml

from conftest import ROOT

K8S = ROOT / "deploy" / "kubernetes"
sys.path.insert(0, str(ROOT / "tools"))
from sync_prometheusrule import prometheus_rule  # noqa: E402


def documents(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((K8S / name).read_text())}


def test_prometheusrule_is_generated_from_alerts():
    assert (K8S / "prometheusrule.yaml").read_text() == prometheus_rule(), "run tools/sync_prometheusrule.py"
    groups = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())["spec"]["groups"]
    assert groups == yaml.safe_load((ROOT / "alerts" / "vram-exporter.rules.yml").read_text())["groups"]


def test_daemonset_runs_non_root_read_only_with_nvidia_runtime():
    ds = documents("daemonset.yaml")["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
    assert "--manifest=/etc/vram-exporter/manifest.yaml" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/healthy"


def test_manifest_configmap_is_a_valid_manifest(tmp_path):
    from vram_exporter.config import load_manifest

    data = documents("daemonset.yaml")["ConfigMap"]["data"]["manifest.yaml"]
    (tmp_path / "manifest.yaml").write_text(data)
    load_manifest(tmp_path / "manifest.yaml")


def test_service_monitor_scrapes_the_metrics_port_as_job_vram_exporter():
    docs = documents("service.yaml")
    assert docs["Service"]["spec"]["clusterIP"] == "None"
    monitor = docs["ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert docs["Service"]["metadata"]["labels"]["app.kubernetes.io/name"] == "vram-exporter"
