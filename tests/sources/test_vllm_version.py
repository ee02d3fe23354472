"""A running vLLM read through a model's ``metrics_url`` is asked its version on ``/version`` (issue 21): the
version its verdicts assume, before any other, as GPUStack's ``api_detected_backend_version`` is. Fake vLLM
servers on 127.0.0.1 answer a version, answers that are not one, oversized, slow and no answer at all."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import pytest
import yaml
from aiohttp import web

from conftest import ROOT
from test_bounded_reads import GOOD_METRICS, endless, good, hang, model, not_utf8, stub, trickle
from vram_exporter.app.exporter import Exporter
from vram_exporter.app.inputs import node_inputs
from vram_exporter.app.plan import Planner
from vram_exporter.present.report import plan_report
from vram_exporter.rules import runner_pick
from vram_exporter.rules.model import EngineVersion
from vram_exporter.sources.fake_nvml import FakeNvml
from vram_exporter.sources.fixture import load as load_fixture
from vram_exporter.sources.manifest import load_manifest
from vram_exporter.sources.nvml import NvmlReader
from vram_exporter.sources.vllm_client import VllmInstances
from vram_exporter.sources.vllm_instance import VERSION_LIMIT, VersionAnswer, parse_version_answer, version_url

LOGGER = "vram_exporter.sources.vllm_client"


def answering(document):
    async def handler(request):
        return web.json_response(document)
    return handler


def text(body: bytes | str):
    async def handler(request):
        return web.Response(body=body if isinstance(body, bytes) else body.encode())
    return handler


async def status_500(request):
    return web.Response(status=500, text="boom")


async def nested(request):
    return web.Response(body=b"[" * 60000, content_type="application/json")


async def version_34(request):
    return web.json_response({"version": "0.34.0"})


def read(routes: dict, models, *, rounds: int = 1, timeout: float = 1.0, between=None):
    """``models`` (a function of the stub's base URL) read ``rounds`` times; ``between(i)`` before each."""
    async def go():
        runner, base = await stub(routes)
        instances = VllmInstances(timeout=timeout)
        try:
            for i in range(rounds):
                if between:
                    between(i)
                await instances.refresh(models(base))
        finally:
            await runner.cleanup()
        return instances

    return asyncio.run(go())


# where /version is, and what counts as an answer

@pytest.mark.parametrize(("metrics", "expected"), [
    ("http://h:8000/metrics", "http://h:8000/version"),
    ("http://h:8000/metrics/", "http://h:8000/version"),
    ("https://proxy/vllm-a/metrics?x=1", "https://proxy/vllm-a/version"),
    ("http://h:8000/", "http://h:8000/version"),
])
def test_version_is_asked_beside_metrics(metrics, expected):
    assert version_url(metrics, "version") == expected


@pytest.mark.parametrize("body", [b'{"version": "0.34.0"}', b'{"version": "0.17.1", "commit": "g95c0f928c"}',
                                  b'{"version": "0.11.0rc1"}', b'{"version": "0.34.1.dev3+g1a2b3c"}'])
def test_a_version_answer(body):
    import json
    assert parse_version_answer(body) == json.loads(body)["version"]


@pytest.mark.parametrize(("body", "said"), [
    (b'{"version": "dev"}', "'dev'"),  # vllm/version.py without its _version.py
    (b'{"version": ""}', "''"),
    (b'{"version": "0"}', "'0'"),
    (b'{"version": 34}', 'JSON without a "version" string'),
    (b'{"name": "vllm"}', 'JSON without a "version" string'),
    (b'["0.34.0"]', 'JSON without a "version" string'),
    (b'vllm:cache_config_info{block_size="16"} 1.0\n', "text that is not JSON"),  # a router's exposition port
    (b"[" * 60000, "text that is not JSON"),  # nested deeper than the parser goes: not a crash
    (b'\xff\xfe{"version": "0.34.0"}', "bytes that are not UTF-8"),
])
def test_an_answer_that_is_not_a_version_says_what_it_is(body, said):
    with pytest.raises(ValueError) as error:
        parse_version_answer(body)
    assert str(error.value) == said


# the rule: the running engine's answer first

SEVENTEEN = EngineVersion("0.17.1", "the manifest's engine_version for the model")


def test_the_answer_comes_before_every_other_source():
    assert runner_pick.running("vllm", SEVENTEEN, "0.34.0") == EngineVersion(
        "0.34.0", "the running vLLM answered 0.34.0 on /version")
    detected = runner_pick.choose("vllm", detected="0.18.0", chosen="0.20.2", cuda="12.8")
    assert runner_pick.running("vllm", detected, "0.32.0").version == "0.32.0"  # before GPUStack's own record
    assert runner_pick.running("vllm", None, "v0.17.1") == EngineVersion(
        "0.17.1", "the running vLLM answered v0.17.1 on /version")  # "X.Y" is what the rules read


def test_an_answer_that_is_not_a_version_is_said_and_the_next_source_decides():
    assert runner_pick.running("vllm", SEVENTEEN, None, "'dev'") == EngineVersion(
        "0.17.1", "the manifest's engine_version for the model (the running vLLM answered 'dev' on /version: "
                  "not a version, ignored)")
    assert runner_pick.running("vllm", SEVENTEEN, None) is SEVENTEEN  # no answer: nothing to say


# reading it: a fake vLLM

def test_the_version_is_read_with_metrics_and_each_bad_answer_is_said_not_taken():
    routes = {"/good/metrics": good, "/good/version": version_34}
    bad = {"dev": answering({"version": "dev"}), "prom": text(GOOD_METRICS), "huge": text(b" " * (VERSION_LIMIT + 1)),
           "endless": endless, "not-utf8": not_utf8, "nested": nested}
    for name, handler in bad.items():
        routes |= {f"/{name}/metrics": good, f"/{name}/version": handler}
    instances = read(routes, lambda base: [model(name, f"{base}/{name}/metrics") for name in ("good", *bad)])
    versions = instances.versions
    assert versions["good"].version == "0.34.0" and versions["good"].url.endswith("/good/version")
    said = {name: (versions[name].version, versions[name].not_a_version) for name in bad}
    too_large = f"more than {VERSION_LIMIT} bytes"
    assert said == {"dev": (None, "'dev'"), "prom": (None, "text that is not JSON"), "huge": (None, too_large),
                    "endless": (None, too_large), "not-utf8": (None, "bytes that are not UTF-8"),
                    "nested": (None, "text that is not JSON")}
    assert all(instances.readings[name].error is None for name in bad)  # /metrics is read all the same


def test_a_slow_or_silent_version_ends_at_the_deadline_and_blocks_nothing(caplog):
    routes = {"/m/metrics": good, "/hang/version": hang, "/trickle/version": trickle, "/500/version": status_500}
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        instances = read({**routes, "/hang/metrics": good, "/trickle/metrics": good, "/500/metrics": good},
                         lambda base: [model(n, f"{base}/{n}/metrics") for n in ("hang", "trickle", "500", "m")])
    assert time.monotonic() - started < 10  # liveness: the deadline is 1 s
    errors = {name: answer.error for name, answer in instances.versions.items()}
    assert "no whole answer within 1s" in errors["hang"] and "no whole answer within 1s" in errors["trickle"]
    assert errors["500"] == "HTTP 500" and errors["m"] == "HTTP 404"
    assert all(a.version is None and a.not_a_version is None for a in instances.versions.values())
    assert all(r.error is None for r in instances.readings.values())  # the metrics came all the same
    ours = [r for r in caplog.records if r.name == LOGGER]
    assert len(ours) == 4 and not any(r.exc_info for r in ours)


def test_a_version_stays_while_the_server_does_not_answer_and_goes_with_another_answer(caplog):
    state = {"version": version_34}

    async def switching(request):
        return await state["version"](request)

    steps = [version_34, hang, status_500, answering({"version": "dev"}), hang, version_34, version_34]
    seen = []

    async def go():
        runner, base = await stub({"/metrics": good, "/version": switching, "/elsewhere/metrics": good})
        instances = VllmInstances(timeout=0.5)
        try:
            for handler in steps:
                state["version"] = handler
                await instances.refresh([model("m", f"{base}/metrics")])
                answer = instances.versions["m"]
                seen.append((answer.version, answer.not_a_version))
            await instances.refresh([model("m", f"{base}/elsewhere/metrics")])  # another URL: asked anew
            seen.append((instances.versions["m"].version, instances.versions["m"].error))
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(go())
    assert seen == [("0.34.0", None), ("0.34.0", None), ("0.34.0", None), (None, "'dev'"), (None, "'dev'"),
                    ("0.34.0", None), ("0.34.0", None), (None, "HTTP 404")]
    levels = [r.levelname for r in caplog.records if r.name == LOGGER and "/version" in r.getMessage()]
    # hang, 500, 'dev', hang: each new problem once; back to a version: once; the new URL's 404 once
    assert levels == ["WARNING"] * 4 + ["INFO", "WARNING"]


def test_only_an_engine_that_answers_a_version_is_asked():
    asked = []

    async def counting(request):
        asked.append(request.path)
        return web.json_response({"version": "0.5.9"})

    instances = read({"/metrics": good, "/version": counting},
                     lambda base: [replace(model("s", f"{base}/metrics"), backend="sglang")])
    assert asked == [] and instances.versions == {} and instances.readings["s"].error is None


def test_a_down_vllm_logs_its_metrics_error_alone(caplog):
    """Nothing answers at all: one line (the /metrics error), not a second for /version."""
    async def go():
        runner, base = await stub({})
        await runner.cleanup()  # the port is closed: refused
        instances = VllmInstances(timeout=1.0)
        for _ in range(2):
            await instances.refresh([model("m", f"{base}/metrics")])
        return instances

    with caplog.at_level(logging.INFO, logger=LOGGER):
        instances = asyncio.run(go())
    assert instances.versions["m"].error is not None
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


# the verdicts: what the exporter assumes and says

def _seed_manifest(tmp_path, url: str, engine_version: str = "0.17.1"):
    document = yaml.safe_load((ROOT / "examples/seed/manifest.yaml").read_text())
    (entry,) = document["models"]
    entry.update(placed_on=[0], metrics_url=url, engine_version=engine_version)
    path = tmp_path / f"manifest-{engine_version}.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_manifest(path)


def _info_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("vram_model_engine_info{")]
    return line


