"""The GPUStack source without a server: recorded API answers (tests/fixtures/gpustack, recorded from
the real GPUStack 2.3.0 of test_gpustack_live.py), the scheduler replay, and the HTTP client against
small aiohttp servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from conftest import FIXTURES
from test_gpustack_live import QWEN_1_5B, QWEN_1_5B_WEIGHTS, QWEN_7B, QWEN_7B_WEIGHTS
from vram_exporter.sources.manifest import load_manifest
from vram_exporter.errors import BadInput
from vram_exporter.app.exporter import Exporter
from vram_exporter.sources.fake_nvml import FakeNvml
from vram_exporter.rules.cluster import replay
from vram_exporter.rules.model import Architecture, ModelSpec
from vram_exporter.sources.gpustack_api import ApiFormatError, GpuStackState, parse_page
from vram_exporter.sources.gpustack_client import GpuStackClient, GpuStackError, read_api_key
from vram_exporter.sources.gpustack_view import GpuStackSource, build_view
from vram_exporter.sources.nvml import NvmlReader

RECORDED = FIXTURES / "gpustack"
MIB, GIB = 2**20, 2**30


def recorded_document(kind: str) -> dict:
    return json.loads((RECORDED / f"{kind}.json").read_text())


def recorded_state() -> GpuStackState:
    return GpuStackState(*(tuple(parse_page(kind, recorded_document(kind))[0])
                           for kind in ("workers", "models", "model-instances")))


def recorded_models(directory: Path) -> tuple[dict, int]:
    """The model directories of the recorded run are gone: answer from their names."""
    return (QWEN_7B, QWEN_7B_WEIGHTS) if directory.name == "tp-qwen7b" else (QWEN_1_5B, QWEN_1_5B_WEIGHTS)


def test_recorded_server_every_verdict_matches_gpustacks():
    view = build_view(recorded_state(), worker_name="nobody", source="recorded", read_model=recorded_models)
    assert len(view.verdicts) == len(recorded_document("models")["items"])
    for verdict in view.verdicts:
        assert verdict.predicted_pending == verdict.gpustack_pending, verdict
    pending = {v.name: v.gpustack_pending for v in view.verdicts}
    assert pending == {"alone-qwen": 1, "error-first": 0, "error-second": 1, "pin-other": 1, "pin-qwen": 0,
                       "replica-qwen": 1, "reserve-0-qwen": 0, "reserve-1-qwen": 1, "seed-qwen": 1,
                       "tp-qwen7b": 0, "underscore-qwen": 1}
    seed = next(v for v in view.verdicts if v.name == "seed-qwen")
    assert "only has 4.99 GiB allocatable VRAM (83.32%)" in seed.note


def test_node_view_of_a_worker_is_a_manifest_with_its_claims():
    view = build_view(recorded_state(), worker_name="error-node", source="recorded", read_model=recorded_models)
    manifest = view.node_models
    assert view.worker.name == "error-node" and manifest.cluster.system_reserved_vram == 0
    [running, candidate] = manifest.models
    # The error instance keeps its claim: shown as the model it is, with GPUStack's own claim bytes.
    assert (running.name, running.placed_on, dict(running.placed_claims)) == ("error-first", (0,), {0: 23181498777})
    assert (candidate.name, candidate.placed_on, candidate.replicas) == ("error-second", None, 1)
    assert view.allocated == {0: 23181498777}
    assert running.metrics_url is None  # an instance in error serves no /metrics


def test_a_running_instance_is_read_at_its_worker_ip_and_port():
    """GPUStack's model-instance API says where the engine listens: that is the model's metrics_url."""
    state = recorded_state()
    instances = tuple(i.model_copy(update={"state": "running", "port": 40123}) if i.name.startswith("error-first")
                      or i.model_name == "error-first" else i for i in state.instances)
    view = build_view(GpuStackState(state.workers, state.models, instances), worker_name="error-node",
                      source="recorded", read_model=recorded_models)
    running = view.node_models.models[0]
    assert (running.name, running.metrics_url) == ("error-first", "http://127.0.0.1:40123/metrics")


def test_second_replica_books_the_first_and_judges_the_second():
    view = build_view(recorded_state(), worker_name="replicas-node", source="recorded", read_model=recorded_models)
    [candidate] = view.node_models.models
    assert (candidate.name, candidate.replicas, candidate.placed_on) == ("replica-qwen", 1, None)
    assert view.node_models.booked == {0: 23181498777}  # the placed replica, not shown as a model of its own


def test_worker_found_by_hostname_and_reservation_read():
    view = build_view(recorded_state(), worker_name="seed-node", source="recorded", read_model=recorded_models)
    assert view.node_models.cluster.system_reserved_vram == GIB
    view = build_view(recorded_state(), worker_name="no-such-host", source="recorded", read_model=recorded_models)
    assert view.worker is None and view.node_models is None and view.verdicts


def test_unknown_size_is_reported_never_guessed(tmp_path):
    def unreadable(directory: Path):
        raise BadInput(f"{directory}/config.json does not exist")  # as config.read_model_directory does

    view = build_view(recorded_state(), worker_name="seed-node", source="recorded", read_model=unreadable)
    assert all(v.size_known is False and v.predicted_pending is None for v in view.verdicts)
    assert "config.json does not exist" in view.verdicts[0].note
    assert view.node_models.models == ()  # nothing judged on a guess


def test_overlay_manifest_gives_the_sizes(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("models:\n  - name: seed-qwen\n    weights_bytes: 3087467144\n"
                       f"    config: {json.dumps(QWEN_1_5B)}\n")

    def unreadable(directory: Path):
        raise BadInput("not readable here")

    view = build_view(recorded_state(), worker_name="seed-node", source="recorded",
                      overlay=load_manifest(overlay), read_model=unreadable)
    known = {v.name: v.size_known for v in view.verdicts}
    assert known["seed-qwen"] is True and known["alone-qwen"] is False
    seed = next(v for v in view.verdicts if v.name == "seed-qwen")
    assert seed.predicted_pending == seed.gpustack_pending == 1


def test_non_vllm_models_are_shown_but_not_judged():
    document = recorded_document("models")
    document["items"][0] = {**document["items"][0], "backend": "llama.cpp"}
    models = tuple(parse_page("models", document)[0])
    state = recorded_state()
    state = GpuStackState(state.workers, models, state.instances)
    view = build_view(state, worker_name="x", source="recorded", read_model=recorded_models)
    verdict = next(v for v in view.verdicts if v.name == document["items"][0]["name"])
    assert verdict.predicted_pending is None and verdict.size_known is None and "not vLLM" in verdict.note


def test_api_shape_errors_name_the_field():
    with pytest.raises(ApiFormatError, match=r"/v2/workers: items.0.id: Field required"):
        parse_page("workers", {"items": [{"name": "w"}], "pagination": {"totalPage": 1}})
    with pytest.raises(ApiFormatError, match="items"):
        parse_page("models", ["not", "a", "page"])


# The replay, on made-up clusters: the rules GPUStack's scheduler follows beyond one placement.

def qwen(name: str, *parameters: str, replicas: int = 1, env=None) -> ModelSpec:
    return ModelSpec(name, QWEN_1_5B_WEIGHTS, Architecture.from_config(QWEN_1_5B), tuple(parameters),
                     env or {}, replicas=replicas)


def card(worker_id: int, mib: int = 24564, reserved: int = 0, ready: bool = True) -> replay.WorkerGpus:
    return replay.WorkerGpus(worker_id, f"w{worker_id}", {0: mib * MIB}, reserved, ready)


def test_a_deleted_model_frees_its_gpu_for_the_pending_one():
    """GPUStack re-checks pending instances every 180 s against the claims of now."""
    requests = {"b": replay.Request(qwen("b"), frozenset({1}))}
    verdicts = replay.replay([card(1)], requests, [replay.Instance(2, "b", False, {})])
    assert verdicts[2].placed and verdicts[2].gpus == (0,)


def test_pending_instances_see_the_claims_of_placed_ones_created_after_them():
    requests = {name: replay.Request(qwen(name), frozenset({1})) for name in ("a", "c")}
    claim = int(24564 * MIB * 0.9)
    instances = [replay.Instance(1, "a", False, {}), replay.Instance(3, "c", True, {(1, 0): claim})]
    verdicts = replay.replay([card(1)], requests, instances)
    assert verdicts[3].placed and not verdicts[1].placed


def test_workers_not_ready_or_not_selected_take_nothing():
    requests = {"a": replay.Request(qwen("a"), frozenset({2}))}
    verdicts = replay.replay([card(1), card(2, ready=False)], requests, [replay.Instance(1, "a", False, {})])
    assert not verdicts[1].placed and "no ready worker" in verdicts[1].reason


def test_pinned_overcommit_only_for_one_replica():
    pinned = {"w1": (0,)}
    one = {"a": replay.Request(qwen("a"), frozenset({1}), pinned, 1)}
    two = {"a": replay.Request(qwen("a", replicas=2), frozenset({1}), pinned, 1)}
    small = card(1, mib=6138, reserved=GIB)
    assert replay.replay([small], one, [replay.Instance(1, "a", False, {})])[1].placed
    assert not replay.replay([small], two, [replay.Instance(1, "a", False, {})])[1].placed


# The HTTP client, against servers that fail in the ways real ones do.

async def serve(handler, **client_args):
    app = web.Application()
    app.router.add_get("/v2/{kind}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, GpuStackClient(f"http://127.0.0.1:{port}", **client_args)


def read_with(handler, **client_args):
    async def go():
        runner, client = await serve(handler, **client_args)
        try:
            return await client.read()
        finally:
            await client.close()
            await runner.cleanup()

    return asyncio.run(go())


def test_client_pages_through_every_list_and_sends_the_key():
    seen_auth, pages = set(), []

    async def handler(request):
        seen_auth.add(request.headers.get("Authorization"))
        kind, page = request.match_info["kind"], int(request.query["page"])
        pages.append((kind, page))
        items = recorded_document(kind)["items"]
        chunk = items[(page - 1) * 5: page * 5]
        return web.json_response({"items": chunk, "pagination": {"page": page, "perPage": 5, "total": len(items),
                                                                 "totalPage": -(-len(items) // 5)}})

    state = read_with(handler, api_key="secret")
    assert seen_auth == {"Bearer secret"}
    assert len(state.instances) == len(recorded_document("model-instances")["items"])
    assert ("model-instances", 3) in pages and len(state.workers) == 9


@pytest.mark.parametrize("answer, message", [
    (web.Response(status=401, text="unauthorized"), "refused the API key"),
    (web.Response(status=500, text="boom"), "HTTP 500: boom"),
    (web.Response(text="<html>login</html>"), "not JSON"),
    (web.json_response({"items": [{"id": "x"}]}), "not GPUStack 2.x's API"),
])
def test_client_errors_say_what_is_wrong(answer, message):
    async def handler(request):
        return answer

    with pytest.raises(GpuStackError, match=message):
        read_with(handler)


def test_client_gives_up_after_its_timeout():
    async def handler(request):
        await asyncio.sleep(5)
        return web.json_response({"items": []})

    with pytest.raises(GpuStackError, match="no answer within 0.2s"):
        read_with(handler, timeout=0.2)


def test_client_refused_connection():
    client = GpuStackClient("http://127.0.0.1:9")

    async def go():
        try:
            await client.read()
        finally:
            await client.close()

    with pytest.raises(GpuStackError, match="127.0.0.1:9"):
        asyncio.run(go())


def test_api_key_file_errors(tmp_path):
    with pytest.raises(GpuStackError, match="cannot read the GPUStack API key file"):
        read_api_key(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(GpuStackError, match="is empty"):
        read_api_key(tmp_path / "empty")
    (tmp_path / "key").write_text("gpustack_abc\n")
    assert read_api_key(tmp_path / "key") == "gpustack_abc"


# The source inside the exporter: a failing GPUStack keeps the last good view on /metrics.

class ScriptedReader:
    """Answers each read with the next state, or raises the next error."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)

    async def read(self) -> GpuStackState:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        pass


