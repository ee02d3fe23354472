"""Differential test of the SGLang and custom-backend ports against GPUStack 2.3.0's own
SGLangResourceFitSelector and CustomBackendResourceFitSelector (run by gpustack_selectors.py).

Random single-node scenarios like run.py's for vLLM, with each backend's own knobs:
SGLang: --mem-fraction-static given or not (then GPUStack computes it per card), --tp-size/--tp/
--tensor-parallel-size, --pp-size, --dp-size with or without --enable-dp-attention,
--chunked-prefill-size, --cuda-graph-max-bs, --speculative-algorithm; custom: a run_command and
backend_parameters declaring --gpu-memory-utilization or --mem-fraction-static (sometimes twice,
sometimes out of range), or nothing. Required: the same verdict, GPU count, our GPUs among
GPUStack's candidates, the same claims on them, and (SGLang) the same fraction.
"""

from __future__ import annotations

import random

from vram_exporter.rules import backends
from vram_exporter.rules.model import Architecture, Cluster, ModelSpec
from vram_exporter.rules.node import fit_node
from vram_exporter.snapshot import GpuReading, MemoryReading, NodeSnapshot

MIB, GIB = 2**20, 2**30
# A vision model: GPUStack's SGLang fraction shrinks by its ViT (depth 32, hidden 1536: factor 0.95 x 0.8).
QWEN2_VL_7B = ("qwen2-vl-7b", 16_582_751_232, {
    "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "hidden_size": 3584,
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "torch_dtype": "bfloat16", "max_position_embeddings": 32768, "intermediate_size": 18944,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}})


def _common(rng: random.Random, cards, models) -> tuple[list[int], int, dict]:
    card = rng.choice(cards)
    count = rng.choice([1, 1, 2, 2, 3, 4])
    gpus = [card * MIB if rng.random() < 0.8 else rng.choice(cards) * MIB for _ in range(count)]
    _, weights, config = rng.choice(models)
    return gpus, int(weights * rng.choice([1, 1, 0.5, 0.25, 1.5])), config


def _placed(rng, gpus):
    placed = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        on = rng.sample(range(len(gpus)), rng.choice([1, 1, 2]) if len(gpus) > 1 else 1)
        pg = rng.choice([0.3, 0.45, 0.5, 0.9])
        placed.append({"gpus": sorted(on), "g": pg, "claims": {str(i): int(gpus[i] * pg) for i in sorted(on)}})
    return placed


def sglang_scenario(rng: random.Random, ident: int, cards, models) -> dict:
    gpus, weights, config = _common(rng, cards, [*models, QWEN2_VL_7B])
    params: list[str] = []
    if rng.random() < 0.4:
        mfs = round(rng.uniform(0.5, 0.95), 3)
        params += rng.choice([[f"--mem-fraction-static={mfs}"], [f"--mem-fraction-static {mfs}"],
                              ["--mem-fraction-static", str(mfs)]])
    if rng.random() < 0.35:
        params.append(rng.choice(["--tp-size=2", "--tp 2", "--tensor-parallel-size=4", "--tp-size 3", "--tp-size=1",
                                  "--pp-size=2", "--dp-size=2", "--dp 2 --enable-dp-attention"]))
    if rng.random() < 0.15:
        params.append(rng.choice(["--chunked-prefill-size=4096", "--chunked-prefill-size -1", "--cuda-graph-max-bs=64",
                                  "--speculative-algorithm EAGLE", "--speculative-algorithm=NGRAM"]))
    model = {"weights": weights, "params": params, "config": config}
    if rng.random() < 0.15:
        model["env"] = {"GPUSTACK_MODEL_VRAM_CLAIM": str(rng.randrange(1 * GIB, 100 * GIB))}
    if rng.random() < 0.15:
        model["pinned"] = sorted(rng.sample(range(len(gpus)), rng.choice([1, 1, 2]) if len(gpus) > 1 else 1))
        model["replicas"] = rng.choice([1, 1, 2])
    return {"id": ident, "backend": "sglang", "gpus": gpus, "system_reserved": rng.choice([0, 0, 1, 2]) * GIB,
            "model": model, "placed": _placed(rng, gpus)}