def test_the_exporter_assumes_the_answered_version_and_says_why(tmp_path):
    """The seed model running with a metrics_url, the manifest saying vLLM 0.17.1: the vLLM answers 0.34.0, and
    the verdicts are those of the manifest naming 0.34.0; it answers "dev": the manifest's 0.17.1, said."""
    state = {"version": version_34}

    async def switching(request):
        return await state["version"](request)

    fixture = load_fixture(ROOT / "examples/seed/fixture.yaml")

    async def go():
        runner, base = await stub({"/metrics": good, "/version": switching})
        manifest = _seed_manifest(tmp_path, f"{base}/metrics")
        exporter = Exporter(NvmlReader(FakeNvml(fixture), proc_root=None), manifest=manifest,
                            instances=VllmInstances(timeout=1.0))
        try:
            lines, reports = [], []
            for handler in (None, version_34, answering({"version": "dev"})):
                if handler is not None:
                    state["version"] = handler
                    await exporter.instances.refresh(manifest.models)
                lines.append(_info_line((await exporter.scrape()).body.decode()))
                reports.append(await exporter.report(await exporter.snapshot()))
            return manifest, lines, reports, await exporter.snapshot()
        finally:
            exporter.close()
            await runner.cleanup()

    manifest, lines, reports, snapshot = asyncio.run(go())
    before, answered, dev = lines
    assert before.endswith('version="0.17.1",why="the manifest\'s engine_version for the model"} 1')
    assert answered.endswith('version="0.34.0",why="the running vLLM answered 0.34.0 on /version"} 1')
    assert dev.endswith('version="0.17.1",why="the manifest\'s engine_version for the model (the running vLLM '
                        'answered \'dev\' on /version: not a version, ignored)"} 1')
    # The answered version decides the verdict exactly as a manifest naming it does (`check`, no engine asked).
    url = manifest.models[0].metrics_url
    for version, report in (("0.34.0", reports[1]), ("0.17.1", reports[0])):
        named = plan_report(Planner().build_now(node_inputs(_seed_manifest(tmp_path, url, version), snapshot),
                                                snapshot), snapshot)
        ours, theirs = dict(report["models"][0]), dict(named["models"][0])
        assert ours.pop("engine_version")["version"] == theirs.pop("engine_version")["version"] == version
        assert ours == theirs
    # and the two versions' rules give this model different verdicts: the answer mattered
    assert {k: v for k, v in reports[1]["models"][0].items() if k != "engine_version"} != \
        {k: v for k, v in reports[0]["models"][0].items() if k != "engine_version"}


def test_an_answer_for_another_url_is_not_taken(tmp_path):
    manifest = _seed_manifest(tmp_path, "http://127.0.0.1:9/metrics")
    exporter = Exporter(NvmlReader(FakeNvml(load_fixture(ROOT / "examples/seed/fixture.yaml")), proc_root=None))
    snapshot = asyncio.run(exporter.snapshot())
    exporter.close()
    name = manifest.models[0].name
    answer = VersionAnswer("http://127.0.0.1:9/metrics", "http://127.0.0.1:9/version", version="0.34.0")
    taken = node_inputs(manifest, snapshot, {name: answer}).models[0].engine_version
    assert taken == EngineVersion("0.34.0", "the running vLLM answered 0.34.0 on /version")
    stale = replace(answer, metrics_url="http://127.0.0.1:10/metrics")  # read before the manifest moved it
    assert node_inputs(manifest, snapshot, {name: stale}).models[0].engine_version.version == "0.17.1"
    assert node_inputs(manifest, snapshot).models[0].engine_version.version == "0.17.1"  # `check`: nobody asked
