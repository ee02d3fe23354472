#!/usr/bin/env bash
# Verify vram-exporter against a real NVIDIA driver (run on a GPU machine; writes into $OUT).
# Idle, then with two processes holding memory (20 GiB; 4 GiB + cuBLAS), compares the exporter's
# /metrics with nvidia-smi, captures a fixture, and times one NVML collection against nvidia-smi.
set -u
OUT=${OUT:-/tmp/vram-verify}; mkdir -p "$OUT"
PORT=${PORT:-19845}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m vram_exporter.cli --web.listen-address 127.0.0.1:$PORT >"$OUT/exporter.log" 2>&1 &
EXPORTER=$!
trap 'kill $EXPORTER ${HOLDERS:-} 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf localhost:$PORT/-/healthy >/dev/null && break; sleep 0.1; done

smi() {  # $1 = label
  nvidia-smi --query-gpu=index,uuid,name,pci.bus_id,driver_version,memory.total,memory.reserved,memory.used,memory.free \
    --format=csv,noheader,nounits >"$OUT/$1-smi-gpu.csv"
  nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_memory --format=csv,noheader,nounits >"$OUT/$1-smi-apps.csv"
}
snap() { curl -s localhost:$PORT/metrics >"$OUT/$1.prom"; smi "$1"; curl -s localhost:$PORT/metrics >"$OUT/$1-after.prom"; }

snap idle
# Two processes holding memory: 20 GiB, and 4 GiB plus cuBLAS handles (what vLLM creates early).
hold() {  # $1 = GiB, $2 = 1 to create cuBLAS handles, $3 = log file
  python3 - "$1" "$2" >"$3" 2>&1 <<'PY' &
import sys, time, torch
gib, cublas = int(sys.argv[1]), int(sys.argv[2])
x = torch.empty(gib * 2**30, dtype=torch.uint8, device="cuda")
if cublas:
    a = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16); (a @ a).sum().item()
print("ready", torch.cuda.mem_get_info(), flush=True); time.sleep(600)
PY
  HOLDERS="${HOLDERS:-} $!"
}
hold 20 0 "$OUT/holder1.log"
hold 4 1 "$OUT/holder2.log"
for _ in $(seq 300); do grep -q ready "$OUT/holder1.log" && grep -q ready "$OUT/holder2.log" && break; sleep 0.2; done
sleep 1
snap loaded
python3 -m vram_exporter.cli capture -o "$OUT/h100-captured.yaml" 2>>"$OUT/exporter.log"
curl -s localhost:$PORT/ >"$OUT/landing.html"

# One NVML collection (what a scrape does) against one nvidia-smi query, side by side.
python3 - >"$OUT/timing.json" <<'PY'
import json, statistics, subprocess, time
from vram_exporter.sources.nvml import NvmlReader
reader = NvmlReader(); reader.read()
def times(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return sorted(out)
nvml = times(reader.read, 500)
smi = times(lambda: subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.total,memory.used,memory.free",
                                    "--format=csv,noheader,nounits"], capture_output=True, check=True), 20)
q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))]
print(json.dumps({"nvml_read_us": {"p50": q(nvml, .5) * 1e6, "p99": q(nvml, .99) * 1e6, "n": len(nvml)},
                  "nvidia_smi_ms": {"p50": q(smi, .5) * 1e3, "p99": q(smi, .99) * 1e3, "n": len(smi)},
                  "ratio_p50": q(smi, .5) / q(nvml, .5)}, indent=1))
PY
nvidia-smi >"$OUT/nvidia-smi.txt"
echo done
