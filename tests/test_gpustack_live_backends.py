"""SGLang and Custom-backend models on a real GPUStack 2.3.0 server (issue 15), beside vLLM ones: GPUStack's
own selectors decide, the exporter predicts every model's pending instances and every GPU's claims.
The same server and helpers as tests/test_gpustack_live.py (its ``live`` fixture, one server per module)."""

from __future__ import annotations

import pytest

from gpustack_live.harness import wait_for
from test_gpustack_live import (QWEN_1_5B, QWEN_1_5B_WEIGHTS, QWEN_7B, QWEN_7B_WEIGHTS, assert_agrees, by_model,
                                gpustack_pending, live, samples)

pytestmark = pytest.mark.gpustack_live
__all__ = ["live"]  # the fixture, imported for pytest
MIB = 2**20


def create(live, cluster: int, name: str, backend: str, path, *, params=(), run_command=None, env=None,
           gpu_ids=None, replicas: int = 1) -> int:
    """A model of any backend (the harness's create_model makes vLLM ones), its decision awaited."""
    body = {"name": name, "source": "local_path", "local_path": str(path), "backend": backend, "replicas": replicas,
            "cluster_id": cluster, "backend_parameters": list(params), "env": env or {}, "categories": ["llm"]}
    if run_command is not None:
        body["run_command"] = run_command
    if gpu_ids:
        body["gpu_selector"] = {"gpu_ids": gpu_ids}
    model_id = live.server.request("POST", "/v2/models", body)["id"]
    wait_for(lambda: live.server.decided(model_id, replicas), f"GPUStack's decision on {name}")
    return model_id


def claims(live, model_id: int) -> list[dict[str, int]]:
    return [i["computed_resource_claim"]["vram"] for i in live.server.instances(model_id)
            if i["state"] == "scheduled"]


