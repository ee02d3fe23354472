"""Where a scrape's time goes after the readings change, in process (no HTTP, no client).

The exporter of this checkout (or of ``PYTHONPATH``) serves N GPUs x M models from a fixture file
(``--nvml.fixture``, the fake NVML follows it); after its fixes are known, each round rewrites the
fixture (every GPU's used/free memory a few MiB off, as drift_tail.py's drifting process does) and
times one whole ``Exporter.scrape``; then rewrites it again and times the phases of the same work one
by one: the NVML read (the fake re-reading its fixture, written as JSON: drift_tail.py says why), the
live part (``Plan.live``: start-up headrooms, window tops, ``startable``), the fix picks
(``Plan.fix_segments``) and the rest of the scrape (GPU families, the render of the body; the live
part and picks then come from the plan's memo). Medians and minima of ``--rounds``:

    .venv/bin/python benchmarks/drift_phases.py
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/drift_phases.py      # another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import scenarios  # noqa: E402

from vram_exporter.app.exporter import Exporter  # noqa: E402
from vram_exporter.app.memory import give_large_buffers_back  # noqa: E402
from vram_exporter.rules.node import free_memory  # noqa: E402
from vram_exporter.sources.fake_nvml import FakeNvml  # noqa: E402
from vram_exporter.sources.manifest import load_manifest  # noqa: E402
from vram_exporter.sources.nvml import NvmlReader  # noqa: E402

MIB = 2**20


class Drift:
    """Rewrites the fixture with every GPU's used memory 0-7 MiB off its start (free the opposite)."""

    def __init__(self, fixture: Path) -> None:
        self.fixture = fixture
        self.doc = yaml.safe_load(fixture.read_text())
        self.base = [(g["memory"]["used"], g["memory"]["free"]) for g in self.doc["gpus"]]
        self.rng = random.Random(1)

    def __call__(self) -> None:
        for gpu, (used, free) in zip(self.doc["gpus"], self.base):
            shift = self.rng.randrange(0, 8) * MIB
            gpu["memory"]["used"], gpu["memory"]["free"] = used + shift, free - shift
        scratch = self.fixture.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.doc))
        os.replace(scratch, self.fixture)
        time.sleep(0.01)  # a new file stamp


async def measure(exporter: Exporter, drift: Drift, rounds: int) -> dict[str, list[float]]:
    plan = await exporter.plan(await exporter.snapshot())
    plan.fixes_known.result(timeout=300)
    await exporter.scrape()
    out: dict[str, list[float]] = {k: [] for k in ("scrape", "nvml read", "live part", "fix picks", "rest")}

    def timed(name: str, started: float) -> float:
        now = time.perf_counter()
        out[name].append(now - started)
        return now

    for _ in range(rounds):
        drift()
        started = time.perf_counter()
        await exporter.scrape()
        timed("scrape", started)
        drift()
        started = time.perf_counter()
        snap = await exporter.snapshot()
        started = timed("nvml read", started)
        free = free_memory(snap)
        live = plan.live(free)
        started = timed("live part", started)
        plan.fix_segments(free, live)
        started = timed("fix picks", started)
        await exporter.scrape()
        timed("rest", started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    give_large_buffers_back()  # malloc as the server sets it: a body's copy is a fresh mapping, as there
    with tempfile.TemporaryDirectory() as tmp:
        fixture, manifest = scenarios.write(Path(tmp), args.gpus, args.models, 0)
        exporter = Exporter(NvmlReader(FakeNvml.watching(fixture), proc_root=None), manifest=load_manifest(manifest))
        try:
            out = asyncio.run(measure(exporter, Drift(fixture), args.rounds))
        finally:
            exporter.close()
    print(f"{args.gpus} GPUs x {args.models} models, {args.rounds} rounds, ms (median / min):")
    print("  ".join(f"{name} {statistics.median(v) * 1e3:.2f} / {min(v) * 1e3:.2f}" for name, v in out.items()))


if __name__ == "__main__":
    main()
