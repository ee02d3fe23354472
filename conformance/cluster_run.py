"""Differential test over whole clusters: our scheduler replay against GPUStack 2.3.0's own classes.

Random clusters (1-4 workers of 1-8 GPUs, reservations, models created one by one with 1-3
replicas, vLLM or SGLang (its fraction given or GPUStack's default, --tp-size/--pp-size), embedding and
reranker models (--categories: GPUStack books the estimate for most under vLLM), g and TP/PP in
every spelling, spread or binpack, distributed inference on or off, the
claim override, gpu_selector in every shape: one GPU per replica across workers, more GPUs than a
replica needs, fewer than the world size, several workers; local directories with a
consolidated.safetensors beside the shards) are decided by GPUStack's own selector, scorer and pick
(conformance/gpustack_cluster.py, run in a virtual environment with gpustack==2.3.0) one instance
at a time, and by the exporter's replay of the same state (gpustack_source.replay_state, every
instance pending, so it decides them all in creation order as GPUStack's re-check would). Every
instance must agree: placed or pending, and when placed the same worker, GPUs and claims.

Usage: python conformance/cluster_run.py --gpustack-python .venv-gpustack/bin/python [--scenarios 200] [--seed 1]
       [--sglang 0.3] [--categories 0.3] [--per-replica 0.5]
Exit 0 when every instance agrees; prints the agreement per case kind either way.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from vram_exporter.sources.manifest import read_model_directory
from vram_exporter.sources.gpustack_api import GpuStackState, Model, ModelInstance, Worker
from vram_exporter.sources.gpustack_view import _requests, _specs, replay_state

sys.path.insert(0, str(Path(__file__).parent))
from run import CARDS_MIB, CATEGORY_MODELS, MODELS  # noqa: E402

MIB, GIB = 2**20, 2**30


def _worker(rng: random.Random, ident: int, card: int) -> dict:
    count = rng.choice([1, 1, 2, 2, 4, 8]) if rng.random() < 0.8 else rng.randint(1, 8)
    gpus = [card * MIB if rng.random() < 0.9 else rng.choice(CARDS_MIB) * MIB for _ in range(count)]
    return {"id": ident, "name": f"w{ident}", "gpus": gpus, "system_reserved": rng.choice([0, 0, 0, 1, 2]) * GIB}


def _params(rng: random.Random) -> list[str]:
    params: list[str] = []
    if rng.random() < 0.7:
        g = rng.choice([0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
        params.append(rng.choice([f"--gpu-memory-utilization={g}", f"--gpu-memory-utilization {g}"]))
    if rng.random() < 0.3:
        params.append(rng.choice(["--tensor-parallel-size=2", "--tensor-parallel-size=4", "-tp 2",
                                  "--tensor-parallel-size=8", "--pipeline-parallel-size=2",
                                  "--tensor-parallel-size=1"]))
    if rng.random() < 0.08:
        params.append(rng.choice(["--data-parallel-size=2", "--data-parallel-size=2 --data-parallel-hybrid-lb",
                                  "--data-parallel-size=4 --data-parallel-size-local=2 --data-parallel-hybrid-lb",
                                  "--data-parallel-size=2 --data-parallel-size-local=4"]))
    if rng.random() < 0.05:
        params.append("--distributed-executor-backend=mp")
    return params


def _sglang_params(rng: random.Random) -> list[str]:
    """SGLang's flags as GPUStack's SGLang selector reads them: its fraction (else its port of SGLang's
    default, sized for the smallest card) and the parallel sizes."""
    params: list[str] = []
    if rng.random() < 0.4:
        f = rng.choice([0.6, 0.7, 0.8, 0.85, 0.9])
        params.append(rng.choice([f"--mem-fraction-static={f}", f"--mem-fraction-static {f}"]))
    if rng.random() < 0.35:
        params.append(rng.choice(["--tp-size=2", "--tp-size 4", "--tensor-parallel-size=2", "--tp-size=8",
                                  "--pp-size=2", "--tp-size=1"]))
    return params


def _selection(rng: random.Random, workers: list[dict], replicas: int) -> tuple[list[str], str]:
    """gpu_ids in one of the shapes users write, and its kind."""
    every = [(w["name"], i) for w in workers for i in range(len(w["gpus"]))]
    shape = rng.choice(["per-replica", "more", "fewer", "workers", "one"])
    if shape == "per-replica":
        chosen = rng.sample(every, min(replicas, len(every)))
    elif shape == "more":
        chosen = rng.sample(every, min(len(every), replicas + rng.randint(1, 3)))
    elif shape == "workers" and len(workers) > 1:
        chosen = [(w["name"], i) for w in rng.sample(workers, 2) for i in range(len(w["gpus"]))]
    elif shape == "fewer":
        chosen = rng.sample(every, 1)
    else:
        shape, chosen = "one", rng.sample(every, 1)
    return [f"{name}:cuda:{index}" for name, index in chosen], shape


def _user_per_replica(rng: random.Random, spec: dict) -> int | None:
    """A gpus_per_replica the user gives, smaller than the GPUs selected per replica (GPUStack then uses it
    as given: set_model_gpus_per_replica fills it in only when it is unset)."""
    per_replica = len(spec["gpu_ids"]) // spec["replicas"]
    return rng.randint(1, per_replica - 1) if per_replica > 1 else None


def scenario(rng: random.Random, ident: int, sglang_share: float = 0.0, per_replica_share: float = 0.0,
             categories_share: float = 0.0) -> tuple[dict, set[str]]:
    card = rng.choice(CARDS_MIB)
    workers = [_worker(rng, i + 1, card if rng.random() < 0.7 else rng.choice(CARDS_MIB))
               for i in range(rng.choice([1, 2, 2, 3, 4]))]
    kinds = {"multi-worker cluster" if len(workers) > 1 else "one worker"}
    models = []
    for m in range(rng.randint(2, 6)):
        categories = None
        if categories_share and rng.random() < categories_share:
            _, weights, config = rng.choice(CATEGORY_MODELS)
            categories = [rng.choice(["embedding", "reranker"])]
        else:
            _, weights, config = rng.choice(MODELS)
        weights = int(weights * rng.choice([1, 1, 0.5, 0.25, 1.5, 3]))
        files = {"model.safetensors": weights}
        if rng.random() < 0.15:
            files = {"model-00001-of-00002.safetensors": weights // 2,
                     "model-00002-of-00002.safetensors": weights - weights // 2,
                     "consolidated.safetensors": weights}
            kinds.add("consolidated.safetensors")
        replicas = rng.choice([1, 1, 1, 2, 3])
        backend = "SGLang" if sglang_share and rng.random() < sglang_share else "vLLM"
        params = _sglang_params(rng) if backend == "SGLang" else _params(rng)
        spec = {"id": m + 1, "name": f"m{m + 1}", "config": config, "files": files, "params": params,
                "replicas": replicas, "strategy": rng.choice(["spread", "spread", "binpack"]), "backend": backend}
        kinds.add(f"backend: {backend}")
        if categories:
            spec["categories"] = categories
            kinds.add(f"category: {categories[0]} ({config['architectures'][0]})")
        if spec["strategy"] == "binpack":
            kinds.add("binpack")
        if rng.random() < 0.15:
            spec["distributed"] = False
        if rng.random() < 0.1:
            spec["env"] = {"GPUSTACK_MODEL_VRAM_CLAIM": str(rng.randrange(1 * GIB, 60 * GIB))}
        if rng.random() < 0.25:
            spec["gpu_ids"], shape = _selection(rng, workers, replicas)
            kinds.add(f"gpu_selector: {shape}")
            if rng.random() < 0.1:
                spec.setdefault("env", {})["GPUSTACK_SKIP_GPU_COUNT_CHECK"] = "1"
            if per_replica_share and rng.random() < per_replica_share and (given := _user_per_replica(rng, spec)):
                spec["gpus_per_replica"] = given
                kinds.add("gpu_selector: gpus_per_replica given, smaller")
        models.append(spec)
    return {"id": ident, "workers": workers, "models": models}, kinds


def state_of(s: dict, root: Path, per_replica: dict | None = None) -> GpuStackState:
    """The scenario as GPUStack's API shows it: ``per_replica``, each model's gpus_per_replica as GPUStack's
    evaluation filled it in (a live server's models carry it; SGLang's default fraction reads it)."""
    workers = [Worker.model_validate({
        "id": w["id"], "name": w["name"], "hostname": w["name"], "cluster_id": 1, "state": "ready",
        "system_reserved": {"vram": w["system_reserved"]},
        "status": {"gpu_devices": [{"index": i, "type": "cuda", "memory": {"total": t}} for i, t in enumerate(w["gpus"])]},
    }) for w in s["workers"]]
    models, instances, ident = [], [], 0
    for spec in s["models"]:
        directory = root / f"s{s['id']}" / spec["name"]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(spec["config"]))
        for name, size in spec["files"].items():
            with open(directory / name, "wb") as f:
                f.truncate(size)
        models.append(Model.model_validate({
            "id": spec["id"], "name": spec["name"], "cluster_id": 1, "backend": spec["backend"],
            "backend_parameters": spec["params"], "env": spec.get("env"), "replicas": spec["replicas"],
            "source": "local_path", "local_path": str(directory), "placement_strategy": spec["strategy"],
            "distributed_inference_across_workers": spec.get("distributed"),
            "categories": spec.get("categories", ["llm"]),
            "gpu_selector": {"gpu_ids": spec["gpu_ids"], "gpus_per_replica": spec.get("gpus_per_replica") or (per_replica or {}).get(spec["name"])}
            if spec.get("gpu_ids") else None,
        }))
        for _ in range(spec["replicas"]):
            ident += 1
            instances.append(ModelInstance.model_validate({"id": ident, "model_id": spec["id"], "state": "pending"}))
    return GpuStackState(tuple(workers), tuple(models), tuple(instances))


def ours(s: dict, root: Path, per_replica: dict | None = None) -> dict[int, dict]:
    state = state_of(s, root, per_replica)
    specs, unknown = _specs(state.models, None, read_model_directory)
    if unknown:
        raise SystemExit(f"scenario {s['id']}: {unknown}")
    verdicts = replay_state(state, _requests(state, specs))
    return {i: {"placed": v.placed, "worker": v.worker, "gpus": list(v.gpus), "overcommit": v.overcommit,
                "claims": {f"{w}:{g}": b for (w, g), b in v.claims.items()}, "reason": v.reason}
            for i, v in verdicts.items()}


def agree(mine: dict, theirs: dict) -> str | None:
    if mine["placed"] != theirs["placed"]:
        return (f"verdict: gpustack {'placed on ' + str(theirs.get('claims')) if theirs['placed'] else 'pending'}"
                f" ({theirs.get('message', '')[:300]!r}), ours {'placed on ' + str(mine['claims']) if mine['placed'] else 'pending'}"
                f" ({mine['reason'][:200]!r})")
    if not theirs["placed"]:
        return None
    if mine["worker"] != theirs["worker"] or sorted(mine["gpus"]) != sorted(theirs["gpus"]):
        return f"where: gpustack worker {theirs['worker']} GPUs {theirs['gpus']}, ours worker {mine['worker']} GPUs {mine['gpus']}"
    if mine["claims"] != theirs["claims"]:
        return f"claims: gpustack {theirs['claims']}, ours {mine['claims']}"
    if mine["overcommit"] != theirs["overcommit"]:
        return f"overcommit: gpustack {theirs['overcommit']}, ours {mine['overcommit']}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpustack-python", required=True, help="python of a venv with gpustack==2.3.0")
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sglang", type=float, default=0.0, metavar="SHARE",
                        help="the share of models served by SGLang (0: vLLM only, the scenarios of seed N as before)")
    parser.add_argument("--categories", type=float, default=0.0, metavar="SHARE",
                        help="the share of embedding and reranker models (0: none, the scenarios of seed N as before)")
    parser.add_argument("--per-replica", type=float, default=0.0, metavar="SHARE",
                        help="the share of manual selections with a user-given gpus_per_replica smaller than the "
                             "selection per replica (0: none, the scenarios of seed N as before)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    made = [scenario(rng, i, args.sglang, args.per_replica, args.categories) for i in range(args.scenarios)]
    driver = Path(__file__).with_name("gpustack_cluster.py")
    run = subprocess.run([args.gpustack_python, str(driver)], input="".join(json.dumps(s) + "\n" for s, _ in made),
                         capture_output=True, text=True, timeout=3000)
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return 2
    answers = {a["id"]: a for a in map(json.loads, run.stdout.splitlines())}
    per_kind: dict[str, Counter] = {}
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for s, kinds in made:
            mine = ours(s, Path(tmp), answers[s["id"]].get("gpus_per_replica"))
            theirs = answers[s["id"]]["instances"]
            bad = [(t["id"], problem) for t in theirs if (problem := agree(mine[t["id"]], t))]
            kinds = kinds | {"placed across workers"} if any(len({k.split(":")[0] for k in t.get("claims", {})}) > 1
                                                             for t in theirs) else kinds
            for kind in kinds | {"all"}:
                per_kind.setdefault(kind, Counter())["scenarios"] += 1
                per_kind[kind]["agree"] += not bad
            problems += [(s, ident, problem) for ident, problem in bad]
    total = per_kind["all"]
    instances = sum(len(answers[s["id"]]["instances"]) for s, _ in made)
    print(f"agreement with GPUStack 2.3.0's selector, scorer and pick over whole clusters: {total['agree']}/"
          f"{total['scenarios']} scenarios ({instances} instances; seed {args.seed}); by kind:")
    for kind, counts in sorted(per_kind.items()):
        print(f"  {kind}: {counts['agree']}/{counts['scenarios']}")
    for s, ident, problem in problems[:15]:
        print(f"  scenario {s['id']} instance {ident}: {problem}\n    {json.dumps(s)[:1500]}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
