"""End to end with the real servers from Debian's packages: three exporter processes stand for three
GPU nodes (different fixtures, one shared manifest), Prometheus scrapes them with the shipped rules,
Alertmanager configured like examples/alertmanager.yml delivers to a webhook receiver in this test.

Only timings are shortened for the test: scrape and evaluation every second, every alert's `for`
at 1s, Alertmanager's group waits at 1s. Expressions, labels and annotations are the shipped ones.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, ExporterProcess, free_port, require_tool

E2E = ROOT / "tests" / "e2e"
NODES = ("a", "b", "c")


class WebhookReceiver:
    """Collects what Alertmanager posts."""

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, status: str | None = None) -> list[dict]:
        found = [alert for n in list(self.notifications) for alert in n["alerts"]]
        return [a for a in found if status is None or a["status"] == status]

    def close(self) -> None:
        self.server.shutdown()


class Server:
    """A Debian-packaged server process on a free loopback port, stopped at the end."""

    def __init__(self, args: list[str], port: int, ready_path: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: _ok(self.url + ready_path), 60, f"{args[0]} did not become ready")

    def get_json(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(predicate, timeout: float, message: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(message)


def shortened_rules(target: Path) -> None:
    rules = yaml.safe_load((ROOT / "alerts" / "vram-exporter.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "1s"
    target.write_text(yaml.safe_dump(rules, sort_keys=False))


def alertmanager_config(target: Path, webhook: str) -> None:
    config = yaml.safe_load((ROOT / "examples" / "alertmanager.yml").read_text())
    config["route"].update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook
    target.write_text(yaml.safe_dump(config, sort_keys=False))


def prometheus_config(target: Path, rules: Path, alertmanager_port: int, exporters: dict[str, int],
                      gpustack_exporter: int) -> None:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{
            "job_name": "vram-exporter",
            "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"instance": f"node-{name}"}}
                               for name, port in exporters.items()],
        }, {
            # A node whose models come from GPUStack (its recorded API answers), in a job of its own.
            "job_name": "vram-exporter-gpustack",
            "static_configs": [{"targets": [f"127.0.0.1:{gpustack_exporter}"], "labels": {"instance": "error-node"}}],
        }],
    }
    target.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, recorded_gpustack):
    prometheus, alertmanager = require_tool("prometheus"), require_tool("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("e2e")
    manifest = tmp / "manifest.yaml"
    shutil.copy(E2E / "manifest.yaml", manifest)
    exporters = {name: ExporterProcess("--nvml.fixture", str(E2E / f"node-{name}.yaml"), "--manifest", str(manifest),
                                       "--manifest.check-interval", "0.3") for name in NODES}
    recorded = ROOT / "tests" / "fixtures" / "gpustack"
    gpustack_node = ExporterProcess("--nvml.fixture", str(recorded / "nvml-error-node.yaml"), "--manifest",
                                    str(recorded / "overlay.yaml"), "--gpustack.url", recorded_gpustack.url,
                                    "--gpustack.worker-name", "error-node")
    receiver = WebhookReceiver()
    shortened_rules(tmp / "rules.yml")
    alertmanager_config(tmp / "alertmanager.yml", receiver.url)
    am_port, prom_port = free_port(), free_port()
    am = Server([alertmanager, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'am'}",
                 f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="], am_port, "/-/ready")
    prometheus_config(tmp / "prometheus.yml", tmp / "rules.yml", am_port,
                      {name: e.port for name, e in exporters.items()}, gpustack_node.port)
    prom = Server([prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{prom_port}"], prom_port, "/-/ready")
    yield {"prometheus": prom, "alertmanager": am, "receiver": receiver, "exporters": exporters, "manifest": manifest}
    for server in (prom, am):
        server.stop()
    receiver.close()
    for exporter in (*exporters.values(), gpustack_node):
        exporter.stop()


def firing(stack, alertname: str) -> list[dict]:
    alerts = stack["prometheus"].get_json("/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def test_all_three_nodes_are_scraped(stack):
    def up():
        result = stack["prometheus"].get_json("/api/v1/query", query='up{job="vram-exporter"} == 1')
        return len(result["data"]["result"]) == 3
    wait_for(up, 30, "Prometheus does not see all three exporters up")


def test_seed_unschedulable_everywhere_is_delivered_with_its_fix(stack):
    receiver = stack["receiver"]

    def delivered():
        return [a for a in receiver.alerts("firing")
                if a["labels"]["alertname"] == "VRAMModelUnschedulable" and a["labels"]["model"] == "seed"]

    (alert,) = wait_for(delivered, 60, "Alertmanager did not deliver VRAMModelUnschedulable for seed")[:1]
    assert alert["labels"]["severity"] == "warning"
    description = alert["annotations"]["description"]
    assert "for seed" in description and "GPUStack estimates it at 5.451GiB" in description
    assert "on node-a: lower --system-reserved vram to 0 GiB and set --gpu-memory-utilization=0.91" in description
    assert alert["annotations"]["runbook_url"] == "docs/runbooks.md#vrammodelunschedulable"


def test_a_model_that_fits_somewhere_does_not_fire(stack):
    # Wait until the rule has been evaluated many times with all data present, then look.
    wait_for(lambda: firing(stack, "VRAMModelUnschedulable"), 60, "the seed alert never fired")
    time.sleep(3)
    models = {a["labels"]["model"] for a in firing(stack, "VRAMModelUnschedulable")}
    assert models - recorded_gpustack_models() == {"seed"}  # of the manifest's models, only seed
    assert not [a for a in stack["receiver"].alerts() if a["labels"].get("model") == "small-coder"
                and a["labels"]["alertname"] == "VRAMModelUnschedulable"]


def recorded_gpustack_models() -> set[str]:
    document = json.loads((ROOT / "tests" / "fixtures" / "gpustack" / "models.json").read_text())
    return {model["name"] for model in document["items"]}


def dashboard_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def substitute(expr: str) -> str:
    # Grafana's "All" for a multi-value variable with allValue ".*".
    return re.sub(r"\$(job|instance|gpu|model)\b", ".*", expr)


def test_every_dashboard_panel_returns_data(stack):
    prom = stack["prometheus"]
    wait_for(lambda: firing(stack, "VRAMModelUnschedulable"), 60, "alerts never fired (ALERTS panel needs them)")
    empty = []
    for board, title, expr in dashboard_queries():
        result = prom.get_json("/api/v1/query", query=substitute(expr))
        assert result["status"] == "success", (board, title, expr)
        if not result["data"]["result"]:
            empty.append(f"{board}: {title}: {expr}")
    assert empty == []


def test_every_dashboard_variable_has_values(stack):
    prom = stack["prometheus"]
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]).groups()
            values = prom.get_json(f"/api/v1/label/{label}/values", **{"match[]": substitute(metric)})["data"]
            assert values, f"{path.name}: ${variable['name']} would be empty"


def test_fixing_the_manifest_resolves_the_alert(stack):
    manifest: Path = stack["manifest"]
    replacement = manifest.with_suffix(".new")
    shutil.copy(E2E / "manifest-fixed.yaml", replacement)
    replacement.replace(manifest)  # atomic, as an editor or a ConfigMap update does

    def resolved():
        return [a for a in stack["receiver"].alerts("resolved")
                if a["labels"]["alertname"] == "VRAMModelUnschedulable" and a["labels"]["model"] == "seed"]

    wait_for(resolved, 60, "Alertmanager did not deliver the resolution of VRAMModelUnschedulable for seed")
    assert not [a for a in firing(stack, "VRAMModelUnschedulable") if a["labels"]["model"] == "seed"]