def custom_scenario(rng: random.Random, ident: int, cards, models) -> dict:
    gpus, weights, config = _common(rng, cards, models)
    value = lambda: str(round(rng.uniform(0.3, 0.98), 2))  # noqa: E731
    flag = lambda: rng.choice(["--gpu-memory-utilization", "--mem-fraction-static"])  # noqa: E731
    command = rng.choice([None, "my-engine serve /model", f"python -m engine {flag()} {value()}",
                          f"vllm serve /m {flag()}={value()} --port 8000"])
    params: list[str] = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        params += rng.choice([[f"{flag()}={value()}"], [f"{flag()} {value()}"], [flag(), value()],
                              ["--gpu-memory-utilization=1.5"], ["--max-model-len=4096"]])
    model = {"weights": weights, "params": params, "config": config, "run_command": command}
    if rng.random() < 0.15:
        model["env"] = {"GPUSTACK_MODEL_VRAM_CLAIM": str(rng.randrange(1 * GIB, 100 * GIB))}
    if rng.random() < 0.1:
        model["pinned"] = sorted(rng.sample(range(len(gpus)), rng.choice([1, 1, 2]) if len(gpus) > 1 else 1))
        model["replicas"] = rng.choice([1, 1, 2])
    return {"id": ident, "backend": "custom", "gpus": gpus, "system_reserved": rng.choice([0, 0, 1, 2]) * GIB,
            "model": model, "placed": _placed(rng, gpus)}


def ours(s: dict) -> dict:
    snapshot = NodeSnapshot("conformance", tuple(
        GpuReading(i, f"GPU-{i}", "GPU", "", MemoryReading(total, 0, total, 0, 2))
        for i, total in enumerate(s["gpus"])))
    arch = Architecture.from_config(s["model"]["config"])
    placed = [ModelSpec(f"placed-{n}", 1, arch, backend_parameters=(f"--gpu-memory-utilization={p['g']}",),
                        max_model_len=16, placed_on=tuple(p["gpus"]),
                        placed_claims={int(k): v for k, v in p["claims"].items()})
              for n, p in enumerate(s["placed"])]
    m = s["model"]
    candidate = ModelSpec("candidate", m["weights"], arch, backend_parameters=tuple(m["params"]),
                          env=m.get("env", {}), max_model_len=1024, backend=s["backend"], replicas=m.get("replicas", 1),
                          run_command=m.get("run_command"),
                          pinned_gpus=tuple(m["pinned"]) if m.get("pinned") else None)
    fit = fit_node(snapshot, Cluster(system_reserved_vram=s["system_reserved"]), [*placed, candidate]).models[-1]
    claims = {}
    if fit.schedulable and not fit.error:
        gpus = list(snapshot.gpus)
        booked = {i: 0 for i in range(len(s["gpus"]))}
        for p in s["placed"]:
            for k, v in p["claims"].items():
                booked[int(k)] += v
        place = backends.of(candidate.backend).fit.placement(candidate, Cluster(system_reserved_vram=s["system_reserved"]), gpus, booked)
        claims = {str(k): v for k, v in place.claims.items()} if place else {}
    pending = next((r.split("\n", 1)[1] for r in fit.reasons if r.startswith("GPUStack leaves it Pending")), "")
    return {"gpus": list(fit.gpus) if fit.schedulable else [], "error": fit.error, "overcommit": fit.overcommit,
            "fraction": fit.gmu_gpustack, "claims": claims, "message": pending}


def agree(mine: dict, theirs: dict, backend: str) -> str | None:
    if bool(theirs.get("error")) != bool(mine["error"]):
        return f"refusal: gpustack {theirs.get('error')!r}, ours {mine['error']!r}"
    if theirs.get("error"):
        return None
    if backend == "sglang" and theirs.get("fraction") is not None and abs(theirs["fraction"] - mine["fraction"]) > 1e-12:
        return f"--mem-fraction-static: gpustack {theirs['fraction']}, ours {mine['fraction']}"
    if bool(theirs["gpus"]) != bool(mine["gpus"]):
        return f"verdict: gpustack {theirs['gpus'] or 'pending'}, ours {mine['gpus'] or 'pending'}"
    if not theirs["gpus"]:
        said = [line for line in theirs.get("message", "").splitlines() if line.strip()]  # GPUStack's "- " lines
        ours = [line for line in mine["message"].splitlines() if line.strip()]
        if said != ours:
            return f"message: gpustack {said}, ours {ours}"
    if len(theirs["gpus"]) != len(mine["gpus"]):
        return f"GPU count: gpustack {theirs['gpus']}, ours {mine['gpus']}"
    if theirs["gpus"]:
        candidates = [sorted(c) for c in theirs.get("candidates", [theirs["gpus"]])]
        if sorted(mine["gpus"]) not in candidates:
            return f"our GPUs {mine['gpus']} are not among GPUStack's candidates {theirs.get('candidates')}"
        their_claims = theirs["all_claims"][candidates.index(sorted(mine["gpus"]))]
        if their_claims != mine["claims"]:
            return f"claims: gpustack {their_claims}, ours {mine['claims']}"
        if bool(theirs.get("overcommit")) != mine["overcommit"]:
            return f"overcommit: gpustack {theirs.get('overcommit')}, ours {mine['overcommit']}"
    return None
