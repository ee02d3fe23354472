"""Booked against used (rules/usage.py) as metric families: per instance and GPU, and per GPU.

Cardinality: one series per (instance, GPU) pair that GPUStack booked or where the instance's processes
hold memory, so at most instances-on-this-node x GPUs-of-this-node for each ``vram_instance_*`` family
(an instance books at most the GPUs of one node here); one series per GPU for each ``vram_gpu_*`` family.
Process ids are never labels. The label is ``model_instance``, not ``instance``, which Prometheus keeps
for the scrape target.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ..rules.usage import NodeUsage
from .catalogue import family
from .exposition import Family


def usage_families(usage: NodeUsage, uuids: Mapping[int, str]) -> Iterator[Family]:
    booked, used, overrun, idle, nobody, idle_bytes, overbooked = (family(name) for name in (
        "vram_instance_booked_bytes", "vram_instance_used_bytes", "vram_instance_overrun",
        "vram_instance_claim_idle", "vram_gpu_unattributed_used_bytes", "vram_gpu_idle_claimed_bytes",
        "vram_gpu_overbooked"))
    for gpu in usage.gpus:
        uuid = uuids.get(gpu.gpu, "")
        for row in gpu.instances:
            labels = (row.instance, row.model, str(gpu.gpu), uuid)
            booked.sample(*labels, row.booked)
            used.sample(*labels, row.used)
            overrun.sample(*labels, 1 if row.overrun else 0)
            idle.sample(*labels, 1 if row.idle_claim else 0)
        nobody.sample(str(gpu.gpu), uuid, gpu.unattributed)
        idle_bytes.sample(str(gpu.gpu), uuid, sum(row.booked for row in gpu.instances if row.idle_claim))
        overbooked.sample(str(gpu.gpu), uuid, 1 if gpu.overbooked else 0)
    yield from (booked, used, overrun, idle, nobody, idle_bytes, overbooked)