def test_failed_refresh_keeps_the_last_good_view_and_says_so():
    source = GpuStackSource(ScriptedReader(recorded_state(), GpuStackError("GPUStack down"), recorded_state()),
                            worker_name="error-node", source="recorded", read_model=recorded_models)
    fixture = FIXTURES / "seed-a2000.yaml"
    exporter = Exporter(NvmlReader(FakeNvml.watching(fixture), proc_root=None), gpustack=source)

    async def scrape_after_refresh():
        await source.refresh()
        return (await exporter.scrape()).body.decode()

    first = asyncio.run(scrape_after_refresh())
    second = asyncio.run(scrape_after_refresh())
    assert 'vram_exporter_collect_success{collector="gpustack"} 1' in first
    assert 'vram_exporter_collect_success{collector="gpustack"} 0' in second
    models = [line for line in first.splitlines() if line.startswith("vram_model_gpustack_pending_instances")]
    assert models and all(line in second for line in models)  # the last good view, still served
    view = source.view
    plan = asyncio.run(exporter.plan(asyncio.run(exporter.snapshot())))
    asyncio.run(source.refresh())
    assert source.success and source.view.node_models == view.node_models  # unchanged in value
    assert asyncio.run(exporter.plan(asyncio.run(exporter.snapshot()))) is plan  # so the plan is the same
    exporter.close()


