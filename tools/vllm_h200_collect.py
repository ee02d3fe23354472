#!/usr/bin/env python3
"""Turn one device run of ../shared/vllm-h200 (setup.txt, results.jsonl, log.txt) into one data file.

    python3 tools/vllm_h200_collect.py /work/.device/1 tests/data/vllm-h200/run-1.json
    python3 tools/vllm_h200_collect.py /work/.device/4 tests/data/vllm34-h100/run-1.json "tools/vllm34-kit, ..." \
        tools/vllm34-kit/payload/plan-1.json

With a plan, each case keeps what it was asked to run (``planned``): a replay then reads the arguments the
run had, not those of a plan file edited since.

Adds per case what the probe did not record itself but vLLM printed: whether torch.compile
compiled afresh or loaded its cache (the activation peak differs), and the engine's max_seq_len.
The full vLLM log goes beside it, gzipped.
"""
import gzip
import json
import re
import sys
from pathlib import Path


def main(src: str, dest: str, source: str = "../shared/vllm-h200 kit, run_probe.py on the device tool's nvidia-h200",
         plan: str | None = None) -> None:
    src_dir, out = Path(src), Path(dest)
    setup = (src_dir / "setup.txt").read_text()
    log = (src_dir / "log.txt").read_text()
    sections = dict(re.findall(r"\n?===== (\S+) \(rc=[^)]*\) =====\n(.*?)(?=\n===== |\Z)", log, re.S))
    planned = {c["name"]: c for c in json.loads(Path(plan).read_text())["cases"]} if plan else {}
    machine, cases = {}, []
    for line in (src_dir / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["name"] == "_machine":
            machine = rec
            continue
        text = sections.get(rec["name"], "")
        if "Directly load the compiled graph" in text:
            rec["compile"] = "cache-hit"
        elif "Compiling a graph for" in text:
            rec["compile"] = "fresh"
        m = re.search(r"max_seq_len=(\d+)", text)
        if m:
            rec["engine_max_seq_len"] = int(m.group(1))
        if rec["name"] in planned:
            rec["planned"] = planned[rec["name"]]
        cases.append(rec)
    smoke = re.search(r"vllm (\S+) torch (\S+) (.+?) \|", setup)
    # A later call on a warm machine skips the smoke test: the engine's own banner and the setup's torch line say it.
    engine = re.search(r"LLM engine \(v(\S+?)\)", log)
    torch = re.search(r"\btorch (\S+)", setup)
    nv = machine.get("nvml", {})
    doc = {
        "source": source,
        "gpu": nv.get("name"), "driver": nv.get("driver"),
        "vllm": smoke.group(1) if smoke else engine.group(1) if engine else None,
        "torch": smoke.group(2) if smoke else torch.group(1) if torch else None,
        "python": machine.get("python"),
        "nvml_idle": {k: nv.get(k) for k in ("total", "reserved", "free", "used")},
        "setup": setup, "cases": cases,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    with gzip.open(out.with_suffix(".log.gz"), "wt") as f:
        f.write(log)


if __name__ == "__main__":
    main(*sys.argv[1:5])
