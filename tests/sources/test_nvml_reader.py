"""The NVML reader against the fake NVML: no rulebooks, only what NVML says and how it is read."""

from __future__ import annotations

import pynvml
import pytest

from conftest import FIXTURES
from vram_exporter.sources import fixture
from vram_exporter.sources.fake_nvml import FakeNvml
from vram_exporter.sources.nvml import NvmlReader

MIB = 2**20


def reader_for(name: str, **kwargs) -> tuple[NvmlReader, FakeNvml]:
    fake = FakeNvml(fixture.load(FIXTURES / f"{name}.yaml"))
    return NvmlReader(fake, proc_root=kwargs.pop("proc_root", None), **kwargs), fake


def fixture_with(name: str, **changes) -> fixture.Fixture:
    return fixture.load(FIXTURES / f"{name}.yaml").model_copy(update=changes)


def test_seed_gpu_is_read_in_bytes_with_v2_memory():
    snap = reader_for("seed-a2000")[0].read()
    assert snap.ok and snap.driver_version == "580.159.04"
    (gpu,) = snap.gpus
    assert (gpu.index, gpu.name, gpu.pci_bus_id) == (0, "NVIDIA RTX A2000", "00000000:01:00.0")
    assert gpu.memory.total == 6138 * MIB == 6_436_159_488
    assert (gpu.memory.reserved, gpu.memory.used, gpu.memory.api_version) == (0, 0, 2)
    assert gpu.processes == ()


def test_real_h100_loaded_reading_keeps_nvml_numbers():
    (gpu,) = reader_for("h100-loaded")[0].read().gpus
    assert gpu.memory.reserved == 503_316_480  # 480 MiB, as nvidia-smi showed
    assert gpu.memory.used == 22_027_239_424
    assert [(p.pid, p.used_bytes) for p in gpu.processes] == [(420, 22_017_998_848)]


def test_driver_without_v2_falls_back_to_v1_where_used_includes_reserved():
    (gpu,) = reader_for("no-memory-v2")[0].read().gpus
    recorded = fixture.load(FIXTURES / "no-memory-v2.yaml").gpus[0].memory
    assert gpu.memory.api_version == 1
    assert gpu.memory.reserved is None  # unknown under v1, not 0
    assert gpu.memory.used == recorded.used + recorded.reserved
    assert gpu.memory.free == recorded.free


def test_unknown_process_memory_stays_unknown_never_zero():
    snap = reader_for("container-no-process-memory")[0].read()
    procs = [p for gpu in snap.gpus for p in gpu.processes]
    assert {p.pid for p in procs} == {1, 57, 58}  # graphics processes are read too
    assert all(p.used_bytes is None for p in procs)


def test_lost_gpu_is_down_while_the_others_are_read():
    snap = reader_for("gpu-lost")[0].read()
    assert snap.ok
    assert [g.up for g in snap.gpus] == [True, True, False, True]
    assert snap.gpus[2].error == "GPU_IS_LOST" and snap.gpus[2].memory is None
    assert snap.gpus[3].processes[0].name == "python3"


def test_gpu_lost_mid_run_keeps_its_identity_and_recovers():
    reader, fake = reader_for("node-8xh100")
    before = reader.read().gpus[4]
    healthy = fake._fixture
    lost = healthy.model_copy(update={"gpus": tuple(
        g.model_copy(update={"error": "GPU_IS_LOST"}) if g.index == 4 else g for g in healthy.gpus)})
    fake.replace_fixture(lost)
    during = reader.read().gpus[4]
    assert not during.up and during.uuid == before.uuid and during.name == before.name
    fake.replace_fixture(healthy)
    assert reader.read().gpus[4] == before


def test_nvml_failing_to_initialise_is_retried_on_the_next_read():
    reader, fake = reader_for("driver-not-loaded")
    first = reader.read()
    assert not first.ok and first.error == "DRIVER_NOT_LOADED" and first.gpus == ()
    fake.replace_fixture(fixture.load(FIXTURES / "seed-a2000.yaml"))
    second = reader.read()
    assert second.ok and len(second.gpus) == 1
    assert fake.init_calls == 2


def test_library_missing_is_an_error_snapshot_not_an_exception():
    class NoLibrary:
        def nvmlInit(self):
            raise pynvml.NVMLError_LibraryNotFound()

    snap = NvmlReader(NoLibrary()).read()
    assert snap.error == "LIBRARY_NOT_FOUND" and snap.gpus == ()


def test_process_names_come_from_proc_comm_then_nvml(tmp_path):
    (tmp_path / "20417").mkdir()
    (tmp_path / "20417" / "comm").write_text("vllm-from-proc\n")
    reader, _ = reader_for("node-8xh100", proc_root=tmp_path)
    procs = {p.pid: p.name for p in reader.read().gpus[3].processes}
    assert procs == {20417: "vllm-from-proc", 20418: "python3"}


def test_a_process_in_both_lists_is_counted_once():
    doc = fixture.load(FIXTURES / "seed-a2000.yaml")
    both = [fixture.FixtureProcess(pid=7, name="Xorg", used=100 * MIB, type=t) for t in ("compute", "graphics")]
    gpu = doc.gpus[0].model_copy(update={"processes": tuple(both)})
    reader = NvmlReader(FakeNvml(doc.model_copy(update={"gpus": (gpu,)})), proc_root=None)
    (only,) = reader.read().gpus[0].processes
    assert (only.pid, only.used_bytes) == (7, 100 * MIB)


@pytest.mark.parametrize("name", ["UNKNOWN", "TIMEOUT", "GPU_IS_LOST", "NO_PERMISSION"])
def test_fake_raises_the_real_pynvml_error_classes(name):
    fake = FakeNvml(fixture_with("seed-a2000", gpus=(
        fixture.load(FIXTURES / "seed-a2000.yaml").gpus[0].model_copy(update={"error": name}),)))
    fake.nvmlInit()
    with pytest.raises(pynvml.NVMLError) as raised:
        fake.nvmlDeviceGetMemoryInfo(fake.nvmlDeviceGetHandleByIndex(0))
    assert raised.value.value == getattr(pynvml, f"NVML_ERROR_{name}")