@pytest.mark.parametrize("argv, message", [
    (["--gpustack.api-key-file", "key"], "--gpustack.api-key-file needs --gpustack.url"),
    (["--gpustack.url", "gpustack.local:80"], "expected http(s)://HOST[:PORT]"),
    (["--gpustack.url", "http://127.0.0.1:9", "--gpustack.api-key-file", "/nonexistent/key"],
     "cannot read the GPUStack API key file /nonexistent/key"),
])
def test_bad_gpustack_flags_exit_2_with_the_reason(argv, message, capsys):
    from vram_exporter.cli import EXIT_BAD_INPUT, main

    assert main(["--nvml.fixture", str(FIXTURES / "seed-a2000.yaml"), *argv]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def _two_worker_state(tmp_path: Path) -> GpuStackState:
    """A small model running on w1's only GPU, and a pending one that only w2 can take."""
    from vram_exporter.sources.gpustack_api import Model, ModelInstance, Worker

    directory = tmp_path / "qwen"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(QWEN_1_5B))
    with open(directory / "model.safetensors", "wb") as f:
        f.truncate(QWEN_1_5B_WEIGHTS)
    workers = tuple(Worker.model_validate({
        "id": n, "name": f"w{n}", "cluster_id": 1, "state": "ready",
        "status": {"gpu_devices": [{"index": 0, "memory": {"total": 24564 * 2**20}}]}}) for n in (1, 2))
    models = tuple(Model.model_validate({"id": n, "name": f"m{n}", "cluster_id": 1, "backend": "vLLM",
                                         "local_path": str(directory)}) for n in (1, 2))
    claim = int(24564 * 2**20 * 0.9)
    instances = (
        ModelInstance.model_validate({"id": 1, "model_id": 1, "state": "scheduled", "worker_id": 1,
                                      "gpu_indexes": [0], "computed_resource_claim": {"vram": {"0": claim}}}),
        ModelInstance.model_validate({"id": 2, "model_id": 2, "state": "pending"}),
    )
    return GpuStackState(workers, models, instances)


