"""An extended KV cache in the worker's RAM (issue 22): the RAM a worker must have left before the vLLM and SGLang
selectors look at its GPUs (get_model_ram_claim, ram_not_enough), the RAM claim each candidate writes
(get_computed_ram_claim) and the opening line of their messages (policies/utils.py, 2.3.0)."""

from __future__ import annotations

import pytest

from fitcases import GIB, QWEN_1_5B, SEED_WEIGHTS
from vram_exporter.rules import gpustack
from vram_exporter.rules.cluster import replay
from vram_exporter.rules.model import ModelSpec

CARD = 24 * GIB


def decide(workers, backend: str, kv: gpustack.KvOffload):
    spec = ModelSpec("m", SEED_WEIGHTS, QWEN_1_5B, backend=backend, max_model_len=4096)
    request = replay.Request(spec, frozenset(w.id for w in workers), kv_offload=kv)
    return replay.replay(workers, {"m": request}, [replay.Instance(1, "m", False, {})])[1]


@pytest.mark.parametrize("backend", ["vllm", "sglang"])
def test_a_fixed_size_cache_needs_that_ram_left_on_the_worker(backend):
    short = replay.WorkerGpus(1, "short", {0: CARD}, ram_total=4 * GIB)  # 4 GiB < 8 GiB
    roomy = replay.WorkerGpus(2, "roomy", {0: CARD}, ram_total=64 * GIB)
    verdict = decide([short, roomy], backend, gpustack.KvOffload(ram_size=8))
    assert (verdict.placed, verdict.worker) == (True, 2)
    assert verdict.ram == 8 * GIB
    assert [c.worker for c in verdict.candidates] == [2]


@pytest.mark.parametrize("backend", ["vllm", "sglang"])
def test_a_ratio_claims_that_share_of_the_vram_claimed_and_asks_nothing_of_the_worker(backend):
    short = replay.WorkerGpus(1, "short", {0: CARD}, ram_total=GIB)
    verdict = decide([short], backend, gpustack.KvOffload(ram_ratio=2.0))
    assert verdict.placed
    (claim,) = verdict.claims.values()
    assert verdict.ram == int(claim * 2.0)


def test_no_worker_with_the_ram_leaves_it_pending_and_the_opening_line_says_the_ram():
    short = replay.WorkerGpus(1, "short", {0: CARD}, ram_total=4 * GIB)
    verdict = decide([short], "vllm", gpustack.KvOffload(ram_size=8))
    assert not verdict.placed
    assert verdict.reason.startswith("- The model requires approximately ")
    assert verdict.reason.splitlines()[0].endswith(" of VRAM and 8.0 GiB of RAM.")


def test_without_a_cache_no_ram_claim_is_written():
    verdict = decide([replay.WorkerGpus(1, "w", {0: CARD}, ram_total=GIB)], "vllm", None)
    assert verdict.placed and verdict.ram is None


@pytest.mark.parametrize("kv, vram, expected", [
    (gpustack.KvOffload(ram_size=8, ram_ratio=2.0), {0: 10 * GIB}, 8 * GIB),  # the size wins
    (gpustack.KvOffload(ram_ratio=1.5), {0: 10 * GIB, 1: 10 * GIB}, 30 * GIB),
    (gpustack.KvOffload(ram_ratio=1.5), {}, None),  # nothing claimed: none written
    (gpustack.KvOffload(ram_size=0, ram_ratio=None), {0: GIB}, None),
])
def test_the_claim_follows_get_computed_ram_claim(kv, vram, expected):
    assert kv.claim(vram) == expected
