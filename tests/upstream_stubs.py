"""A GPUStack and a vLLM on 127.0.0.1 that can misbehave on demand, for the fault tests and tools/soak.py.

One aiohttp server in a background thread answers GPUStack's ``/v2/{workers,models,model-instances}``
from the recorded API (tests/fixtures/gpustack) and a vLLM ``/metrics`` and ``/version`` (``VLLM_VERSION``)
for the running instance of worker ``error-node``. ``gpustack_fault`` and ``vllm_fault`` switch each side
to one of ``FAULTS``; ``churn()`` moves the state the way a live cluster does (models and instances appear
and go, readings move). Nothing here leaves the loopback interface.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import threading
from pathlib import Path

from aiohttp import web

RECORDED = Path(__file__).resolve().parent / "fixtures" / "gpustack"
OVERLAY = RECORDED / "overlay.yaml"
NODE_FIXTURE = RECORDED / "nvml-error-node.yaml"
WORKER = "error-node"
RUNNING_INSTANCE = 9  # error-first on error-node: made running, its vLLM is this server's /metrics
FAULTS = ("none", "hang", "trickle", "garbage", "endless", "not-utf8", "http-500", "bad-model", "huge-reservation")
METRICS = ('# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n'
           '# TYPE vllm:cache_config_info gauge\n'
           'vllm:cache_config_info{block_size="16",cache_dtype="auto",gpu_memory_utilization="0.9",'
           'num_gpu_blocks="%d"} 1.0\n')
VLLM_VERSION = "0.17.1"  # not the 0.32.0 GPUStack's runner pick gives the recorded CUDA 13.0 workers


class Upstreams:
    def __init__(self) -> None:
        self.gpustack_fault = "none"
        self.vllm_fault = "none"
        self.requests = 0
        self._documents = {kind: json.loads((RECORDED / f"{kind}.json").read_text())
                           for kind in ("workers", "models", "model-instances")}
        self._blocks = 1000
        self._generation = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream-stubs", daemon=True)
        self.port = 0

    # lifecycle

    def __enter__(self) -> Upstreams:
        self._thread.start()
        self._ready.wait(10)
        self._mark_running()
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v2/{kind}", self._gpustack)
        app.router.add_get("/metrics", self._vllm)
        app.router.add_get("/version", self._vllm_version)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    # the state, and how it moves

    def _mark_running(self) -> None:
        for item in self._documents["model-instances"]["items"]:
            if item["id"] == RUNNING_INSTANCE:
                item.update(state="running", port=self.port, worker_ip="127.0.0.1")

    def churn(self) -> None:
        """One step of a live cluster: a model's replicas change, an instance comes or goes."""
        self._generation += 1
        models = self._documents["models"]["items"]
        target = models[self._generation % len(models)]
        target["replicas"] = 1 + self._generation % 3
        instances = self._documents["model-instances"]["items"]
        extra = [i for i in instances if i["id"] >= 1000]
        if extra:
            instances.remove(extra[0])
        else:
            pending = copy.deepcopy(next(i for i in instances if i["state"] == "pending"))
            pending.update(id=1000 + self._generation, name=f"{pending['name']}-{self._generation}")
            instances.append(pending)

    def move_readings(self) -> None:
        self._blocks = 1000 + random.randrange(200)

    def _page(self, kind: str) -> dict:
        document = copy.deepcopy(self._documents[kind])
        if kind == "models" and self.gpustack_fault == "bad-model":
            document["items"][0]["backend_parameters"] = ["--gpu-memory-utilization=inf"]
        if kind == "workers" and self.gpustack_fault == "huge-reservation":
            for worker in document["items"]:
                worker["system_reserved"] = {"ram": 0, "vram": 2**60}  # bytes typed where GiB go, and more
        return document

    # the two servers

    async def _gpustack(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        kind = request.match_info["kind"]
        if kind not in self._documents:
            return web.Response(status=404)
        fault = self.gpustack_fault
        if fault in ("bad-model", "huge-reservation", "none"):
            return web.json_response(self._page(kind))
        return await misbehave(request, fault, json.dumps(self._page(kind)).encode())

    async def _vllm(self, request: web.Request) -> web.StreamResponse:
        body = (METRICS % self._blocks).encode()
        if self.vllm_fault in ("none", "bad-model", "huge-reservation"):
            return web.Response(body=body, content_type="text/plain")
        return await misbehave(request, self.vllm_fault, body)

    async def _vllm_version(self, request: web.Request) -> web.StreamResponse:
        body = json.dumps({"version": VLLM_VERSION}).encode()
        if self.vllm_fault in ("none", "bad-model", "huge-reservation"):
            return web.Response(body=body, content_type="application/json")
        return await misbehave(request, self.vllm_fault, body)


async def misbehave(request: web.Request, fault: str, good: bytes) -> web.StreamResponse:
    if fault == "hang":
        await asyncio.sleep(3600)
    if fault == "http-500":
        return web.Response(status=500, text="internal error " * 1000)
    if fault == "garbage":
        return web.Response(body=os.urandom(4096), content_type="application/json")
    if fault == "not-utf8":
        return web.Response(body=b"\xff\xfe\xfd" + good)
    response = web.StreamResponse()
    await response.prepare(request)
    if fault == "trickle":  # a byte every 0.2 s, for ever
        while True:
            await response.write(b" ")
            await asyncio.sleep(0.2)
    chunk = b"#" * 65535 + b"\n"
    while True:  # endless: as fast as the client takes it
        await response.write(chunk)