def test_cluster_mixing_vllm_sglang_and_custom_models(live):
    """One worker, three 24564 MiB GPUs: vLLM books 90 % of one, SGLang 84.7 % (GPUStack's port of SGLang's
    default for that card) of another, a custom backend declaring a fraction twice books max(E, the last
    one) on the third, and what is left is too little for the next SGLang model."""
    cluster = live.cluster("mixed")
    worker = live.worker(cluster, "mixed-node", [24564, 24564, 24564])
    qwen = live.model("mixed-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS)
    models = {
        "mixed-vllm": live.server.create_model(cluster, "mixed-vllm", qwen),
        "mixed-sglang": create(live, cluster, "mixed-sglang", "SGLang", qwen),
        "mixed-custom": create(live, cluster, "mixed-custom", "Custom", qwen, params=["--mem-fraction-static=0.1"],
                               run_command="python -m engine --gpu-memory-utilization 0.5"),
        "mixed-sglang-2": create(live, cluster, "mixed-sglang-2", "SGLang", qwen),
    }
    total = 24564 * MIB
    assert [list(c.values()) for c in claims(live, models["mixed-sglang"])] == [[int(total * 0.847)]]
    # max(E, int(T x 0.1)): the last flag (0.1, from the parameters) is below the estimate, so E.
    assert list(claims(live, models["mixed-custom"])[0].values()) == [int(QWEN_1_5B_WEIGHTS * 1.2) + 2 * 2**30]
    assert gpustack_pending(live.server, models["mixed-sglang-2"]) == 1
    text = assert_agrees(live, worker, models)
    readers = {(dict(labels)["model"], dict(labels)["reader"]): value
               for labels, value in samples(text, "vram_model_gpu_memory_utilization").items()}
    assert readers[("mixed-sglang", "gpustack")] == readers[("mixed-sglang", "sglang")] == 0.847
    assert readers[("mixed-custom", "gpustack")] == 0.1 and ("mixed-custom", "vllm") not in readers
    note = live.server.instances(models["mixed-sglang-2"])[0]["state_message"]
    assert "With --mem-fraction-static=0.847" in note


def test_sglang_on_the_seed_card_is_pending_with_gpustacks_words(live):
    """6138 MiB: GPUStack assumes --mem-fraction-static 0.393 there (2048 x 1.5 + 8 x 2 + 512 + 128 MiB
    reserved), so 0.393 x 5.99 GiB cannot hold the 5.45 GiB estimate."""
    cluster = live.cluster("sglang-seed")
    worker = live.worker(cluster, "sglang-seed-node", [6138])
    path = live.model("sglang-seed", QWEN_1_5B, QWEN_1_5B_WEIGHTS)
    model_id = create(live, cluster, "sglang-seed", "SGLang", path)
    assert gpustack_pending(live.server, model_id) == 1
    text = assert_agrees(live, worker, {"sglang-seed": model_id})
    note = live.server.instances(model_id)[0]["state_message"]
    assert "With --mem-fraction-static=0.393, all GPUs combined need to provide at least 13.87 GiB" in note
    assert by_model(text, "vram_model_schedulable") == {"sglang-seed": 0}
    fixed = create(live, cluster, "sglang-seed-fixed", "SGLang", path, params=["--mem-fraction-static=0.95"])
    assert gpustack_pending(live.server, fixed) == 0
    assert_agrees(live, worker, {"sglang-seed": model_id, "sglang-seed-fixed": fixed})


def test_sglang_fraction_comes_from_the_smallest_card_of_the_cluster(live):
    """GPUStack computes SGLang's default for the smallest GPU of the type among the workers: with a
    16 GiB card in the cluster, a model on the 80 GiB card books 0.772 of it, not 0.835. SGLang takes the
    same 0.772: GPUStack 2.3.0's worker passes its booked fraction as --mem-fraction-static when the model
    names none (gpustack/worker/backends/sglang.py), so SGLang's own default for the card never decides."""
    cluster = live.cluster("sglang-hetero")
    small = live.worker(cluster, "hetero-small", [16384])
    big = live.worker(cluster, "hetero-big", [81559])
    path = live.model("hetero-qwen7b", QWEN_7B, QWEN_7B_WEIGHTS)
    model_id = create(live, cluster, "hetero-qwen7b", "SGLang", path)  # 20.2 GiB: only the big card holds it
    [instance] = live.server.instances(model_id)
    assert instance["state"] == "scheduled" and instance["worker_name"] == "hetero-big"
    assert instance["computed_resource_claim"]["vram"] == {"0": int(81559 * MIB * 0.772)}
    assert_agrees(live, small, {"hetero-qwen7b": model_id})
    text = assert_agrees(live, big, {"hetero-qwen7b": model_id})
    readers = {dict(labels)["reader"]: value for labels, value in samples(text, "vram_model_gpu_memory_utilization")
               .items() if dict(labels)["model"] == "hetero-qwen7b"}
    assert readers == {"gpustack": 0.772, "sglang": 0.772}  # what GPUStack books is what it passes


def test_sglang_tensor_parallel_and_custom_multi_gpu(live):
    """--tp-size 4 takes four 12 GiB GPUs at int(T x 0.665) each (TP 4 raises GPUStack's reserve; at TP 2
    0.686 x 2 cards would not hold the 20.3 GiB estimate); a custom backend without a fraction then spreads
    E over every GPU of the worker, the busy ones included, E // 6 each."""
    cluster = live.cluster("multi")
    worker = live.worker(cluster, "multi-node", [12288] * 6)
    path = live.model("multi-qwen7b", QWEN_7B, QWEN_7B_WEIGHTS)
    tp2 = create(live, cluster, "multi-sglang-tp2", "SGLang", path, params=["--tp-size", "2"])
    assert gpustack_pending(live.server, tp2) == 1
    sglang = create(live, cluster, "multi-sglang", "SGLang", path, params=["--tp-size", "4"])
    [instance] = live.server.instances(sglang)
    assert len(instance["gpu_indexes"]) == 4
    assert set(instance["computed_resource_claim"]["vram"].values()) == {int(12288 * MIB * 0.665)}
    custom = create(live, cluster, "multi-custom", "Custom", path, run_command="my-engine serve")
    [instance] = live.server.instances(custom)
    estimate = int(QWEN_7B_WEIGHTS * 1.2) + 2 * 2**30
    assert sorted(instance["gpu_indexes"]) == list(range(6))
    assert set(instance["computed_resource_claim"]["vram"].values()) == {estimate // 6}
    assert_agrees(live, worker, {"multi-sglang-tp2": tp2, "multi-sglang": sglang, "multi-custom": custom})
