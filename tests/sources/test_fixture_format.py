"""Fixture files: a bad one is rejected with the file, the line and the field."""

from __future__ import annotations

import pytest

from conftest import FIXTURES
from vram_exporter.sources import fixture
from vram_exporter.snapshot import GpuReading, MemoryReading, NodeSnapshot, ProcessReading
from vram_exporter.sources.yamlfile import InputFileError

GOOD = """driver_version: "580.159.04"
gpus:
  - index: 0
    name: NVIDIA RTX A2000
    uuid: GPU-1
    pci_bus_id: "00000000:01:00.0"
    memory: {total: 6436159488, reserved: 0, used: 0, free: 6436159488}
"""


def load_text(tmp_path, text):
    path = tmp_path / "f.yaml"
    path.write_text(text)
    return fixture.load(path), path


def errors_of(tmp_path, text) -> str:
    with pytest.raises(InputFileError) as raised:
        load_text(tmp_path, text)
    return str(raised.value)


def test_good_fixture_loads(tmp_path):
    doc, _ = load_text(tmp_path, GOOD)
    assert doc.gpus[0].memory.total == 6436159488


def test_unknown_key_names_file_line_and_field(tmp_path):
    message = errors_of(tmp_path, GOOD.replace("    uuid: GPU-1\n", "    uuid: GPU-1\n    uiud: x\n"))
    assert f"{tmp_path / 'f.yaml'}:6: gpus[0].uiud: unknown key" in message


def test_memory_that_does_not_add_up_is_rejected_on_its_line(tmp_path):
    message = errors_of(tmp_path, GOOD.replace("free: 6436159488", "free: 6436159000"))
    assert ":7: gpus[0].memory:" in message and "reserved + used + free" in message


def test_unknown_nvml_error_name_is_rejected(tmp_path):
    message = errors_of(tmp_path, GOOD + "    error: GPU_FELL_OFF\n")
    assert ":8: gpus[0].error:" in message and "GPU_IS_LOST" in message


def test_wrong_type_names_the_field(tmp_path):
    message = errors_of(tmp_path, GOOD.replace("total: 6436159488", "total: lots"))
    assert ":7: gpus[0].memory.total:" in message


def test_broken_yaml_names_the_line(tmp_path):
    message = errors_of(tmp_path, GOOD + "  - {index: 1\n")
    assert f"{tmp_path / 'f.yaml'}:" in message and "not valid YAML" in message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputFileError, match="cannot read"):
        fixture.load(tmp_path / "absent.yaml")


def test_json_fixtures_are_accepted(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('{"driver_version": "1", "gpus": []}')
    assert fixture.load(path).gpus == ()


def test_a_captured_snapshot_round_trips_through_the_fixture_format(tmp_path):
    snap = NodeSnapshot("580.159.04", (
        GpuReading(0, "GPU-a", "H100", "00:06.0", MemoryReading(100, 30, 50, 20, 2),
                   (ProcessReading(9, "python3", 30), ProcessReading(10, "", None))),
        GpuReading(1, "GPU-b", "H100", "00:07.0", None, (), "GPU_IS_LOST"),
    ))
    path = tmp_path / "captured.yaml"
    path.write_text(fixture.dump(fixture.from_snapshot(snap)))
    doc = fixture.load(path)
    assert doc.gpus[0].memory.reserved == 20
    assert [(p.pid, p.used) for p in doc.gpus[0].processes] == [(9, 30), (10, None)]
    assert doc.gpus[1].error == "GPU_IS_LOST"


def test_every_shipped_fixture_is_valid():
    for path in FIXTURES.glob("*.yaml"):
        fixture.load(path)
