"""A response body read with a size limit: what a remote sends never grows the exporter's memory past it.

Both HTTP clients (sources/gpustack_client.py, sources/vllm_client.py) read through here. The body is
taken in chunks and the read stops at ``limit + 1`` bytes, so an endpoint that sends gigabytes, or
never stops, costs at most ``limit`` bytes; the time it may take is the caller's deadline.
"""

from __future__ import annotations

from ..units import MIB

CHUNK = 64 * 1024
DEFAULT_GPUSTACK_LIMIT = 16 * MIB  # a GPUStack page of 100 records is well under 1 MiB
DEFAULT_VLLM_LIMIT = 8 * MIB  # a vLLM /metrics is some 100 KiB


class BodyTooLarge(Exception):
    """The body is larger than the limit; the message says by which flag to raise it."""


async def read_body(response, limit: int, flag: str) -> bytes:
    """The whole body of an aiohttp ``ClientResponse``, or BodyTooLarge as soon as it passes ``limit`` bytes."""
    announced = response.content_length
    if announced is not None and announced > limit:
        raise BodyTooLarge(f"the answer announces {announced} bytes, more than the limit of {limit} ({flag}); "
                           "not read")
    body = bytearray()
    while chunk := await response.content.read(min(CHUNK, limit + 1 - len(body))):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the answer is larger than the limit of {limit} bytes ({flag}); not read")
    return bytes(body)

