"""GPUStack 2.3.0's own scheduler steps, offline, over whole clusters read from stdin (JSON lines).

Runs inside a virtual environment with gpustack==2.3.0 (`make conformance` makes it); vram_exporter
never imports it. For each scenario (workers with made-up GPUs, models created one by one) it does
what ``gpustack/scheduler/scheduler.py`` does for each new instance, with GPUStack's own classes:
``set_model_gpus_per_replica``, the ``GPUMatchingFilter``, the model's backend's selector
(``VLLMResourceFitSelector`` or ``SGLangResourceFitSelector``) ``select_candidates``,
the ``PlacementScorer`` (spread or binpack) and ``pick_highest_score_candidate``; a placed instance
then holds its claims (main and subordinate workers) for the ones after it. Model directories are
real (config.json and sparse weight files of the real sizes), so GPUStack sizes them itself.
Prints one JSON line per scenario: {"id", "instances": [{"id", "model", "placed", "worker",
"gpus", "claims": {"<worker>:<gpu>": bytes}, "overcommit", "message"}], "gpus_per_replica": {model: the
gpu_selector.gpus_per_replica GPUStack's evaluation filled in, as its API then shows it}}.
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
from gpustack.policies.candidate_selectors.sglang_resource_fit_selector import SGLangResourceFitSelector  # noqa: E402
from gpustack.policies.candidate_selectors.vllm_resource_fit_selector import VLLMResourceFitSelector  # noqa: E402
from gpustack.policies.resource_view import ResourceView  # noqa: E402
from gpustack.policies.scorers.placement_scorer import PlacementScorer  # noqa: E402
from gpustack.policies.worker_filters.gpu_matching_filter import GPUMatchingFilter  # noqa: E402
from gpustack.scheduler.scheduler import pick_highest_score_candidate, set_model_gpus_per_replica  # noqa: E402
from gpustack.schemas.models import (  # noqa: E402
    BackendEnum,
    CategoryEnum,
    ComputedResourceClaim,
    DistributedServers,
    GPUSelector,
    Model,
    ModelInstance,
    ModelInstanceStateEnum,
    ModelInstanceSubordinateWorker,
    PlacementStrategyEnum,
    SourceEnum,
)


def make_worker(spec):
    return gpustack_objects.make_worker(spec["id"], spec["name"], spec["gpus"], spec["system_reserved"])


def make_model(spec, directory):
    gpustack_objects.model_directory(directory, spec["config"], spec["files"])
    selector = GPUSelector(gpu_ids=spec["gpu_ids"], gpus_per_replica=spec.get("gpus_per_replica")) if spec.get("gpu_ids") else None
    return Model(
        id=spec["id"], name=spec["name"], source=SourceEnum.LOCAL_PATH, local_path=str(directory),
        backend=BackendEnum(spec.get("backend", "vLLM")), backend_parameters=spec["params"], env=spec.get("env") or None,
        replicas=spec["replicas"], cluster_id=1, categories=[CategoryEnum(c) for c in spec.get("categories", ["llm"])],
        gpu_selector=selector,
        placement_strategy=PlacementStrategyEnum(spec["strategy"]),
        # The API validates a ModelCreate, whose set_defaults turns None into True for vLLM and SGLang; a table
        # Model built directly skips validators, so the default is applied here.
        distributed_inference_across_workers=spec.get("distributed", True),
    )


def placed_instance(ident, model, candidate):
    subordinates = [
        ModelInstanceSubordinateWorker(
            worker_id=sw.worker_id, worker_name=sw.worker_name, worker_ip=sw.worker_ip, total_gpus=sw.total_gpus,
            gpu_type=sw.gpu_type, gpu_indexes=sw.gpu_indexes, computed_resource_claim=sw.computed_resource_claim)
        for sw in candidate.subordinate_workers or []
    ]
    # Built as the database loads it (not model_construct): a selector reads instance.model, a relationship
    # SQLAlchemy instruments only on a constructed instance (_validate_distributed_limit_per_worker).
    instance = ModelInstance(
        id=ident, name=f"{model.name}-{ident}", model_id=model.id, model_name=model.name,
        worker_id=candidate.worker.id, worker_name=candidate.worker.name, gpu_indexes=list(candidate.gpu_indexes),
        gpu_type="cuda", state=ModelInstanceStateEnum.SCHEDULED,
        computed_resource_claim=ComputedResourceClaim(vram=dict(candidate.computed_resource_claim.vram), ram=0),
        distributed_servers=DistributedServers(subordinate_workers=subordinates) if subordinates else None,
    )
    instance.model = model
    return instance


def claims_of(candidate):
    claims = {f"{candidate.worker.id}:{k}": v for k, v in candidate.computed_resource_claim.vram.items()}
    for sw in candidate.subordinate_workers or []:
        claims.update({f"{sw.worker_id}:{k}": v for k, v in sw.computed_resource_claim.vram.items()})
    return claims


async def decide(config, model, workers, instances):
    """find_candidate without the database: its GPU-selector filter, selector, placement scorer, pick."""
    workers, _ = await GPUMatchingFilter(model).filter(workers)
    if not workers:
        return None, "no worker matches the gpu selector"
    view = ResourceView(instances)
    try:
        selectors = {BackendEnum.VLLM: VLLMResourceFitSelector, BackendEnum.SGLANG: SGLangResourceFitSelector}
        selector = selectors[BackendEnum(model.backend)](config, model, instances, resource_view=view)
        candidates = await selector.select_candidates(workers)
    except Exception as exc:  # GPUStack leaves the instance pending with this message
        return None, f"error: {exc}"
    if len(candidates) > 1:  # (a lone candidate is picked whatever its score; binpack would read the database
        # for subordinate workers, and a candidate with subordinates always comes alone)
        candidates = await PlacementScorer(model, instances, resource_view=view).score(candidates)
    candidate = pick_highest_score_candidate(candidates)
    if candidate is None:
        return None, "\n".join(selector.get_messages())
    return candidate, ""


async def run(scenario, root):
    config = Config.model_construct(huggingface_token=None, cache_dir=str(root / "cache"))
    workers = [make_worker(w) for w in scenario["workers"]]
    instances, out, ident, per_replica = [], [], 0, {}
    for spec in scenario["models"]:
        model = make_model(spec, root / f"s{scenario['id']}" / spec["name"])
        set_model_gpus_per_replica(model)
        per_replica[spec["name"]] = model.gpu_selector.gpus_per_replica if model.gpu_selector else None
        for _ in range(spec["replicas"]):
            ident += 1
            # A fresh list each time, as Worker.all gives find_candidate one: the SGLang selector sorts the list
            # it is handed in place (sort_workers_by_gpu_count), which must not reorder the next decisions.
            candidate, message = await decide(config, model, list(workers), instances)
            if candidate is None:
                out.append({"id": ident, "model": spec["name"], "placed": False, "message": message})
                continue
            instances.append(placed_instance(ident, model, candidate))
            out.append({"id": ident, "model": spec["name"], "placed": True, "worker": candidate.worker.id,
                        "gpus": list(candidate.gpu_indexes), "claims": claims_of(candidate),
                        "overcommit": bool(candidate.overcommit),
                        "gpus_per_replica": model.gpu_selector.gpus_per_replica if model.gpu_selector else None})
    return {"id": scenario["id"], "instances": out, "gpus_per_replica": per_replica}


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(await run(json.loads(line), Path(tmp))), flush=True)


asyncio.run(main())
