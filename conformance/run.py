"""Differential test: our Rulebook A against GPUStack 2.3.0's own VLLMResourceFitSelector.

Generates random but realistic single-node scenarios (cards of 6-141 GiB, 1-4 GPUs, reservations
0-2 GiB, g from 0.5 to 0.95 in every spelling, TP/PP flags, instances already placed, the claim
override, manual pinning), asks GPUStack's selector (conformance/gpustack_selectors.py, run in a
virtual environment with gpustack==2.3.0) and our rulebook, and requires the same verdict
(scheduled or pending, or refused) and the same number of GPUs; our GPU must be one of GPUStack's
candidates (which one among equals is the placement strategy's choice).

Usage: python conformance/run.py --gpustack-python .venv-gpustack/bin/python [--scenarios 500] [--seed 1]
Exit 0 when every scenario agrees; prints the agreement figure either way.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from vram_exporter.rules.model import Architecture, Cluster, ModelSpec
from vram_exporter.rules.node import fit_node
from vram_exporter.snapshot import GpuReading, MemoryReading, NodeSnapshot

MIB, GIB = 2**20, 2**30
CARDS_MIB = [6138, 8192, 12288, 16384, 23028, 24564, 40960, 46068, 49140, 81559, 97871, 143771]
# Real configs (as their config.json give them) with their bf16 weight sizes in bytes.
MODELS = [
    ("qwen2.5-1.5b", 3_087_467_144, {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
     "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_size": 1536,
     "vocab_size": 151936, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}),
    ("qwen2.5-7b", 15_231_233_024, {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
     "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
     "vocab_size": 152064, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}),
    ("llama-3.1-8b", 16_060_522_496, {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
     "vocab_size": 128256, "torch_dtype": "bfloat16", "max_position_embeddings": 131072}),
    ("qwen2.5-32b", 65_527_752_704, {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
     "num_hidden_layers": 64, "num_attention_heads": 40, "num_key_value_heads": 8, "hidden_size": 5120,
     "vocab_size": 152064, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}),
    ("llama-3.1-70b", 141_107_412_992, {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
     "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_size": 8192,
     "vocab_size": 128256, "torch_dtype": "bfloat16", "max_position_embeddings": 131072}),
    ("mistral-7b", 14_483_464_192, {"architectures": ["MistralForCausalLM"], "model_type": "mistral",
     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
     "vocab_size": 32768, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}),
]
# Models GPUStack books by category (rules/categories.py): an encoder-only embedding model, a decoder one it
# books the same way, and a Qwen3 one it books at g like an LLM. Weights: their float32 / bf16 sizes.
CATEGORY_MODELS = [
    ("bge-large-en-v1.5", 1_340_616_616, {"architectures": ["BertModel"], "model_type": "bert",
     "num_hidden_layers": 24, "num_attention_heads": 16, "hidden_size": 1024, "intermediate_size": 4096,
     "vocab_size": 30522, "torch_dtype": "float32", "max_position_embeddings": 512}),
    ("gte-qwen2-7b", 15_231_233_024, {"architectures": ["Qwen2Model"], "model_type": "qwen2",
     "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
     "vocab_size": 151646, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}),
    ("qwen3-embedding-8b", 15_133_989_888, {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
     "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
     "head_dim": 128, "vocab_size": 151665, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}),
]


def scenario(rng: random.Random, ident: int) -> dict:
    card = rng.choice(CARDS_MIB)
    count = rng.choice([1, 1, 2, 2, 3, 4])
    gpus = [card * MIB if rng.random() < 0.8 else rng.choice(CARDS_MIB) * MIB for _ in range(count)]
    categories = ["llm"]
    if rng.random() < 0.25:  # a non-LLM model: GPUStack books the estimate unless g is given or it is Qwen3
        _, weights, config = rng.choice(CATEGORY_MODELS)
        categories = [rng.choice(["embedding", "reranker", "embedding"])]
    else:
        _, weights, config = rng.choice(MODELS)
    weights = int(weights * rng.choice([1, 1, 0.5, 0.25, 1.5]))
    params: list[str] = []
    g = round(rng.uniform(0.5, 0.95), 2)
    spelling = rng.choice(["eq", "space", "items", "underscore", "absent"] + ["absent"] * (categories != ["llm"]))
    params += {"eq": [f"--gpu-memory-utilization={g}"], "space": [f"--gpu-memory-utilization {g}"],
               "items": ["--gpu-memory-utilization", str(g)], "underscore": [f"--gpu_memory_utilization={g}"],
               "absent": []}[spelling]
    if rng.random() < 0.3:
        params.append(rng.choice(["--tensor-parallel-size=1", "--tensor-parallel-size=2", "-tp 2",
                                  "--tensor-parallel-size=4", "--tensor-parallel-size 3",
                                  "--pipeline-parallel-size=2"]))
    model = {"weights": weights, "params": params, "config": config}
    if rng.random() < 0.2:
        model["env"] = {"GPUSTACK_MODEL_VRAM_CLAIM": str(rng.randrange(1 * GIB, 100 * GIB))}
    if categories != ["llm"]:
        model["categories"] = categories
    if rng.random() < 0.1:
        model["pinned"] = [rng.randrange(count)]
    elif rng.random() < 0.05 and count > 1:
        model["pinned"] = sorted(rng.sample(range(count), rng.choice([2, count])))
    placed = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        on = rng.sample(range(count), rng.choice([1, 1, 2]) if count > 1 else 1)
        pg = rng.choice([0.3, 0.45, 0.5, 0.9])
        placed.append({"gpus": sorted(on), "g": pg, "claims": {str(i): int(gpus[i] * pg) for i in sorted(on)}})
    return {"id": ident, "gpus": gpus, "system_reserved": rng.choice([0, 0, 1, 2]) * GIB,
            "model": model, "placed": placed}


def ours(s: dict) -> dict:
    snapshot = NodeSnapshot("conformance", tuple(
        GpuReading(i, f"GPU-{i}", "GPU", "", MemoryReading(total, 0, total, 0, 2))
        for i, total in enumerate(s["gpus"])))
    arch = Architecture.from_config(s["model"]["config"])
    placed = [ModelSpec(f"placed-{n}", 1, arch, backend_parameters=(f"--gpu-memory-utilization={p['g']}",),
                        max_model_len=16, placed_on=tuple(p["gpus"])) for n, p in enumerate(s["placed"])]
    m = s["model"]
    candidate = ModelSpec("candidate", m["weights"], arch, backend_parameters=tuple(m["params"]),
                          env=m.get("env", {}), max_model_len=min(1024, arch.max_position_embeddings or 1024),
                          pinned_gpus=tuple(m["pinned"]) if m.get("pinned") else None,
                          categories=tuple(m.get("categories", ["llm"])))
    fit = fit_node(snapshot, Cluster(system_reserved_vram=s["system_reserved"]), [*placed, candidate]).models[-1]
    claims = {str(f.index): f.take.claim for f in fit.per_gpu if f.take is not None and f.index in fit.gpus}
    return {"gpus": list(fit.gpus) if fit.schedulable else [], "error": fit.error, "overcommit": fit.overcommit,
            "claims": claims}


def agree(mine: dict, theirs: dict) -> str | None:
    """None when the verdicts agree, else what differs."""
    if bool(theirs.get("error")) != bool(mine["error"]):
        return f"refusal: gpustack {theirs.get('error')!r}, ours {mine['error']!r}"
    if theirs.get("error"):
        return None
    if bool(theirs["gpus"]) != bool(mine["gpus"]):
        return f"verdict: gpustack {theirs['gpus'] or 'pending'}, ours {mine['gpus'] or 'pending'}"
    if len(theirs["gpus"]) != len(mine["gpus"]):
        return f"GPU count: gpustack {theirs['gpus']}, ours {mine['gpus']}"
    if theirs["gpus"]:
        if sorted(mine["gpus"]) not in [sorted(c) for c in theirs.get("candidates", [theirs["gpus"]])]:
            return f"our GPUs {mine['gpus']} are not among GPUStack's candidates {theirs.get('candidates')}"
        if bool(theirs.get("overcommit")) != mine["overcommit"]:
            return f"overcommit: gpustack {theirs.get('overcommit')}, ours {mine['overcommit']}"
        claims = dict(zip(map(tuple, map(sorted, theirs.get("candidates", []))), theirs.get("all_claims", [])))
        expected = claims.get(tuple(sorted(mine["gpus"])), theirs.get("claims"))
        if expected != mine["claims"]:
            return f"claims on {mine['gpus']}: gpustack {expected}, ours {mine['claims']}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpustack-python", required=True, help="python of a venv with gpustack==2.3.0")
    parser.add_argument("--scenarios", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--selector", choices=["vllm", "sglang", "custom"], default="vllm",
                        help="which of GPUStack's selectors to compare with (sglang, custom: backends.py)")
    args = parser.parse_args()
    if args.selector != "vllm":
        return backends_main(args)
    rng = random.Random(args.seed)
    scenarios = [{**scenario(rng, i), "backend": "vllm"} for i in range(args.scenarios)]
    return compare(args, scenarios, "VLLMResourceFitSelector", lambda s, theirs: agree(ours(s), theirs))


def compare(args, scenarios: list[dict], selector: str, agreement) -> int:
    """GPUStack's answers (gpustack_selectors.py in its own venv) against ours, with the figure by kind."""
    driver = Path(__file__).with_name("gpustack_selectors.py")
    run = subprocess.run([args.gpustack_python, str(driver)], input="".join(json.dumps(s) + "\n" for s in scenarios),
                         capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return 2
    answers = {a["id"]: a for a in map(json.loads, run.stdout.splitlines())}
    disagreements = []
    kinds = {"scheduled": 0, "pending": 0, "refused": 0, "multi-GPU": 0, "overcommit": 0}
    for s in scenarios:
        theirs = answers[s["id"]]
        kinds["refused" if theirs.get("error") else "scheduled" if theirs["gpus"] else "pending"] += 1
        kinds["multi-GPU"] += len(theirs.get("gpus", [])) > 1
        kinds["overcommit"] += bool(theirs.get("overcommit"))
        if problem := agreement(s, theirs):
            disagreements.append((s, problem))
    total = len(scenarios)
    print(f"agreement with GPUStack 2.3.0's {selector}: {total - len(disagreements)}/{total} scenarios "
          f"(seed {args.seed}; GPUStack: " + ", ".join(f"{v} {k}" for k, v in kinds.items()) + ")")
    for s, problem in disagreements[:20]:
        print(f"  scenario {s['id']}: {problem}\n    {json.dumps(s)}")
    return 0 if not disagreements else 1


def backends_main(args) -> int:
    """The SGLang or custom-backend selector against our port (conformance/backends.py)."""
    import backends
    rng = random.Random(args.seed)
    make = backends.sglang_scenario if args.selector == "sglang" else backends.custom_scenario
    scenarios = [make(rng, i, CARDS_MIB, MODELS) for i in range(args.scenarios)]
    name = {"sglang": "SGLangResourceFitSelector", "custom": "CustomBackendResourceFitSelector"}[args.selector]
    return compare(args, scenarios, name, lambda s, theirs: backends.agree(backends.ours(s), theirs, args.selector))


if __name__ == "__main__":
    sys.exit(main())
