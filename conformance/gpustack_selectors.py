"""Runs one of GPUStack 2.3.0's own selectors (VLLMResourceFitSelector, SGLangResourceFitSelector,
CustomBackendResourceFitSelector) offline on single-worker scenarios read from stdin (JSON lines).

Runs inside a virtual environment with gpustack==2.3.0 (`make conformance`); vram_exporter never
imports it. Each scenario names its "backend" ("vllm", "sglang" or "custom"); the model may carry a
"run_command" (custom). The model directory is real (config.json and a sparse weights file of the
real size), so GPUStack sizes it itself. Prints one JSON line per scenario: {"id", "gpus", "candidates", "claims",
"overcommit", "fraction", "message", "error"}; "fraction" is the --mem-fraction-static the SGLang
selector assumed for the GPU type.
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
from gpustack.policies.candidate_selectors.custom_backend_resource_fit_selector import (  # noqa: E402
    CustomBackendResourceFitSelector,
)
from gpustack.policies.candidate_selectors.sglang_resource_fit_selector import SGLangResourceFitSelector  # noqa: E402
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
SELECTORS = {"vllm": (VLLMResourceFitSelector, BackendEnum.VLLM),
             "sglang": (SGLangResourceFitSelector, BackendEnum.SGLANG),
             "custom": (CustomBackendResourceFitSelector, BackendEnum.CUSTOM)}


def make_worker(scenario):
    return gpustack_objects.make_worker(1, WORKER, scenario["gpus"], scenario["system_reserved"])


def make_model(spec, backend, directory, name):
    gpustack_objects.model_directory(directory, spec["config"], {"model.safetensors": spec["weights"]})
    gpu_selector = None
    if spec.get("pinned"):
        gpu_selector = GPUSelector(gpu_ids=[f"{WORKER}:cuda:{i}" for i in spec["pinned"]])
    return Model(
        id=spec.get("id", 1), name=name, source=SourceEnum.LOCAL_PATH, local_path=str(directory),
        backend=backend, backend_parameters=spec["params"], env=spec.get("env") or None,
        run_command=spec.get("run_command"), replicas=spec.get("replicas", 1), cluster_id=1,
        categories=[CategoryEnum(c) for c in spec.get("categories", ["llm"])], gpu_selector=gpu_selector,
        placement_strategy=PlacementStrategyEnum.SPREAD, distributed_inference_across_workers=False,
    )


def placed_instances(scenario):
    return [
        ModelInstance.model_construct(
            id=100 + n, name=f"placed-{n}", model_id=100 + n, model_name=f"placed-{n}", worker_id=1,
            worker_name=WORKER, gpu_indexes=[int(k) for k in p["claims"]], gpu_type="cuda",
            state=ModelInstanceStateEnum.RUNNING,
            computed_resource_claim=ComputedResourceClaim(vram={int(k): v for k, v in p["claims"].items()}, ram=0),
            distributed_servers=None,
        )
        for n, p in enumerate(scenario.get("placed", []))
    ]


async def decide(scenario, root):
    config = Config.model_construct(huggingface_token=None, cache_dir=str(root / "cache"))
    worker = make_worker(scenario)
    selector_class, backend = SELECTORS[scenario["backend"]]
    instances = placed_instances(scenario)
    try:
        model = make_model(scenario["model"], backend, root / f"model-{scenario['id']}", f"m{scenario['id']}")
        selector = selector_class(config, model, instances, resource_view=ResourceView(instances))
        candidates = await selector.select_candidates([worker])
    except Exception as exc:  # GPUStack refuses the model (e.g. heads not divisible by TP)
        return {"id": scenario["id"], "gpus": [], "error": str(exc)}
    fractions = getattr(selector, "_mem_fraction_static_by_gpu_type", {})
    answer = {"id": scenario["id"], "fraction": fractions.get("cuda")}
    if not candidates:
        return {**answer, "gpus": [], "message": "\n".join(selector.get_messages())}
    best = candidates[0]
    return {**answer, "gpus": list(best.gpu_indexes), "overcommit": bool(best.overcommit),
            "candidates": [list(c.gpu_indexes) for c in candidates],
            "all_claims": [{str(k): v for k, v in c.computed_resource_claim.vram.items()} for c in candidates],
            "claims": {str(k): v for k, v in best.computed_resource_claim.vram.items()}}


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(await decide(json.loads(line), Path(tmp))), flush=True)


asyncio.run(main())
