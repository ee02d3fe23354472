"""The shipped rules with the real promtool: they load, every alert fires and stays silent where it
should (tests/promtool/rules.test.yml), and each has what a person paged at 3 a.m. needs."""

from __future__ import annotations

import re
import subprocess

import yaml

from conftest import GOLDEN, ROOT, require_tool

RULES = ROOT / "alerts" / "vram-exporter.rules.yml"
UNIT_TESTS = ROOT / "tests" / "promtool" / "rules.test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
DESIGN_ALERTS = {"VRAMModelUnschedulable", "VRAMModelWillNotStart", "VRAMNoFeasibleMemoryUtilization",
                 "VRAMUtilizationMismatch", "VRAMGPUMemoryNearlyFull", "VRAMGPUUnavailable",
                 "VRAMExporterCollectFailing", "VRAMManifestReloadFailed"}


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups if group["name"] == "vram-exporter" for rule in group["rules"]]


def test_promtool_check_rules():
    result = subprocess.run([require_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = subprocess.run([require_tool("promtool"), "test", "rules", str(UNIT_TESTS)],
                            capture_output=True, text=True, cwd=UNIT_TESTS.parent)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_design_alerts_exist_in_the_vram_exporter_group():
    assert DESIGN_ALERTS <= {a["alert"] for a in alerts()}


def test_every_alert_has_severity_summary_description_and_a_runbook_section():
    anchors = {"#" + re.sub(r"[^a-z0-9]", "", line[3:].lower()) for line in RUNBOOKS.read_text().splitlines()
               if line.startswith("## ")}
    for alert in alerts():
        name = alert["alert"]
        assert re.fullmatch(r"VRAM[A-Z][A-Za-z]+", name), name
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert alert.get("for"), name
        notes = alert["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(notes), name
        assert "{{" in notes["description"], f"{name}: description is not templated"
        assert notes["runbook_url"] == f"docs/runbooks.md#{name.lower()}", name
        assert f"#{name.lower()}" in anchors, f"{name} has no section in docs/runbooks.md"


def test_every_alert_is_exercised_by_a_promtool_test():
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    firing = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case["exp_alerts"]}
    assert {a["alert"] for a in alerts()} <= firing


def test_rules_only_use_metrics_the_exporter_exports():
    exported = set()
    for golden in GOLDEN.glob("*.prom"):
        exported |= set(re.findall(r"^# TYPE (\S+)", golden.read_text(), re.M))
        exported |= set(re.findall(r"^(vram_\w+)", golden.read_text(), re.M))
    # The series beside a running vLLM appear only with one answering (tests/sources/test_vllm_instance.py's end-to-end
    # test reads them from the real process): take their names from the families the exporter renders.
    from vram_exporter.present import vllm_instances

    exported |= {f.name for f in vllm_instances.families([])} | {vllm_instances.up_family({}).name}
    used = set(re.findall(r"(?<![:\w])vram_[a-z_]+(?![:\w])", RULES.read_text()))  # not recorded names
    assert used - exported == set()


def test_example_configs_are_valid_for_the_real_tools(tmp_path):
    import shutil

    shutil.copy(ROOT / "examples" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / "vram-exporter.rules.yml")
    result = subprocess.run([require_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    result = subprocess.run([require_tool("amtool"), "check-config", str(ROOT / "examples" / "alertmanager.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
