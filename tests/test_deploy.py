"""deploy/kubernetes: what a GPU node's exporter needs, and the PrometheusRule in sync with alerts/."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request

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
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"


def test_daemonset_sees_the_hosts_processes_with_no_capability_added():
    """Booked against used: NVML gives host pids, whose /proc/<pid>/{stat,cmdline,cgroup} the host PID
    namespace shows to any user (README "Booked against used"); nothing more is granted for it."""
    pod = documents("daemonset.yaml")["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostPID"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not any(arg.startswith("--processes.proc-root") for arg in container["args"])  # /proc: the host's


def test_systemd_unit_leaves_other_users_processes_visible():
    """ProtectProc=invisible or ptraceable, ProcSubset=pid would hide the engines' /proc/<pid> from the
    dynamic user: every GPU process would then belong to nobody."""
    settings = dict(line.split("=", 1) for line in (ROOT / "deploy/systemd/vram-exporter.service").read_text()
                    .splitlines() if "=" in line and not line.startswith(("#", " ")))
    assert settings.get("ProtectProc", "default") == "default" and settings.get("ProcSubset", "all") == "all"
    assert settings.get("PrivatePIDs", "no") == "no"


def test_manifest_configmap_is_a_valid_manifest(tmp_path):
    from vram_exporter.sources.manifest import load_manifest

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


# deploy/systemd: the unit of a bare-metal GPUStack worker. systemd-analyze checks it as systemd reads it
# (every warning counts: it exits 0 on an unknown key); its ExecStart then runs for real, with the
# shipped /etc/default file's values, as systemd would expand them.
SYSTEMD = ROOT / "deploy" / "systemd"
INSTALLED_BINARY = "/opt/vram-exporter/bin/vram-exporter"


def unit_with_binary(tmp_path, binary: str):
    """The unit with the exporter where this machine has it (systemd-analyze requires the binary to exist)."""
    text = (SYSTEMD / "vram-exporter.service").read_text()
    assert INSTALLED_BINARY in text
    unit = tmp_path / "vram-exporter.service"
    unit.write_text(text.replace(INSTALLED_BINARY, binary))
    return unit


def test_systemd_unit_verifies_without_a_warning(tmp_path):
    from conftest import exporter_command, require_tool

    analyze = require_tool("systemd-analyze")
    unit = unit_with_binary(tmp_path, exporter_command()[0])
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def exec_start(unit_text: str) -> str:
    lines = unit_text.replace("\\\n", " ").splitlines()
    (line,) = [line for line in lines if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


def systemd_expand(command: str, env: dict[str, str], credentials: str) -> list[str]:
    """systemd's rules (systemd.service, "Command lines"): ${VAR} is one word, $VAR splits on spaces."""
    words = []
    for word in shlex.split(command.replace("%d", credentials)):
        if word.startswith("$") and not word.startswith("${"):
            words += env.get(word[1:], "").split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return words


def environment_file(path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value
    return env


def test_systemd_exec_start_runs_with_the_shipped_defaults(tmp_path, recorded_gpustack):
    from conftest import exporter_command, free_port

    env = environment_file(SYSTEMD / "vram-exporter.default")
    assert set(env) == {"LISTEN_ADDRESS", "GPUSTACK_URL", "VRAM_EXPORTER_ARGS"}
    port = free_port()
    env["LISTEN_ADDRESS"] = f"127.0.0.1:{port}"
    env["GPUSTACK_URL"] = recorded_gpustack.url
    # The paths the defaults name under /etc/vram-exporter, here in a scratch directory.
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "gpustack" / "overlay.yaml", etc / "sizes.yaml")
    env["VRAM_EXPORTER_ARGS"] = env["VRAM_EXPORTER_ARGS"].replace("/etc/vram-exporter", str(etc))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "gpustack-api-key").write_text("key-for-the-test\n")
    argv = systemd_expand(exec_start((SYSTEMD / "vram-exporter.service").read_text()), env, str(credentials))
    assert argv[0] == INSTALLED_BINARY
    log = tmp_path / "exporter.log"
    with log.open("w") as out:
        process = subprocess.Popen([*exporter_command(), *argv[1:]], stdout=out, stderr=subprocess.STDOUT,
                                   cwd=tmp_path)
    try:
        body = scrape_when_healthy(f"http://127.0.0.1:{port}", process, log)
        assert 'vram_exporter_collect_success{collector="gpustack"} 1' in body
        assert "vram_exporter_manifest_last_reload_successful 1" in body
        assert "vram_model_gpustack_pending_instances{" in body  # the cluster series, until a fleet skips them
    finally:
        process.terminate()
        process.wait(timeout=10)


def scrape_when_healthy(url: str, process: subprocess.Popen, log, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the unit's command exited {process.returncode}:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=2) as response:
                # The first answer may precede GPUStack's first refresh: wait for it.
                body = response.read().decode()
                if 'collector="gpustack"} 1' in body:
                    return body
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the unit's command did not serve GPUStack's view in {timeout:.0f} s:\n{log.read_text()}")
