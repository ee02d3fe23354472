"""Writes deploy/kubernetes/prometheusrule.yaml from alerts/vram-exporter.rules.yml (a test keeps them in sync).

Usage: python tools/sync_prometheusrule.py
"""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def prometheus_rule() -> str:
    groups = yaml.safe_load((ROOT / "alerts" / "vram-exporter.rules.yml").read_text())["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "vram-exporter", "namespace": "monitoring",
                     "labels": {"app.kubernetes.io/name": "vram-exporter"}},
        "spec": {"groups": groups},
    }
    return ("# Generated from alerts/vram-exporter.rules.yml by tools/sync_prometheusrule.py: do not edit.\n"
            + yaml.safe_dump(resource, sort_keys=False, width=120))


if __name__ == "__main__":
    (ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml").write_text(prometheus_rule())
