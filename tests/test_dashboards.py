"""Dashboards as code: the committed JSON is what grafana/build.py makes (no drift), and each
dashboard has what a platform engineer filters by. Queries are run for real in test_e2e_prometheus."""

from __future__ import annotations

import importlib.util
import json
import re

from conftest import ROOT

DASHBOARDS = ROOT / "grafana" / "dashboards"


def load_builder():
    spec = importlib.util.spec_from_file_location("grafana_build", ROOT / "grafana" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_committed_json_matches_the_code():
    build = load_builder()
    for name, make in build.DASHBOARDS.items():
        committed = (DASHBOARDS / name).read_text()
        assert committed == build.render(make()), f"{name} drifted: run `python grafana/build.py` and commit"


def test_every_dashboard_has_the_filters_and_a_datasource_variable():
    for path in DASHBOARDS.glob("*.json"):
        board = json.loads(path.read_text())
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[:4] == ["datasource", "job", "instance", "gpu"], path.name
        for panel in panels(board):
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert "$job" in target["expr"] or "ALERTS" in target["expr"], (panel["title"], target["expr"])


def test_model_fit_dashboard_covers_the_catalogue():
    board = json.loads((DASHBOARDS / "vram-model-fit.json").read_text())
    exprs = " ".join(t["expr"] for p in panels(board) for t in p["targets"])
    for metric in ("vram_model_schedulable", "vram_model_startable", "vram_model_headroom_bytes",
                   "vram_model_gpu_memory_utilization_min", "vram_model_gpu_memory_utilization_max",
                   "vram_model_max_model_len_tokens", "vram_model_fix_info", "ALERTS"):
        assert metric in exprs, metric
    assert "model" in [v["name"] for v in board["templating"]["list"]]


def test_gpu_dashboard_shows_the_memory_stack_and_processes():
    board = json.loads((DASHBOARDS / "vram-gpu-memory.json").read_text())
    exprs = " ".join(t["expr"] for p in panels(board) for t in p["targets"])
    for metric in ("vram_gpu_memory_reserved_bytes", "vram_gpu_memory_used_bytes", "vram_gpu_memory_free_bytes",
                   "vram_gpu_system_reserved_bytes", "vram_gpu_claimed_bytes", "vram_gpu_allocatable_bytes",
                   "vram_gpu_process_memory_used_bytes"):
        assert re.search(rf"\b{metric}\b", exprs), metric


def test_gpu_dashboard_shows_booked_against_used():
    board = json.loads((DASHBOARDS / "vram-gpu-memory.json").read_text())
    exprs = " ".join(t["expr"] for p in panels(board) for t in p["targets"])
    for metric in ("vram_instance_booked_bytes", "vram_instance_used_bytes", "vram_instance_overrun",
                   "vram_instance_claim_idle", "vram_gpu_unattributed_used_bytes", "vram_gpu_idle_claimed_bytes",
                   "vram_gpu_overbooked"):
        assert re.search(rf"\b{metric}\b", exprs), metric
