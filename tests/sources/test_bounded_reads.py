"""Every read from the network has a size limit and a deadline (issue 24, items 2, 4 and 9).

Stub servers on 127.0.0.1 that send endless bodies, trickle, hang or send bytes that are not UTF-8:
each is an error for that endpoint alone, found within the deadline, and costs no more memory than
the limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from aiohttp import web

from test_gpustack_view import recorded_document
from vram_exporter import cli
from vram_exporter.rules.model import Architecture, ModelSpec
from vram_exporter.sources.gpustack_client import GpuStackClient, GpuStackError, read_api_key
from vram_exporter.sources.vllm_client import VllmInstances
from vram_exporter.units import MIB

QWEN = Architecture.from_config({"num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                                 "hidden_size": 1536, "vocab_size": 151936, "torch_dtype": "bfloat16",
                                 "max_position_embeddings": 32768})
GOOD_METRICS = ('vllm:cache_config_info{block_size="16",cache_dtype="auto",gpu_memory_utilization="0.9",'
                'num_gpu_blocks="1000"} 1.0\n')


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def endless(request):
    response = web.StreamResponse()
    await response.prepare(request)
    chunk = b"# padding padding padding padding\n" * 2000
    while True:  # until the client goes away
        await response.write(chunk)


async def announced_huge(request):
    return web.Response(body=b"x" * (9 * MIB))


async def trickle(request):
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(600):
        await response.write(b"#")
        await asyncio.sleep(0.05)
    return response


async def hang(request):
    await asyncio.sleep(3600)


async def not_utf8(request):
    return web.Response(body=b"\xff\xfe" + GOOD_METRICS.encode())


async def good(request):
    return web.Response(text=GOOD_METRICS)


async def version(request):
    return web.json_response({"version": "0.34.0"})  # vLLM's /version, on the same server (sources/vllm_client.py)


async def stub(routes):
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def model(name: str, url: str) -> ModelSpec:
    return ModelSpec(name, 1, QWEN, placed_on=(0,), metrics_url=url)


VLLM_FAULTS = {"/endless": (endless, "--vllm.max-body-bytes"), "/huge": (announced_huge, "--vllm.max-body-bytes"),
               "/trickle": (trickle, "no whole answer within 1s"), "/hang": (hang, "no whole answer within 1s"),
               "/not-utf8": (not_utf8, "not UTF-8")}


def test_each_vllm_fault_is_that_instance_down_and_the_others_read(caplog):
    async def go():
        runner, base = await stub({"/good": good, "/version": version,
                                   **{path: h for path, (h, _) in VLLM_FAULTS.items()}})
        instances = VllmInstances(timeout=1.0)
        models = [model("good", f"{base}/good")] + [model(path[1:], base + path) for path in VLLM_FAULTS]
        try:
            before = rss_bytes()
            started = time.monotonic()
            await instances.refresh(models)
            elapsed = time.monotonic() - started
            grown = rss_bytes() - before
            await instances.refresh(models)  # the same problems again: no new log lines
        finally:
            await runner.cleanup()
        return instances.readings, elapsed, grown

    with caplog.at_level(logging.INFO, logger="vram_exporter.sources.vllm_client"):
        readings, elapsed, grown = asyncio.run(go())
    assert readings["good"].info.num_gpu_blocks == 1000 and readings["good"].error is None
    for path, (_, message) in VLLM_FAULTS.items():
        reading = readings[path[1:]]
        assert reading.info is None and message in reading.error, (path, reading.error)
    assert elapsed < 10  # liveness: every read ends at its deadline (1 s here)
    assert grown < 64 * MIB  # the endless body cost at most its limit
    ours = [r for r in caplog.records if r.name == "vram_exporter.sources.vllm_client"]  # not the stub's own
    assert len(ours) == len(VLLM_FAULTS)  # one line per problem, logged once
    assert not any(r.exc_info for r in ours)


def test_a_vllm_that_recovers_is_logged_once_when_it_does(caplog):
    state = {"handler": not_utf8}

    async def switching(request):
        return await state["handler"](request)

    async def go():
        runner, base = await stub({"/metrics": switching, "/version": version})
        instances = VllmInstances(timeout=1.0)
        try:
            for handler in (not_utf8, not_utf8, good, good):
                state["handler"] = handler
                await instances.refresh([model("m", f"{base}/metrics")])
        finally:
            await runner.cleanup()
        return instances.readings

    with caplog.at_level(logging.INFO, logger="vram_exporter.sources.vllm_client"):
        readings = asyncio.run(go())
    assert readings["m"].error is None
    assert [r.levelname for r in caplog.records if r.name == "vram_exporter.sources.vllm_client"] == ["WARNING", "INFO"]


def gpustack_pages(handler_for_kind):
    async def handler(request):
        return await handler_for_kind(request.match_info["kind"], request)
    return handler


def read_gpustack(handler, **client_args):
    async def go():
        app = web.Application()
        app.router.add_get("/v2/{kind}", handler)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        client = GpuStackClient(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", **client_args)
        try:
            return await client.read()
        finally:
            await client.close()
            await runner.cleanup()

    return asyncio.run(go())


def test_a_gpustack_page_past_the_limit_is_an_error_not_memory():
    before = rss_bytes()
    with pytest.raises(GpuStackError, match=r"--gpustack.max-body-bytes"):
        read_gpustack(endless, max_body_bytes=1 * MIB)
    assert rss_bytes() - before < 64 * MIB


def test_gpustack_pages_trickled_forever_end_at_the_read_deadline():
    """Every page answers within the per-request time limit, but there are 1000 of them."""
    async def slow_pages(request):
        await asyncio.sleep(0.2)
        return web.json_response({"items": [], "pagination": {"totalPage": 1000}})

    started = time.monotonic()
    with pytest.raises(GpuStackError, match=r"took more than 1s \(--gpustack.read-deadline\)"):
        read_gpustack(slow_pages, timeout=5, read_deadline=1)
    assert time.monotonic() - started < 10


def test_a_gpustack_error_body_is_cut_without_being_read_whole():
    async def error_page(request):
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        await response.write(b"boom " * 100)
        while True:
            await response.write(b"x" * 65536)

    with pytest.raises(GpuStackError, match=r"HTTP 500: boom boom"):
        read_gpustack(error_page, timeout=5)


def test_gpustack_pages_within_the_limit_read_as_before():
    async def recorded(request):
        return web.json_response(recorded_document(request.match_info["kind"]))

    state = read_gpustack(recorded, max_body_bytes=1 * MIB)
    assert len(state.workers) == len(recorded_document("workers")["items"])


def test_an_api_key_file_that_is_not_utf8_is_exit_2_with_the_file_and_reason(tmp_path, capsys):
    key = tmp_path / "key"
    key.write_bytes(b"gpustack_\xff\xfe\n")
    with pytest.raises(GpuStackError, match=r"is not UTF-8"):
        read_api_key(key)
    code = cli.main(["check", "--gpustack.url", "http://127.0.0.1:9", "--gpustack.api-key-file", str(key)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(key) in err and "not UTF-8" in err and "Traceback" not in err
