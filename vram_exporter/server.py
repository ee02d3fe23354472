"""The HTTP edge: an aiohttp application around an Exporter. Only this module (and the
GPUStack client, at the other edge) imports aiohttp."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from .exporter import Exporter
from .pages import explain_page

log = logging.getLogger(__name__)

EXPORTER_KEY: web.AppKey[Exporter] = web.AppKey("exporter", Exporter)


def create_app(
    exporter: Exporter, *, telemetry_path: str = "/metrics", manifest_check_interval: float = 10.0
) -> web.Application:
    app = web.Application()
    app[EXPORTER_KEY] = exporter

    async def metrics(request: web.Request) -> web.Response:
        scrape = await exporter.scrape(request.headers.get("Accept"))
        # content_type from prometheus_client carries parameters (version, charset):
        # set the header whole rather than through aiohttp's content_type argument.
        return web.Response(body=scrape.body, headers={"Content-Type": scrape.content_type})

    async def landing(request: web.Request) -> web.Response:
        report = exporter.report(await exporter.snapshot())
        manifest = str(exporter.manifest.path) if exporter.manifest else None
        return web.Response(text=explain_page(report, telemetry_path, manifest), content_type="text/html")

    async def fit(request: web.Request) -> web.Response:
        return web.json_response(exporter.report(await exporter.snapshot()))

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="Healthy\n")

    app.router.add_get(telemetry_path, metrics)
    app.router.add_get("/", landing)
    app.router.add_get("/api/v1/fit", fit)
    app.router.add_get("/-/healthy", healthy)

    async def close_exporter(app: web.Application) -> None:
        exporter.close()

    app.on_cleanup.append(close_exporter)
    if exporter.manifest is not None:
        app.cleanup_ctx.append(_manifest_watcher(exporter, manifest_check_interval))
    return app


def _manifest_watcher(exporter: Exporter, interval: float):
    """Reload the manifest on SIGHUP and whenever the file changes (checked every ``interval`` s)."""

    async def watch(app: web.Application):
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, exporter.reload_manifest)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            log.debug("SIGHUP reload unavailable")
        task = asyncio.create_task(_poll(exporter, interval))
        yield
        task.cancel()

    return watch


async def _poll(exporter: Exporter, interval: float) -> None:
    last = _stamp(exporter.manifest.path)
    while True:
        await asyncio.sleep(interval)
        current = _stamp(exporter.manifest.path)
        if current != last:
            last = current
            exporter.reload_manifest()


def _stamp(path) -> tuple[float, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """``:9845`` -> (None, 9845) (all interfaces); ``127.0.0.1:9845``; ``[::1]:9845``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {address!r}: expected [HOST]:PORT, e.g. :9845")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), int(port)


def serve(app: web.Application, listen_address: str) -> None:
    host, port = parse_listen_address(listen_address)
    log.info("listening on %s", listen_address)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