def test_predicted_claims_are_where_the_cluster_replay_puts_the_pending_instance(tmp_path):
    """The pending m2 fits on w1's node view too (without m1's claim it would), but GPUStack's next check
    puts it on w2: only w2 shows the claim it would add."""
    state = _two_worker_state(tmp_path)
    on = {name: build_view(state, worker_name=name, source="test").node_models.predicted for name in ("w1", "w2")}
    assert on == {"w1": {}, "w2": {0: int(24564 * 2**20 * 0.9)}}


def test_a_pending_instance_left_bound_to_a_worker_is_never_decided_again(tmp_path):
    """A failed re-schedule leaves an instance pending with its worker and subordinate claims
    (scheduler.py::_schedule_one clears only the main claim); _should_schedule never picks it up again,
    and GPUStack's resource view still counts those claims: the next model must go elsewhere."""
    from vram_exporter.sources.gpustack_api import ModelInstance

    state = _two_worker_state(tmp_path)
    sub_claim = int(24564 * 2**20 * 0.9)
    stuck = ModelInstance.model_validate({
        "id": 1, "model_id": 1, "state": "pending", "worker_id": 1, "gpu_indexes": [0],
        "distributed_servers": {"subordinate_workers": [{"worker_id": 2, "gpu_indexes": [0],
                                                         "computed_resource_claim": {"vram": {"0": sub_claim}}}]}})
    state = GpuStackState(state.workers, state.models, (stuck, state.instances[1]))
    verdicts = {v.name: v for v in build_view(state, worker_name="w1", source="test").verdicts}
    assert verdicts["m1"].predicted_pending == 1 and "does not decide it again" in verdicts["m1"].note
    assert verdicts["m2"].predicted_pending == 0  # on w1: w2's GPU is still held by the stuck one
    view = build_view(state, worker_name="w1", source="test")
    assert view.node_models.predicted == {0: int(24564 * 2**20 * 0.9)}


