"""How long one GPUStack refresh costs the exporter beyond fetching: parsing the API's JSON pages
(pydantic) next to building the view from them (node view + the scheduler replayed over every worker).

A synthetic cluster shaped like the recorded real one (tests/fixtures/gpustack), scaled up:
WORKERS workers of 8 GPUs, MODELS models of 1-2 replicas, most placed, some pending.

    .venv/bin/python benchmarks/gpustack_view.py [WORKERS] [MODELS]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vram_exporter.sources.gpustack_api import GpuStackState, parse_page  # noqa: E402
from vram_exporter.sources.gpustack_view import build_view  # noqa: E402

QWEN = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
        "vocab_size": 152064, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}
MIB = 2**20


def documents(workers: int, models: int) -> dict[str, dict]:
    gpus = lambda: [{"index": i, "uuid": f"GPU-{i}", "memory": {"total": 81559 * MIB, "allocated": 0}}  # noqa: E731
                    for i in range(8)]
    worker_items = [{"id": w, "name": f"node-{w}", "hostname": f"node-{w}", "cluster_id": 1, "state": "ready",
                     "labels": {}, "system_reserved": {"vram": 0}, "status": {"gpu_devices": gpus()}}
                    for w in range(1, workers + 1)]
    model_items, instances = [], []
    slots = [(w, g) for w in range(1, workers + 1) for g in range(8)]
    for m in range(1, models + 1):
        replicas = 1 + m % 2
        model_items.append({"id": m, "name": f"model-{m}", "cluster_id": 1, "backend": "vLLM", "replicas": replicas,
                            "backend_parameters": ["--gpu-memory-utilization=0.9"], "env": {},
                            "local_path": f"/models/model-{m}"})
        for _ in range(replicas):
            if slots:
                worker, gpu = slots.pop(0)
                instances.append({"id": len(instances) + 1, "model_id": m, "state": "running", "worker_id": worker,
                                  "gpu_indexes": [gpu],
                                  "computed_resource_claim": {"vram": {str(gpu): int(81559 * MIB * 0.9)}}})
            else:
                instances.append({"id": len(instances) + 1, "model_id": m, "state": "pending"})
    page = lambda items: {"items": items, "pagination": {"totalPage": 1}}  # noqa: E731
    return {"workers": page(worker_items), "models": page(model_items), "model-instances": page(instances)}


def timed(fn, repeat: int = 7) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    models = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    docs = documents(workers, models)
    raw = {kind: json.dumps(doc) for kind, doc in docs.items()}

    def parse() -> GpuStackState:
        return GpuStackState(*(tuple(parse_page(kind, json.loads(raw[kind]))[0])
                               for kind in ("workers", "models", "model-instances")))

    state = parse()

    def view():
        return build_view(state, worker_name="node-1", source="bench", read_model=lambda path: (QWEN, 15231233024))

    result = view()
    pending = sum(v.gpustack_pending for v in result.verdicts)
    agree = all(v.predicted_pending == v.gpustack_pending for v in result.verdicts)
    t_parse, t_view = timed(parse), timed(view)
    print(f"{workers} workers x 8 GPUs, {models} models, {len(state.instances)} instances ({pending} pending), "
          f"prediction agrees with the made-up verdicts: {agree}")
    print(f"parse JSON pages (pydantic): {t_parse * 1000:8.1f} ms")
    print(f"build view (node + replay):  {t_view * 1000:8.1f} ms   ratio view/parse {t_view / t_parse:.2f}")


if __name__ == "__main__":
    main()
