"""Runs GPUStack's own VLLMResourceFitSelector offline on scenarios read from stdin (JSON lines).

This file runs inside a virtual environment that has gpustack==2.3.0 installed (`make conformance`
makes it); it is not part of vram_exporter and vram_exporter never imports it. For each scenario it
builds GPUStack's Worker, Model and ModelInstance objects, a local model directory (the real
config.json and a sparse weights file of the real size), and prints one JSON line:
{"id", "gpus": [...] or [], "overcommit", "claims": {...}, "message", "error"}.
"""

import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

logging.disable(logging.CRITICAL)

import gpustack_objects  # noqa: E402 - beside this file

from gpustack.config import Config  # noqa: E402
from gpustack.policies.candidate_selectors.vllm_resource_fit_selector import VLLMResourceFitSelector  # noqa: E402
from gpustack.policies.resource_view import ResourceView  # noqa: E402
from gpustack.schemas.models import (  # noqa: E402
    BackendEnum,
    CategoryEnum,
    ComputedResourceClaim,
    GPUSelector,
    Model,
    ModelInstance,
    ModelInstanceStateEnum,
    PlacementStrategyEnum,
    SourceEnum,
)

WORKER = "node"


def make_worker(scenario):
    return gpustack_objects.make_worker(1, WORKER, scenario["gpus"], scenario["system_reserved"])


def make_model(spec, directory, name):
    gpustack_objects.model_directory(directory, spec["config"], {"model.safetensors": spec["weights"]})
    gpu_selector = None
    if spec.get("pinned"):
        gpu_selector = GPUSelector(gpu_ids=[f"{WORKER}:cuda:{i}" for i in spec["pinned"]])
    return Model(
        id=spec.get("id", 1), name=name, source=SourceEnum.LOCAL_PATH, local_path=str(directory),
        backend=BackendEnum.VLLM, backend_parameters=spec["params"], env=spec.get("env") or None,
        replicas=1, cluster_id=1, categories=[CategoryEnum.LLM], gpu_selector=gpu_selector,
        placement_strategy=PlacementStrategyEnum.SPREAD, distributed_inference_across_workers=False,
    )


def placed_instances(scenario):
    return [
        ModelInstance.model_construct(
            id=100 + n, name=f"placed-{n}", model_id=100 + n, model_name=f"placed-{n}", worker_id=1,
            worker_name=WORKER, gpu_indexes=list(p["claims"].keys()), gpu_type="cuda",
            state=ModelInstanceStateEnum.RUNNING,
            computed_resource_claim=ComputedResourceClaim(vram={int(k): v for k, v in p["claims"].items()}, ram=0),
            distributed_servers=None,
        )
        for n, p in enumerate(scenario.get("placed", []))
    ]


async def decide(scenario, root):
    config = Config.model_construct(huggingface_token=None, cache_dir=str(root / "cache"))
    worker = make_worker(scenario)
    model = make_model(scenario["model"], root / f"model-{scenario['id']}", f"m{scenario['id']}")
    instances = placed_instances(scenario)
    try:
        selector = VLLMResourceFitSelector(config, model, instances, resource_view=ResourceView(instances))
        candidates = await selector.select_candidates([worker])
    except Exception as exc:  # GPUStack refuses the model (e.g. heads not divisible by TP)
        return {"id": scenario["id"], "gpus": [], "error": str(exc)}
    if not candidates:
        return {"id": scenario["id"], "gpus": [], "message": "\n".join(selector.get_messages())}
    best = candidates[0]
    return {"id": scenario["id"], "gpus": list(best.gpu_indexes), "overcommit": bool(best.overcommit),
            "candidates": [list(c.gpu_indexes) for c in candidates],
            "claims": {str(k): v for k, v in best.computed_resource_claim.vram.items()}}


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(await decide(json.loads(line), Path(tmp))), flush=True)


asyncio.run(main())
