"""A problem with NVML is logged when it starts and when it ends, never at every scrape (issue 24, item 8)."""

from __future__ import annotations

import asyncio
import logging
import threading

from vram_exporter.snapshot import NodeSnapshot
from vram_exporter.sources.nvml import NvmlReader, error_class
from vram_exporter.sources.sampler import NvmlSampler


class MissingLibrary:
    """pynvml's surface where the library is missing, until ``present`` is set."""

    def __init__(self) -> None:
        self.present = False

    def nvmlInit(self):
        if not self.present:
            raise error_class("LIBRARY_NOT_FOUND")()

    def nvmlSystemGetDriverVersion(self):
        return "580.159.04"

    def nvmlDeviceGetCount(self):
        return 0

    def nvmlShutdown(self):
        pass


def _ours(caplog, logger):
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger]


def test_nvml_missing_is_logged_once_and_its_return_once(caplog):
    lib = MissingLibrary()
    reader = NvmlReader(lib, proc_root=None)
    with caplog.at_level(logging.INFO, logger="vram_exporter.sources.nvml"):
        for _ in range(100):  # 100 scrapes without the library
            assert reader.read().error == "LIBRARY_NOT_FOUND"
        lib.present = True
        for _ in range(3):
            assert reader.read().ok
    levels = [level for level, _ in _ours(caplog, "vram_exporter.sources.nvml")]
    assert levels == ["WARNING", "INFO", "INFO"]  # unavailable; initialised; available again


class Hanging:
    source = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()

    def read(self):
        self.release.wait(10)
        return NodeSnapshot(driver_version="1", source=self.source)

    def close(self):
        self.release.set()


def test_a_hung_nvml_is_logged_once_while_it_hangs(caplog):
    reader = Hanging()
    sampler = NvmlSampler(reader, timeout=0.05)

    async def scrapes():
        for _ in range(20):
            assert (await sampler.snapshot()).error == "TIMEOUT"
        reader.release.set()
        await asyncio.sleep(0.1)
        assert (await sampler.snapshot()).ok

    with caplog.at_level(logging.INFO, logger="vram_exporter.sources.sampler"):
        asyncio.run(scrapes())
    sampler.close()
    assert [level for level, _ in _ours(caplog, "vram_exporter.sources.sampler")] == ["WARNING", "INFO"]
