"""A real GPUStack 2.3.0 server on loopback for the end-to-end tests (facts: shared GPUSTACK_LIVE.md).

PostgreSQL 15 (Debian's package) runs under the ``postgres`` account in a throwaway directory;
GPUStack runs from its own virtual environment through ``launch_gpustack.py``; workers with made-up
GPUs register through GPUStack's own API and keep themselves ``ready`` with status posts. Nothing
here imports GPUStack: everything goes over HTTP, as the exporter's own source does.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import signal
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ADMIN_PASSWORD = "vram-exporter-ci"
MIB, GIB = 2**20, 2**30


def postgres_bindir() -> Path:
    """Debian installs PostgreSQL's server programs outside PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise FileNotFoundError("PostgreSQL's initdb is missing; `make test-gpustack` installs postgresql-15")
    return Path(initdb).parent


class Postgres:
    """A private PostgreSQL cluster on 127.0.0.1; it refuses to run as root, so it runs as ``postgres``."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.dir = workdir / "pg"
        self.port = port
        self.bindir = postgres_bindir()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(_quote(a) for a in command)]
        return subprocess.run(command, check=check, capture_output=True, text=True)

    def start(self) -> str:
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(self.dir.parent, 0o755)
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}"
        self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c",
                        "create database gpustack"], check=True, capture_output=True)
        return f"postgresql://postgres@127.0.0.1:{self.port}/gpustack"

    def stop(self) -> None:
        """Stop the server, whatever state it is in: a postmaster that already went (its pid file left
        behind) or one slow to go on a loaded machine (pg_ctl gives up after 60 s) must not fail the
        tests that used it; one still alive after pg_ctl is killed, so nothing outlives the run."""
        pid_file = self.dir / "data" / "postmaster.pid"
        if not pid_file.exists():
            return
        stopped = self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-t", "120", "stop",
                            check=False)
        if stopped.returncode == 0:
            return
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            pass  # gone meanwhile: what pg_ctl found


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


class GpuStackServer:
    """``gpustack start`` on loopback, talked to as admin over HTTP Basic."""

    def __init__(self, python: Path, workdir: Path, db_url: str, api_port: int, proxy_port: int) -> None:
        self.url = f"http://127.0.0.1:{api_port}"
        self._log = open(workdir / "gpustack.log", "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               # No real worker answers /healthz: GPUStack would otherwise mark ours unreachable.
               "GPUSTACK_WORKER_UNREACHABLE_CHECK_MODE": "disabled"}
        self.proc = subprocess.Popen(
            [str(python.absolute()), str(HERE / "launch_gpustack.py"), "--data-dir", str(workdir / "gpustack"),
             "--database-url", db_url, "--gateway-mode", "disabled", "--bootstrap-password", ADMIN_PASSWORD,
             "--disable-metrics", "--disable-update-check", "--disable-builtin-observability", "--disable-worker",
             "--api-port", str(api_port), "--proxy-port", str(proxy_port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self.log_path = workdir / "gpustack.log"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpustack exited {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise RuntimeError("gpustack did not become ready:\n" + self.log_path.read_text()[-4000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> Any:
        auth = (f"Bearer {token}" if token else
                "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode())
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Authorization": auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read().decode()[:2000]}") from None
        return json.loads(raw) if raw else None

    def api_key(self) -> str:
        answer = self.request("POST", "/v2/api-keys", {"name": "vram-exporter", "scope": ["management"]})
        return answer["value"]

    def create_cluster(self, name: str) -> int:
        return self.request("POST", "/v2/clusters", {"name": name, "provider": "Docker"})["id"]

    def register_worker(self, cluster_id: int, name: str, gpu_mib: list[int], reserved_gib: int = 0,
                        port: int = 10150) -> Worker:
        token = self.request("GET", f"/v2/clusters/{cluster_id}/registration-token")["token"]
        worker = Worker(self, name, gpu_mib, reserved_gib, port)
        answer = self.request("POST", "/v2/workers", {"name": name, "labels": {}, "worker_uuid": worker.uuid,
                                                      **worker.status_body()}, token=token)
        worker.token, worker.id = answer["token"], answer["id"]
        worker.heartbeat()
        wait_for(lambda: self.request("GET", f"/v2/workers/{worker.id}")["state"] == "ready",
                 f"worker {name} ready")
        return worker

    def create_model(self, cluster_id: int, name: str, local_path: Path, *, replicas: int = 1,
                     backend_parameters: list[str] | None = None, env: dict[str, str] | None = None,
                     gpu_ids: list[str] | None = None, placement_strategy: str | None = None,
                     distributed: bool | None = None) -> int:
        body = {"name": name, "source": "local_path", "local_path": str(local_path), "backend": "vLLM",
                "replicas": replicas, "cluster_id": cluster_id, "backend_parameters": backend_parameters or [],
                "env": env or {}, "categories": ["llm"]}
        if gpu_ids:
            body["gpu_selector"] = {"gpu_ids": gpu_ids}
        if placement_strategy:
            body["placement_strategy"] = placement_strategy
        if distributed is not None:
            body["distributed_inference_across_workers"] = distributed
        model_id = self.request("POST", "/v2/models", body)["id"]
        wait_for(lambda: self.decided(model_id, replicas), f"GPUStack's decision on {name}")
        return model_id

    def instances(self, model_id: int | None = None) -> list[dict]:
        query = f"?perPage=100&model_id={model_id}" if model_id is not None else "?perPage=100"
        return self.request("GET", "/v2/model-instances" + query)["items"]

    def decided(self, model_id: int, replicas: int) -> bool:
        instances = self.instances(model_id)
        return len(instances) == replicas and all(
            i["state"] == "scheduled" or (i["state"] == "pending" and i.get("state_message"))
            for i in instances)


class Worker:
    """A worker with made-up NVIDIA GPUs; only its status posts keep it ``ready``."""

    def __init__(self, server: GpuStackServer, name: str, gpu_mib: list[int], reserved_gib: int, port: int) -> None:
        self.server, self.name, self.gpu_mib, self.reserved_gib = server, name, gpu_mib, reserved_gib
        self.port = port
        self.token = ""
        self.uuid = str(uuid.uuid5(uuid.NAMESPACE_DNS, name))
        self.id = 0

    def gpu_uuid(self, index: int) -> str:
        return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}/{index}"))

    def status_body(self) -> dict:
        gpus = [{"vendor": "nvidia", "type": "cuda", "index": i, "device_index": i, "device_chip_index": 0,
                 "name": "NVIDIA Made-Up GPU", "uuid": self.gpu_uuid(i), "driver_version": "580.159.04",
                 "runtime_version": "13.0", "compute_capability": "8.6",
                 "core": {"total": 3328, "utilization_rate": 0.0},
                 "memory": {"total": mib * MIB, "used": 0, "utilization_rate": 0.0, "is_unified_memory": False}}
                for i, mib in enumerate(self.gpu_mib)]
        return {"hostname": self.name, "ip": "127.0.0.1", "ifname": "lo", "port": self.port, "state_message": None,
                "system_reserved": {"ram": 0, "vram": self.reserved_gib * GIB},
                "status": {"cpu": {"total": 8, "utilization_rate": 1.0},
                           "memory": {"total": 64 * GIB, "used": 4 * GIB, "utilization_rate": 6.0,
                                      "is_unified_memory": False},
                           "swap": {"total": 0, "used": 0, "utilization_rate": 0.0},
                           "filesystem": [], "os": {"name": "Debian", "version": "12"},
                           "kernel": {"name": "Linux", "release": "6.1.0", "version": "#1", "architecture": "x86_64"},
                           "uptime": {"uptime": 1000.0, "boot_time": "2026-11-25 00:00:00"},
                           "gpu_devices": gpus}}

    def heartbeat(self) -> None:
        self.server.request("POST", "/v2/worker-status", {**self.status_body(), "worker_uuid": self.uuid},
                            token=self.token)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def model_dir(base: Path, name: str, config: dict, weights_bytes: int, files: dict[str, int] | None = None) -> Path:
    """A Hugging Face directory GPUStack and the exporter both read: the real config.json and sparse
    weight files of the real sizes (no disk used): ``model.safetensors``, or ``files`` by name."""
    directory = base / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    for file_name, size in (files or {"model.safetensors": weights_bytes}).items():
        with open(directory / file_name, "wb") as weights:
            weights.truncate(size)
    return directory


class WorkerFiles:
    """The worker's file API GPUStack's server calls for local_path models with a gpu_selector
    (gpustack/routes/worker/filesystem.py), answered from this machine's filesystem (server and
    workers share it here)."""

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                from urllib.parse import parse_qs, urlparse

                url = urlparse(self.path)
                path = Path(parse_qs(url.query).get("path", [""])[0])
                if url.path.endswith("files/file-exists"):
                    body = {"exists": path.exists(), "path": str(path), "is_file": path.is_file(),
                            "is_dir": path.is_dir()}
                elif url.path.endswith("files/model-config"):
                    body = json.loads(path.read_text())
                elif url.path.endswith("files/model-weight-size"):
                    body = {"size": sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")}
                else:
                    body = {}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()


def nvml_fixture(worker: Worker) -> str:
    """An NVML fixture of the worker's made-up GPUs, for the exporter that plays this node."""
    lines = ["driver_version: 580.159.04", "gpus:"]
    for index, mib in enumerate(worker.gpu_mib):
        total = mib * MIB
        lines += [f"- index: {index}", "  name: NVIDIA Made-Up GPU", f"  uuid: {worker.gpu_uuid(index)}",
                  f"  pci_bus_id: '00000000:{index + 1:02x}:00.0'",
                  f"  memory: {{total: {total}, reserved: 0, used: 0, free: {total}}}", "  processes: []"]
    return "\n".join(lines) + "\n"
