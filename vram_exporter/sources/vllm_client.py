"""The HTTP edge to running vLLM instances: each running model's own /metrics, read in the background.

The third module that imports aiohttp (with app/server.py and sources/gpustack_client.py). Every
``--vllm.metrics-interval`` seconds each running model with a ``metrics_url`` is read (never on the
scrape path); its ``vllm:cache_config_info`` gives the KV cache the engine really allocated
(sources/vllm_instance.py). A vLLM that does not answer, answers with an error, or is not up yet is shown as
``vram_model_vllm_instance_up 0`` with its last reading dropped, never as a guess. So is one that
sends more than ``max_body_bytes`` (the read stops there: an endless body costs that much memory, no
more), takes longer than ``timeout`` over the whole answer, or sends bytes that are not UTF-8; each such
problem is logged once when it starts (and once when it ends), never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from ..rules.model import ModelSpec
from .bounded_read import DEFAULT_VLLM_LIMIT, BodyTooLarge, read_body
from .vllm_instance import CacheConfigInfo, parse_cache_config_info

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstanceReading:
    url: str
    info: CacheConfigInfo | None  # None: no usable answer this time
    error: str | None = None

    @property
    def instance(self) -> str:
        """host:port, the label the series carry (Prometheus's own ``instance`` is the exporter)."""
        return urlsplit(self.url).netloc


class VllmInstances:
    """The last reading of each running model's vLLM, by model name."""

    def __init__(self, timeout: float = 5.0, max_body_bytes: int = DEFAULT_VLLM_LIMIT) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_body_bytes = max_body_bytes
        self._readings: dict[str, InstanceReading] = {}
        self._errors_logged: dict[str, str] = {}

    @property
    def readings(self) -> Mapping[str, InstanceReading]:
        return self._readings

    async def refresh(self, models: Iterable[ModelSpec]) -> None:
        wanted = {m.name: m.metrics_url for m in models if m.placed and m.metrics_url}
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            results = await asyncio.gather(*(self._read(session, url) for url in wanted.values()))
        readings = dict(zip(wanted, results, strict=True))
        for name, reading in readings.items():
            was = self._errors_logged.get(name, "")
            if reading.error and was != reading.error:
                log.warning("vLLM of model %s at %s: %s", name, reading.url, reading.error)  # once per new error
            elif was and not reading.error:
                log.info("vLLM of model %s at %s read again", name, reading.url)
        self._errors_logged = {name: r.error or "" for name, r in readings.items()}  # gone models forgotten
        self._readings = readings  # one assignment: a scrape sees the old readings or the new

    async def _read(self, session: aiohttp.ClientSession, url: str) -> InstanceReading:
        try:
            async with asyncio.timeout(self._timeout.total):  # the whole answer, however slowly it trickles
                async with session.get(url) as response:
                    if response.status != 200:
                        return InstanceReading(url, None, f"HTTP {response.status}")
                    body = await read_body(response, self._max_body_bytes, "--vllm.max-body-bytes")
        except TimeoutError:
            return InstanceReading(url, None, f"no whole answer within {self._timeout.total:g}s")
        except BodyTooLarge as exc:
            return InstanceReading(url, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever an endpoint does, it is this instance's error alone
            return InstanceReading(url, None, f"cannot read it: {exc.__class__.__name__}: {exc}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return InstanceReading(url, None, f"the answer is not UTF-8 text (byte {exc.start}): not a /metrics page")
        try:
            infos = await asyncio.to_thread(parse_cache_config_info, text)
        except ValueError as exc:
            return InstanceReading(url, None, str(exc))
        return InstanceReading(url, infos[0])
