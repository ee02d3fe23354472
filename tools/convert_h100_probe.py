"""Convert ../shared/fixtures/real/h100-nvml-probe.json (a probe of a real H100) into our fixture format.

Writes two fixtures: the idle reading and the loaded one (a second process holding 20 GiB).
Usage: python tools/convert_h100_probe.py PROBE.json OUTDIR
"""

import json
import sys
from pathlib import Path

import yaml

probe = json.loads(Path(sys.argv[1]).read_text())
names = {}
for line in probe.get("nvidia_smi_apps", "").splitlines()[1:]:
    pid, name, _ = (part.strip() for part in line.split(","))
    names[int(pid)] = name

for state in ("idle", "loaded"):
    gpus = []
    for g in probe[state]:
        mem = g["mem_v2"]
        gpus.append({
            "index": g["index"], "name": g["name"], "uuid": g["uuid"], "pci_bus_id": g["pci"],
            "memory": {k: mem[k] for k in ("total", "reserved", "used", "free")},
            "processes": [{"pid": p["pid"], "name": names.get(p["pid"], ""), "used": p["usedGpuMemory"]}
                          for p in g["compute_procs"]],
            "error": None,
        })
    doc = {"driver_version": probe["driver"], "gpus": gpus}
    header = (f"# Real NVIDIA H100 80GB HBM3, driver {probe['driver']}, converted from "
              f"shared/fixtures/real/h100-nvml-probe.json ({state}).\n")
    out = Path(sys.argv[2]) / f"h100-{state}.yaml"
    out.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110))
    print("wrote", out)
