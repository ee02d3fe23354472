"""The HTTP edge: an aiohttp application around an Exporter. Only this module (and the
GPUStack client, at the other edge) imports aiohttp."""

from __future__ import annotations

import logging

from aiohttp import web

from .exporter import Exporter
from .pages import explain_page

log = logging.getLogger(__name__)

EXPORTER_KEY: web.AppKey[Exporter] = web.AppKey("exporter", Exporter)


def create_app(exporter: Exporter, *, telemetry_path: str = "/metrics") -> web.Application:
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
    return app


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
