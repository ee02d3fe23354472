"""The HTTP edge to running vLLM instances: each running model's own /metrics, read in the background.

The third module that imports aiohttp (with app/server.py and sources/gpustack_client.py). Every
``--vllm.metrics-interval`` seconds each running model with a ``metrics_url`` is read (never on the
scrape path); its ``vllm:cache_config_info`` gives the KV cache the engine really allocated
(sources/vllm_instance.py). A vLLM that does not answer, answers with an error, or is not up yet is shown as
``vram_model_vllm_instance_up 0`` with its last reading dropped, never as a guess. So is one that
sends more than ``max_body_bytes`` (the read stops there: an endless body costs that much memory, no
more), takes longer than ``timeout`` over the whole answer, or sends bytes that are not UTF-8; each such
problem is logged once when it starts (and once when it ends), never with a traceback.

Beside each vLLM's /metrics, at the same time and within the same ``timeout``, its ``/version`` on the same
server (sources/vllm_instance.py ``version_url``; at most ``VERSION_LIMIT`` bytes): the version the model's
verdicts then assume, before any other (rules/runner_pick.py ``running``; app/inputs.py applies it). A
version answered stays while the URL stays and the server does not answer on /version (refused, timed out,
an HTTP error: a vLLM changes version only by restarting, and a restarted one answers again); an answer that
is not a version (not JSON, no "version", "dev", more than the limit) is said on the verdict and the next
source decides. Its problems are logged as /metrics's are, except while /metrics fails too (the same cause).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import aiohttp

from ..rules import runner_pick
from ..rules.model import ModelSpec
from .bounded_read import DEFAULT_VLLM_LIMIT, BodyTooLarge, read_body
from .vllm_instance import (VERSION_LIMIT, CacheConfigInfo, VersionAnswer, parse_cache_config_info,
                            parse_version_answer, version_url)

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
    """The last reading of each running model's vLLM, and what it answered on /version, by model name."""

    def __init__(self, timeout: float = 5.0, max_body_bytes: int = DEFAULT_VLLM_LIMIT) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_body_bytes = max_body_bytes
        self._readings: dict[str, InstanceReading] = {}
        self._versions: dict[str, VersionAnswer] = {}
        self._errors_logged: dict[str, str] = {}
        self._version_problems_logged: dict[str, str] = {}

    @property
    def readings(self) -> Mapping[str, InstanceReading]:
        return self._readings

    @property
    def versions(self) -> Mapping[str, VersionAnswer]:
        """What each running model's engine answered on its version path (app/inputs.py reads it)."""
        return self._versions

    async def refresh(self, models: Iterable[ModelSpec]) -> None:
        wanted = {m.name: (m.metrics_url, runner_pick.VERSION_PATHS.get(m.backend))
                  for m in models if m.placed and m.metrics_url}
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            results = await asyncio.gather(*(self._read_instance(session, url, path) for url, path in wanted.values()))
        readings = {name: reading for name, (reading, _) in zip(wanted, results, strict=True)}
        versions = {name: self._kept(name, answer) for name, (_, answer) in zip(wanted, results, strict=True)
                    if answer is not None}
        self._log_changes(readings, versions)
        self._readings = readings  # one assignment: a scrape sees the old readings or the new
        self._versions = versions

    def _kept(self, name: str, answer: VersionAnswer) -> VersionAnswer:
        """``answer``, or what the same URL answered before where this time no answer came."""
        previous = self._versions.get(name)
        answered_before = previous is not None and (previous.version or previous.not_a_version)
        if answer.error and answered_before and previous.metrics_url == answer.metrics_url:
            return replace(previous, error=answer.error)
        return answer

    def _log_changes(self, readings: Mapping[str, InstanceReading], versions: Mapping[str, VersionAnswer]) -> None:
        """Each problem once when it starts and once when it ends; a version's only while /metrics answers."""
        for name, reading in readings.items():
            was = self._errors_logged.get(name, "")
            if reading.error and was != reading.error:
                log.warning("vLLM of model %s at %s: %s", name, reading.url, reading.error)  # once per new error
            elif was and not reading.error:
                log.info("vLLM of model %s at %s read again", name, reading.url)
        self._errors_logged = {name: r.error or "" for name, r in readings.items()}  # gone models forgotten
        logged = {}
        for name, answer in versions.items():
            if readings[name].error:
                logged[name] = self._version_problems_logged.get(name, "")  # said with /metrics's error
                continue
            was, problem = self._version_problems_logged.get(name, ""), answer.problem or ""
            if problem and was != problem:
                log.warning("vLLM of model %s at %s: %s", name, answer.url, problem)
            elif was and not problem:
                log.info("vLLM of model %s at %s answers its version again", name, answer.url)
            logged[name] = problem
        self._version_problems_logged = logged

    async def _read_instance(self, session: aiohttp.ClientSession, url: str, version_path: str | None
                             ) -> tuple[InstanceReading, VersionAnswer | None]:
        """/metrics and, where the engine answers one (``version_path``), its version, at the same time."""
        if version_path is None:
            return await self._read(session, url), None
        reading, answer = await asyncio.gather(self._read(session, url), self._read_version(session, url, version_path))
        return reading, answer

    async def _read_version(self, session: aiohttp.ClientSession, metrics_url: str, path: str) -> VersionAnswer:
        url = version_url(metrics_url, path)
        try:
            async with asyncio.timeout(self._timeout.total):
                async with session.get(url) as response:
                    if response.status != 200:
                        return VersionAnswer(metrics_url, url, error=f"HTTP {response.status}")
                    body = await read_body(response, VERSION_LIMIT, "a version is some 25 bytes")
        except TimeoutError:
            return VersionAnswer(metrics_url, url, error=f"no whole answer within {self._timeout.total:g}s")
        except BodyTooLarge:
            return VersionAnswer(metrics_url, url, not_a_version=f"more than {VERSION_LIMIT} bytes")
        except Exception as exc:  # noqa: BLE001 - whatever an endpoint does, it is this instance's error alone
            return VersionAnswer(metrics_url, url, error=f"cannot read it: {exc.__class__.__name__}: {exc}")
        try:
            return VersionAnswer(metrics_url, url, version=parse_version_answer(body))
        except ValueError as exc:
            return VersionAnswer(metrics_url, url, not_a_version=str(exc))

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
