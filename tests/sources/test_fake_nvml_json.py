"""The fake NVML reads a JSON fixture with json where YAML's loader would read it the same way: what it
replays must be what the file says, as ``fixture.load`` (YAML's loader) reads it, or the same error."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from vram_exporter.sources import fixture
from vram_exporter.sources.fake_nvml import FakeNvml, _load, _plain_json
from vram_exporter.sources.nvml import NvmlReader
from vram_exporter.sources.yamlfile import InputFileError

# Numbers as a person or a tool may write them; YAML 1.1 reads some of them as strings (1e-3, NaN).
NUMBER_TEXTS = ["0", "0.0", "0.25", "-0.0", "1.5e+2", "1.5E-2", "1e-3", "2E-1", "1.0e3", "NaN", "Infinity", "3"]
ANY_NAMES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(["a\\b", "x\ty", "é"])
ASCII_NAMES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)


@st.composite
def documents(draw) -> str:
    names = draw(st.sampled_from([ASCII_NAMES, ANY_NAMES]))  # half of them with no character YAML may read otherwise
    gpus = []
    for index in range(draw(st.integers(1, 3))):
        total = draw(st.integers(0, 2**40))
        used = draw(st.integers(0, total))
        reserved = draw(st.integers(0, total - used))
        gpus.append({"index": index, "name": draw(names), "uuid": f"GPU-{index}", "pci_bus_id": f"0:{index}",
                     "memory": {"total": total, "reserved": reserved, "used": used,
                                "free": total - used - reserved + draw(st.sampled_from([0, 0, 0, 1]))},
                     "processes": [{"pid": 7, "name": draw(names), "used": draw(st.none() | st.integers(0, 2**33))}]})
    doc = {"driver_version": draw(names), "call_delay_seconds": "DELAY", "gpus": gpus}
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])))
    # json takes white space, line breaks too, on either side of a colon; YAML's loader not a break before it
    text = text.replace('"index": ', draw(st.sampled_from(['"index": ', '"index"\n: ', '"index":\n  ', '"index" \n  : '])))
    return text.replace('"DELAY"', draw(st.sampled_from(NUMBER_TEXTS)))


def outcome(load, path):
    try:
        return "read", load(path)
    except InputFileError as exc:
        return "refused", str(exc)


@settings(max_examples=300, deadline=None)
@given(documents())
def test_a_json_fixture_is_read_as_yamls_loader_reads_it(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("f") / "fixture.yaml"
    path.write_text(text, encoding="utf-8")
    assert outcome(_load, path) == outcome(fixture.load, path)


def test_plain_json_is_read_by_json_and_the_fake_follows_it(tmp_path):
    """The fast path is taken where it may be (else the test above proves nothing of it), and a
    rewritten file's readings are what it says."""
    doc = {"driver_version": "580.1", "call_delay_seconds": 0.0,
           "gpus": [{"index": 0, "name": "NVIDIA H100", "uuid": "GPU-0", "pci_bus_id": "0:0",
                     "memory": {"total": 1000, "reserved": 10, "used": 20, "free": 970}}]}
    path = tmp_path / "fixture.json"
    path.write_text(json.dumps(doc))
    assert _plain_json(path.read_text()) == doc
    reader = NvmlReader(FakeNvml.watching(path), proc_root=None)
    assert reader.read().gpus[0].memory.free == 970
    doc["gpus"][0]["memory"].update(used=250, free=740)
    path.write_text(json.dumps(doc))  # one byte longer: a new file stamp however coarse the clock
    memory = reader.read().gpus[0].memory
    assert (memory.used, memory.free, memory.reserved) == (250, 740, 10)
