"""The HTTP edge to a GPUStack server: pages through /v2/workers, /v2/models and /v2/model-instances.

One of the modules that import aiohttp (with app/server.py and sources/vllm_client.py). Every failure
(refused connection, timeout, TLS, 401/403, a page that is not GPUStack's JSON, a page larger than
``max_body_bytes``, a whole read past ``read_deadline``) becomes a ``GpuStackError`` whose message says
what to fix; the caller keeps serving its last good view. Each request has its own time limit
(``timeout``) and the whole read of up to 3 x 1000 pages one more (``read_deadline``), so a server that
trickles pages can never hold a read for hours.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp

from ..errors import UpstreamError
from .bounded_read import DEFAULT_GPUSTACK_LIMIT, BodyTooLarge, read_body
from .gpustack_api import ApiFormatError, GpuStackState, Kind, parse_page

PER_PAGE = 100  # GPUStack's default; -1 ("all") is refused by 2.x
MAX_PAGES = 1000
DEFAULT_READ_DEADLINE = 60.0  # seconds for workers, models and instances together


class GpuStackError(UpstreamError):
    """GPUStack could not be read; the message is meant for the operator."""


def read_api_key(path: Path | str) -> str:
    """The key file holds the key alone (GPUStack shows it once, when it is created)."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise GpuStackError(f"cannot read the GPUStack API key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise GpuStackError(f"the GPUStack API key file {path} is not UTF-8 text (byte {exc.start}): "
                            "it should hold the key alone, as GPUStack showed it") from None
    if not key:
        raise GpuStackError(f"the GPUStack API key file {path} is empty")
    return key


class GpuStackClient:
    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0,
                 verify_tls: bool = True, ca_file: str | None = None,
                 max_body_bytes: int = DEFAULT_GPUSTACK_LIMIT, read_deadline: float = DEFAULT_READ_DEADLINE) -> None:
        self.url = url.rstrip("/")
        self._max_body_bytes = max_body_bytes
        self._read_deadline = read_deadline
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl: ssl.SSLContext | bool = True
        if ca_file:
            self._ssl = ssl.create_default_context(cafile=ca_file)
        elif not verify_tls:
            self._ssl = False
        self._session: aiohttp.ClientSession | None = None

    async def read(self) -> GpuStackState:
        try:
            async with asyncio.timeout(self._read_deadline):
                workers = await self._all("workers")
                models = await self._all("models")
                instances = await self._all("model-instances")
        except TimeoutError:
            raise GpuStackError(f"{self.url}: the whole read (workers, models, instances) took more than "
                                f"{self._read_deadline:g}s (--gpustack.read-deadline)") from None
        return GpuStackState(tuple(workers), tuple(models), tuple(instances))

    async def _all(self, kind: Kind) -> list:
        records: list = []
        page, pages = 1, 1
        while page <= pages and page <= MAX_PAGES:
            document = await self._get(f"/v2/{kind}", page)
            try:
                items, pages = parse_page(kind, document)
            except ApiFormatError as exc:
                raise GpuStackError(f"{self.url}: not GPUStack 2.x's API: {exc}") from None
            records.extend(items)
            page += 1
        return records

    async def _get(self, path: str, page: int):
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        url = f"{self.url}{path}"
        try:
            async with self._session.get(url, params={"page": page, "perPage": PER_PAGE}, ssl=self._ssl) as response:
                if response.status in (401, 403):
                    raise GpuStackError(f"GPUStack refused the API key ({response.status} on {path}): check "
                                        "--gpustack.api-key-file (a key with management scope)")
                if response.status != 200:
                    text = (await response.content.read(200)).decode(errors="replace")
                    hint = "; is this a GPUStack 2.x server?" if response.status == 404 else ""
                    raise GpuStackError(f"GET {url}: HTTP {response.status}: {text}{hint}")
                body = await read_body(response, self._max_body_bytes, "--gpustack.max-body-bytes")
            return json.loads(body)
        except GpuStackError:
            raise
        except BodyTooLarge as exc:
            raise GpuStackError(f"GET {url}: {exc}") from None
        except TimeoutError:
            raise GpuStackError(f"GET {url}: no answer within {self._timeout.total:g}s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise GpuStackError(f"GET {url}: TLS certificate not trusted ({exc.certificate_error}); give "
                                "--gpustack.tls.ca-file") from None
        except aiohttp.ClientError as exc:
            raise GpuStackError(f"GET {url}: {exc}") from None
        except ValueError as exc:  # the body is not JSON
            raise GpuStackError(f"GET {url}: not JSON ({exc}); is this a GPUStack 2.x server?") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def read_once(client: GpuStackClient) -> GpuStackState:
    """One read, for ``vram-exporter check``."""
    try:
        return await client.read()
    finally:
        await client.close()
