"""Booked against used (rules/usage.py) as metric families: per instance and GPU, and per GPU.

Cardinality: one series per (instance, GPU) pair that GPUStack booked or where the instance's processes
hold memory, so at most instances-on-this-node x GPUs-of-this-node for each ``vram_instance_*`` family
(an instance books at most the GPUs of one node here); one series per GPU for each ``vram_gpu_*`` family.
Process ids are never labels. The label is ``model_instance``, not ``instance``, which Prometheus keeps
for the scrape target.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .exposition import Family
from ..rules.usage import NodeUsage

INSTANCE_GPU_LABELS = ("model_instance", "model", "gpu", "uuid")
GPU_LABELS = ("gpu", "uuid")


def usage_families(usage: NodeUsage, uuids: Mapping[int, str]) -> Iterator[Family]:
    booked = Family("vram_instance_booked_bytes",
                    "Memory GPUStack booked for this instance on this GPU (its computed_resource_claim).",
                    "gauge", INSTANCE_GPU_LABELS)
    used = Family("vram_instance_used_bytes",
                  "Memory this instance's processes hold on this GPU (NVML per process, attributed by pid, "
                  "process tree, listening port or container).", "gauge", INSTANCE_GPU_LABELS)
    overrun = Family("vram_instance_overrun",
                     "1 if this instance holds more than GPUStack booked for it on this GPU while another instance "
                     "is booked there or GPUStack has room left to place one (it places by bookings, not use).",
                     "gauge", INSTANCE_GPU_LABELS)
    idle = Family("vram_instance_claim_idle",
                  "1 if GPUStack books memory for this instance on this GPU and no process of it is there "
                  "(normal while it starts; a claim left behind when it lasts).", "gauge", INSTANCE_GPU_LABELS)
    nobody = Family("vram_gpu_unattributed_used_bytes",
                    "Memory held on this GPU by processes that belong to no GPUStack instance.", "gauge", GPU_LABELS)
    idle_bytes = Family("vram_gpu_idle_claimed_bytes",
                        "Memory booked on this GPU for instances that have no process there.", "gauge", GPU_LABELS)
    overbooked = Family("vram_gpu_overbooked",
                        "1 if GPUStack's bookings on this GPU add up to more than its total memory.", "gauge",
                        GPU_LABELS)
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