def test_an_embedding_model_is_booked_at_its_estimate(tmp_path):
    """GPUStack books a non-LLM model's estimate, not g x total (_disable_gpu_memory_utilization), and
    estimates it with 512 MiB of framework overhead, not 2 GiB (estimate_model_vram); a Qwen3 embedding
    model keeps g (its exception list)."""
    from vram_exporter.sources.gpustack_api import Model

    state = _two_worker_state(tmp_path)
    embedding = Model.model_validate({**state.models[1].model_dump(), "categories": ["embedding"]})
    verdicts = {v.name: v for v in build_view(GpuStackState(state.workers, (state.models[0], embedding),
                                                            state.instances), worker_name="w1", source="t").verdicts}
    (decision,) = verdicts["m2"].decisions
    assert verdicts["m2"].predicted_pending == 0
    assert dict(decision.claims) == {(2, 0): int(QWEN_1_5B_WEIGHTS * 1.2) + 512 * 2**20}
    qwen3 = tmp_path / "qwen3"
    qwen3.mkdir()
    (qwen3 / "config.json").write_text(json.dumps({**QWEN_1_5B, "architectures": ["Qwen3ForCausalLM"]}))
    with open(qwen3 / "model.safetensors", "wb") as f:
        f.truncate(QWEN_1_5B_WEIGHTS)
    reranker = Model.model_validate({**embedding.model_dump(), "local_path": str(qwen3)})
    verdicts = {v.name: v for v in build_view(GpuStackState(state.workers, (state.models[0], reranker),
                                                            state.instances), worker_name="w1", source="t").verdicts}
    (decision,) = verdicts["m2"].decisions
    assert dict(decision.claims) == {(2, 0): int(24564 * 2**20 * 0.9)}


def test_a_model_without_categories_gets_them_from_its_architectures(tmp_path):
    """GPUStack fills in a model's empty categories from config.json's architectures before it schedules
    it (evaluate_pretrained_config, detect_model_type): a BertModel is an embedding model."""
    from vram_exporter.sources.gpustack_api import Model

    state = _two_worker_state(tmp_path)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({**QWEN_1_5B, "architectures": ["BertModel"]}))
    with open(bert / "model.safetensors", "wb") as f:
        f.truncate(QWEN_1_5B_WEIGHTS)
    unnamed = Model.model_validate({**state.models[1].model_dump(), "categories": [], "local_path": str(bert)})
    verdicts = {v.name: v for v in build_view(GpuStackState(state.workers, (state.models[0], unnamed),
                                                            state.instances), worker_name="w1", source="t").verdicts}
    (decision,) = verdicts["m2"].decisions
    assert dict(decision.claims) == {(2, 0): int(QWEN_1_5B_WEIGHTS * 1.2) + 512 * 2**20}


def test_an_image_model_is_not_modelled(tmp_path):
    from vram_exporter.sources.gpustack_api import Model

    state = _two_worker_state(tmp_path)
    image = Model.model_validate({**state.models[1].model_dump(), "categories": ["image"]})
    verdicts = {v.name: v for v in build_view(GpuStackState(state.workers, (state.models[0], image),
                                                            state.instances), worker_name="w1", source="t").verdicts}
    assert verdicts["m2"].predicted_pending is None and "diffusion" in verdicts["m2"].note


def _api_model(backend: str, env: dict):
    from vram_exporter.sources.gpustack_api import Model
    return Model.model_validate({"id": 1, "name": "omni", "backend": backend, "env": env, "replicas": 1,
                                 "huggingface_repo_id": "Qwen/Qwen2.5-Omni-7B", "source": "huggingface",
                                 "cluster_id": 1})


def _never_read(path):
    raise AssertionError(f"{path} read")


def test_a_custom_model_with_a_vram_claim_is_judged_without_its_size():
    """GPUStack's custom selector sizes it by GPUSTACK_MODEL_VRAM_CLAIM alone (policies/utils.py
    estimate_model_vram returns it first): no "weights size unknown", nothing read, nothing made up."""
    from vram_exporter.sources.gpustack_view import _specs
    specs, unknown = _specs((_api_model("custom", {"GPUSTACK_MODEL_VRAM_CLAIM": str(27 * GIB)}),), None, _never_read)
    assert unknown == {} and specs["omni"].weights_bytes is None and specs["omni"].arch is None


@pytest.mark.parametrize("backend, env", [("custom", {"GPUSTACK_MODEL_VRAM_CLAIM": "27GiB"}),  # GPUStack ignores it
                                          ("custom", {}), ("vllm", {"GPUSTACK_MODEL_VRAM_CLAIM": str(27 * GIB)})])
def test_without_a_claim_gpustack_takes_a_model_still_needs_its_size(backend, env):
    from vram_exporter.sources.gpustack_view import _specs
    specs, unknown = _specs((_api_model(backend, env),), None, _never_read)
    assert specs == {} and unknown["omni"].startswith("weights size unknown")
