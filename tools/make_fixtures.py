"""Generate the synthetic fixtures under tests/fixtures and examples/ (run once; outputs are committed).

Each one stands for a node a user has: their numbers are chosen so NVML's v2 arithmetic holds
(total = reserved + used + free). The real H100 fixtures come from tools/convert_h100_probe.py.
"""

from pathlib import Path

import yaml

MIB = 2**20
H100_TOTAL, H100_RESERVED = 85520809984, 503316480  # real H100 80GB HBM3 readings (shared/fixtures/real)


def gpu(index, name, total, reserved, processes, *, error=None, bus=None, uuid=None):
    used = sum(p["used"] or 0 for p in processes)
    return {
        "index": index, "name": name,
        "uuid": uuid or f"GPU-{index:08x}-5eed-4a11-9c00-{0xa2000 + index:012x}",
        "pci_bus_id": bus or f"00000000:{0x18 + index * 0x10:02X}:00.0",
        "memory": {"total": total, "reserved": reserved, "used": used, "free": total - reserved - used},
        "processes": processes, "error": error,
    }


def proc(pid, name, mib, kind="compute"):
    return {"pid": pid, "name": name, "used": None if mib is None else mib * MIB, "type": kind}


def write(path, header, doc):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"# {line}\n" for line in header.splitlines())
                    + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110))
    print("wrote", path)


seed = {"driver_version": "580.159.04", "gpus": [
    gpu(0, "NVIDIA RTX A2000", 6138 * MIB, 0, [], bus="00000000:01:00.0",
        uuid="GPU-5eed0a20-0000-4a20-8c1e-000000006138")]}
seed_header = ("The seed scenario of docs/design.md: an RTX A2000 with 6 GiB (NVML total 6138 MiB),\n"
               "headless, nothing running.")
write("examples/seed/fixture.yaml", seed_header, seed)
write("tests/fixtures/seed-a2000.yaml", seed_header, seed)

# Eight H100s: vLLM TP=2 on 0-1 (u=0.9), single-GPU vLLM on 2-4, a notebook on 5, 6-7 idle.
vllm_tp = 73728
node8 = {"driver_version": "580.159.04", "gpus": [
    gpu(0, "NVIDIA H100 80GB HBM3", H100_TOTAL, H100_RESERVED, [proc(20101, "vllm", vllm_tp)]),
    gpu(1, "NVIDIA H100 80GB HBM3", H100_TOTAL, H100_RESERVED, [proc(20102, "vllm", vllm_tp)]),
    gpu(2, "NVIDIA H100 80GB HBM3", H100_TOTAL, H100_RESERVED, [proc(20331, "vllm", 74150)]),
    gpu(3, "NVIDIA H100 80GB HBM3", H100_TOTAL, H100_RESERVED, [proc(20417, "vllm", 36864),
                                                               proc(20418, "python3", 2048)]),
    gpu(4, "NVIDIA H100 80GB HBM3", H100_TOTAL, H100_RESERVED, [proc(20522, "vllm", 74150)]),
    gpu(5, "NVIDIA H100 80GB HBM3", H100_TOTAL, H100_RESERVED, [proc(31007, "jupyter-kernel", 12040),
                                                               proc(31010, "python3", 710)]),
    gpu(6, "NVIDIA H100 80GB HBM3", H100_TOTAL, H100_RESERVED, []),
    gpu(7, "NVIDIA H100 80GB HBM3", H100_TOTAL, H100_RESERVED, []),
]}
write("tests/fixtures/node-8xh100.yaml",
      "An 8-GPU H100 node: vLLM TP=2 on GPUs 0-1, single-GPU vLLM on 2-4, a notebook on 5, 6-7 idle.",
      node8)

lost = {"driver_version": "580.159.04", "gpus": [
    gpu(0, "NVIDIA L40S", 46068 * MIB, 566 * MIB, [proc(4100, "vllm", 41000)]),
    gpu(1, "NVIDIA L40S", 46068 * MIB, 566 * MIB, []),
    gpu(2, "NVIDIA L40S", 46068 * MIB, 566 * MIB, [], error="GPU_IS_LOST"),
    gpu(3, "NVIDIA L40S", 46068 * MIB, 566 * MIB, [proc(4177, "python3", 1200)]),
]}
write("tests/fixtures/gpu-lost.yaml",
      "Four L40S, GPU 2 fallen off the bus: every NVML call on it raises GPU_IS_LOST.", lost)

old = {"driver_version": "470.239.06", "memory_v2": False, "gpus": [
    gpu(0, "Tesla T4", 15360 * MIB, 260 * MIB, [proc(880, "python3", 3500)])]}
write("tests/fixtures/no-memory-v2.yaml",
      "A driver older than the v2 memory call (R470): nvmlDeviceGetMemoryInfo_v2 raises FUNCTION_NOT_FOUND,\n"
      "the exporter falls back to v1, where 'used' includes the driver-reserved memory.", old)

container = {"driver_version": "580.159.04", "gpus": [
    gpu(0, "NVIDIA A10", 23028 * MIB, 442 * MIB, [proc(1, "", None), proc(57, "", None)]),
    gpu(1, "NVIDIA A10", 23028 * MIB, 442 * MIB, [proc(58, "", None, "graphics")]),
]}
# NVML cannot attribute memory to processes here; the GPU still shows it as used.
for g, used in zip(container["gpus"], (18000 * MIB, 900 * MIB)):
    g["memory"].update(used=used, free=g["memory"]["total"] - g["memory"]["reserved"] - used)
write("tests/fixtures/container-no-process-memory.yaml",
      "Inside a container without the host PID namespace: NVML lists processes but cannot say\n"
      "how much each uses (usedGpuMemory None), and their names are unknown.", container)

write("tests/fixtures/driver-not-loaded.yaml",
      "NVML present but the kernel driver is not loaded: nvmlInit raises DRIVER_NOT_LOADED.",
      {"driver_version": "", "nvml_error": "DRIVER_NOT_LOADED", "gpus": []})
