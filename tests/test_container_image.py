"""The container image, built from the Dockerfile and run for real.

buildah builds the Dockerfile (tools/build_image.sh: a Debian bookworm base made by mmdebstrap, since
no registry image can be pulled in CI), then runs the image's own entrypoint and user, as `docker run
IMAGE ARGS` would, with `buildah run --isolation chroot` (podman's crun cannot set rlimits here). The
exporter inside replays the seed fixture and is scraped over loopback like any exporter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, free_port, require_tool

TAG = "localhost/vram-exporter:test"
SEED_UUID = "GPU-5eed0a20-0000-4a20-8c1e-000000006138"


class Buildah:
    """buildah with its own vfs storage, removed afterwards (vfs copies every layer in full)."""

    def __init__(self, top: Path) -> None:
        self.env = {**os.environ, "BUILDAH_ROOT": str(top / "root"), "BUILDAH_RUNROOT": str(top / "run"),
                    "BUILDAH_STORAGE_DRIVER": "vfs"}
        self.args = ["buildah", "--root", str(top / "root"), "--runroot", str(top / "run"), "--storage-driver", "vfs"]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.args, *args], capture_output=True, text=True, env=self.env)
        assert done.returncode == 0, f"buildah {' '.join(args)}:\n{done.stderr}"
        return done.stdout.strip()


@pytest.fixture(scope="module")
def image(pytestconfig):
    require_tool("buildah")
    require_tool("mmdebstrap")
    top = Path(tempfile.mkdtemp(prefix="vram-image-", dir=os.environ.get("VRAM_IMAGE_STORAGE_DIR")))
    buildah = Buildah(top)
    try:
        built = subprocess.run([str(ROOT / "tools" / "build_image.sh"), TAG], capture_output=True, text=True,
                               env=buildah.env, cwd=ROOT)
        assert built.returncode == 0, f"tools/build_image.sh failed:\n{built.stdout}\n{built.stderr}"
        # The figures a person reads in CI's log (not captured): the image's size, how long each step took.
        plugins = pytestconfig.pluginmanager
        with plugins.getplugin("capturemanager").global_and_fixture_disabled():
            plugins.getplugin("terminalreporter").write_line("\n" + built.stdout.strip().splitlines()[-1])
        yield buildah
    finally:
        subprocess.run([*buildah.args, "rm", "--all"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def image_config(buildah: Buildah) -> dict:
    return json.loads(buildah("inspect", "--type", "image", TAG))["OCIv1"]["config"]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the container exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/-/healthy", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    pytest.fail(f"the container's exporter did not answer in {timeout:.0f} s:\n{log.read_text()}")


def uid_of_process_listening(port: int) -> int:
    """The real uid of the exporter process inside the container (a chroot: same PID namespace)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes().split(b"\0")
            # The Python process itself, not buildah's (its argv holds the same arguments).
            if cmdline[0].endswith(b"/python3") and f"127.0.0.1:{port}".encode() in cmdline:
                uid_line = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
                return int(uid_line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    raise AssertionError(f"no vram-exporter process listens on {port}")


def test_image_config_is_non_root_with_the_exporter_as_entrypoint(image):
    config = image_config(image)
    assert config["Entrypoint"] == ["vram-exporter"]
    assert config["User"] not in ("", "0", "root")
    assert "9845/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility" and env["NVIDIA_VISIBLE_DEVICES"] == "all"


class Running:
    """The image's entrypoint running in a buildah container with these arguments in place of its CMD,
    as `docker run IMAGE ARGS` does; buildah run takes the user from the image's config."""

    def __init__(self, buildah: Buildah, tmp_path: Path, *args: str, copy: Path | None = None) -> None:
        config = image_config(buildah)
        self.user = int(config["User"])
        container = buildah("from", "--name", f"vram-exporter-test-{os.getpid()}-{tmp_path.name}", TAG)
        if copy is not None:
            buildah("copy", container, str(copy), "/etc/vram-exporter/")
        self.port = free_port()
        argv = [*config["Entrypoint"], *args, "--web.listen-address", f"127.0.0.1:{self.port}"]
        self.log = tmp_path / "container.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen([*buildah.args, "run", "--isolation", "chroot", container, "--", *argv],
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_healthy(f"http://127.0.0.1:{self.port}", self.process, self.log)

    def samples(self) -> dict[tuple, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            body = response.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def test_entrypoint_as_its_user_serves_the_seed_gpu(image, tmp_path):
    running = Running(image, tmp_path, "--nvml.fixture", "/etc/vram-exporter/fixture.yaml",
                      "--manifest", "/etc/vram-exporter/manifest.yaml", copy=ROOT / "examples" / "seed")
    try:
        assert uid_of_process_listening(running.port) == running.user != 0
        samples = running.samples()
        gpu = (("gpu", "0"), ("uuid", SEED_UUID))
        assert samples[("vram_gpu_up", gpu)] == 1
        assert samples[("vram_gpu_memory_total_bytes", gpu)] == 6436159488
        assert samples[("vram_gpu_allocatable_bytes", gpu)] == 6436159488 - 2**30
        # The seed's verdict, computed inside the image: GPUStack leaves the model pending.
        assert samples[("vram_model_schedulable", (("model", "qwen2.5-1.5b-instruct"),))] == 0
        assert samples[("vram_exporter_collect_success", (("collector", "nvml"),))] == 1
    finally:
        running.stop()


def test_real_nvml_without_a_driver_still_answers(image, tmp_path):
    # The real NVML path inside the image (no fixture): CI has no NVIDIA driver, so libnvidia-ml is not
    # there to load, and the exporter says so in its series instead of dying.
    running = Running(image, tmp_path)
    try:
        samples = running.samples()
        assert samples[("vram_exporter_collect_success", (("collector", "nvml"),))] == 0
        assert not [name for name, _ in samples if name.startswith("vram_gpu_")]
    finally:
        running.stop()
