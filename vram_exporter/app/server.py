"""The HTTP edge: an aiohttp application around an Exporter. Only this module (and the
GPUStack client, at the other edge) imports aiohttp."""

from __future__ import annotations

import asyncio
import errno
import base64
import binascii
import socket
import json
import logging
import signal
import sys

from aiohttp import payload, web

from ..errors import FlagError
from .exporter import Exporter
from ..present.pages import explain_page
from . import whatif
from ..filestamp import file_stamp
from .background import FirstReads, every
from .memory import give_large_buffers_back
from .web.auth import Overloaded
from .web.config import WebConfig
from .web.connections import BACKLOG, IDLE_TIMEOUT_SECONDS, Bound, Connections
from .web.listening import bind
from .web.quiet_log import quiet_client_faults

log = logging.getLogger(__name__)

EXPORTER_KEY: web.AppKey[Exporter] = web.AppKey("exporter", Exporter)
PLANNING_KEY: web.AppKey[asyncio.Task] = web.AppKey("planning", asyncio.Task)
CONNECTIONS_KEY: web.AppKey[Connections] = web.AppKey("connections", Connections)


SWITCH_INTERVAL_SECONDS = 0.001
HTML = "text/html; charset=utf-8"
WRITE_SLICE = 512 * 1024  # bytes handed to aiohttp at once: under malloc's mmap threshold with the headers
MAX_BODY = 64 * 1024  # only GETs are served: a large body is an error, not a scrape
MAX_LINE = 8190  # request line and each header line, as most Go and nginx servers allow


def create_app(
    exporter: Exporter,
    *,
    telemetry_path: str = "/metrics",
    manifest_check_interval: float = 10.0,
    web_config: WebConfig | None = None,
    max_requests: int = 40,
    gpustack_refresh_interval: float = 30.0,
    vllm_metrics_interval: float = 30.0,
    web_config_check_interval: float = 1.0,
    max_connections: Bound = Bound(0, BACKLOG),
) -> web.Application:
    """``max_requests``: requests served at once beyond which new ones get 503 (0: no limit).
    ``max_connections``: connections held open at once (0: no bound) and the listening backlog."""
    connections = Connections(max_connections)
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[_answering(connections), _guard(web_config), _limit(max_requests)],
                          handler_args={"max_line_size": MAX_LINE, "max_field_size": MAX_LINE})
    app[EXPORTER_KEY] = exporter
    app[CONNECTIONS_KEY] = connections
    # Ready once the first read of every upstream is over, whatever it found: the port answers before
    # (/-/healthy, /metrics with what is known), and a slow or silent upstream never delays it.
    first_reads = FirstReads()

    async def metrics(request: web.Request) -> web.Response:
        scrape = await exporter.scrape(request.headers.get("Accept"))
        # The content type carries parameters (version, charset): set the header whole.
        headers = {"Content-Type": scrape.content_type, "Vary": "Accept, Accept-Encoding"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            parts = await exporter.gzipped(scrape)
            headers["Content-Encoding"] = "gzip"
        else:
            parts = (scrape.content, scrape.tail)
        return web.Response(body=_Parts(parts), headers=headers)

    # Both build a document of every model: off the event loop, so /metrics and /-/healthy never wait.
    page_of = lambda report: explain_page(  # noqa: E731
        report, telemetry_path, str(exporter.manifest.path) if exporter.manifest else None).encode()

    async def landing(request: web.Request) -> web.Response:
        page = await exporter.document(await exporter.snapshot(), "page", page_of)
        return _document(page, HTML)

    what_ifs = whatif.WhatIfs()
    manifest_name = lambda: str(exporter.manifest.path) if exporter.manifest else None  # noqa: E731

    async def what_if(request: web.Request) -> web.Response:
        """The page recomputed with one change; bad input is a 400 page naming the fields, never a 500."""
        items = list(request.query.items())
        snap = await exporter.snapshot()
        live = await exporter.report(snap)
        status, headers, report, view, outcome = 200, {}, live, {}, None
        try:
            query = whatif.parse(items)
            extra = {"gpustack": live["gpustack"]} if "gpustack" in live else {}
            outcome = await what_ifs.run(query, await exporter.plan(snap), snap, extra, beside=live)
            if outcome.page is not None:
                return _document(outcome.page, HTML)
            report = outcome.report
            view = {"values": dict(query.fields()), "changes": query.changes(), "link": query.query(), "live": live}
        except whatif.WhatIfError as exc:
            status, view = 400, {"values": _form_values(items), "errors": exc.problems}
        except whatif.Busy:
            status, headers = 429, {"Retry-After": "1"}
            view = {"values": _form_values(items), "busy": "Another what-if is being computed: try again in a moment."}
        page = (await asyncio.to_thread(explain_page, report, telemetry_path, manifest_name(), view)).encode()
        if outcome is not None:
            outcome.page = page  # kept while the what-if is: the live report it is shown beside is the same
        return _document(page, HTML, status, headers)

    async def fit(request: web.Request) -> web.Response:
        body = await exporter.document(await exporter.snapshot(), "json", _json)
        return _document(body, "application/json")

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="Healthy\n")

    async def ready(request: web.Request) -> web.Response:
        waiting = first_reads.waiting()
        if waiting:
            return web.Response(status=503, text=f"Not ready: the first read of {', '.join(waiting)} is not over\n")
        return web.Response(text="Ready\n")

    app.router.add_get(telemetry_path, metrics)  # add_get also answers HEAD
    app.router.add_get("/", landing)
    app.router.add_get("/api/v1/fit", fit)
    app.router.add_get(whatif.PATH, what_if)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)

    async def close_exporter(app: web.Application) -> None:
        exporter.close()

    async def start_planning(app: web.Application) -> None:
        app[PLANNING_KEY] = asyncio.create_task(exporter.start_planning())

    app.on_startup.append(start_planning)
    app.on_cleanup.append(close_exporter)
    if exporter.manifest is not None:
        app.cleanup_ctx.append(_manifest_watcher(exporter, manifest_check_interval))
    if web_config is not None:
        # Re-read the web config and every file it names: a policy no client can pass still gets
        # replaced, and certificates rotated on disk are picked up by the next handshake.
        app.cleanup_ctx.append(every(web_config_check_interval, web_config.poll, "web config watcher",
                                     at_stop=web_config.close))
    if exporter.gpustack is not None:
        # The first read at once, in the background: the port answers meanwhile (GPUStack not read yet:
        # vram_exporter_collect_success{collector="gpustack"} 0), and /-/ready says when it is over.
        read = first_reads.track("GPUStack", exporter.gpustack.refresh)
        app.cleanup_ctx.append(every(gpustack_refresh_interval, _then_plan(read, exporter), "GPUStack refresh",
                                     at_stop=exporter.gpustack.close, step_first=True))
    if exporter.instances is not None:
        app.cleanup_ctx.append(every(vllm_metrics_interval, lambda: _read_instances(exporter),
                                     "reading the vLLM instances", step_first=True))
    return app


def _then_plan(refresh, exporter: Exporter):
    """A GPUStack refresh; after the first good one, the plan for its models is made before any scrape asks."""
    planned = False

    async def read() -> None:
        nonlocal planned
        if await refresh() and not planned:
            planned = True
            await exporter.start_planning()

    return read


async def _read_instances(exporter: Exporter) -> None:
    """The running models' own vLLM /metrics (sources/vllm_client.py)."""
    models = exporter.node_manifest()
    await exporter.instances.refresh(models.models if models else ())


def _form_values(items: list[tuple[str, str]]) -> dict[str, str]:
    """What a person typed, to show it again beside the errors (escaped by the page)."""
    values: dict[str, str] = {}
    for name, value in items:
        if name in whatif.FIELDS:
            values.setdefault(name, value[: whatif.MAX_VALUE_CHARS])
    return values


def _document(body: bytes, content_type: str, status: int = 200, headers: dict | None = None) -> web.Response:
    """A page or JSON document, sent in slices as /metrics is (``_Parts``)."""
    return web.Response(body=_Parts((body,)), status=status, headers={**(headers or {}), "Content-Type": content_type})


def _json(document: dict) -> bytes:
    return json.dumps(document).encode()


class _Parts(payload.Payload):
    """A body sent as its parts: the families' megabytes are never copied into one new bytes object."""

    def __init__(self, parts: tuple[bytes, ...]) -> None:
        super().__init__(parts, content_type="application/octet-stream")  # the handler sets the real one
        self._size = sum(len(part) for part in parts)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer) -> None:
        # In slices: aiohttp joins the headers with the first write, and asyncio copies what the socket
        # does not take at once; a whole body's copy would be a fresh mapping each time (app/memory.py
        # keeps malloc's mmap threshold at 1 MiB), its pages faulted in at every scrape.
        for part in self._value:
            view = memoryview(part)
            for start in range(0, len(view), WRITE_SLICE):
                await writer.write(view[start:start + WRITE_SLICE])


def _guard(web_config: WebConfig | None):
    """exporter-toolkit's order: client certificate SANs (403), rate limit (429), headers, basic auth (401).
    Verified credentials are answered on the event loop; bcrypt checks beyond the bound get 429 at once."""

    @web.middleware
    async def guard(request: web.Request, handler):
        if web_config is None:
            return await handler(request)
        headers = dict(web_config.headers)
        if not web_config.client_allowed(request.transport.get_extra_info("peercert") if request.transport else None):
            return web.Response(status=403, text="Forbidden: client certificate has no allowed SAN\n", headers=headers)
        limiter = web_config.limiter
        if limiter is not None and not limiter.allow():
            return web.Response(status=429, text="Too Many Requests\n", headers=headers)
        if web_config.users:
            verdict = await _authorised(web_config, request)
            if verdict is None:
                headers["Retry-After"] = "1"
                return web.Response(status=429, text="Too Many Requests: too many password checks at once\n",
                                    headers=headers)
            if not verdict:
                headers["WWW-Authenticate"] = 'Basic realm="vram-exporter"'
                return web.Response(status=401, text="Unauthorized\n", headers=headers)
        response = await handler(request)
        response.headers.update(headers)
        return response

    return guard


async def _authorised(web_config: WebConfig, request: web.Request) -> bool | None:
    """True, False, or None when too many bcrypt checks are already waiting."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    if not sep:
        return False
    try:
        return await web_config.auth.check(web_config.users, user, password)
    except Overloaded:
        return None


def _answering(connections: Connections):
    """Marks a connection as answering while its request is: idle ones are closed first at the bound."""

    @web.middleware
    async def answering(request: web.Request, handler):
        connections.answering(request.protocol)
        try:
            return await handler(request)
        finally:
            connections.answered(request.protocol)

    return answering


def _limit(max_requests: int):
    in_flight = 0

    @web.middleware
    async def limit(request: web.Request, handler):
        nonlocal in_flight
        if max_requests and in_flight >= max_requests:
            return web.Response(status=503, text=f"too many concurrent requests (limit {max_requests})\n",
                                headers={"Retry-After": "1"})
        in_flight += 1
        try:
            return await handler(request)
        finally:
            in_flight -= 1

    return limit


def _manifest_watcher(exporter: Exporter, interval: float):
    """Reload the manifest on SIGHUP and whenever the file changes (checked every ``interval`` s)."""
    last = [None]

    def at_start() -> None:
        last[0] = file_stamp(exporter.manifest.path)
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, exporter.reload_manifest)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            log.debug("SIGHUP reload unavailable")

    def check() -> None:
        current = file_stamp(exporter.manifest.path)
        if current != last[0]:
            last[0] = current
            exporter.reload_manifest()

    return every(interval, check, "manifest watcher", at_start=at_start)


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """``:9845`` -> (None, 9845) (all interfaces); ``127.0.0.1:9845``; ``[::1]:9845``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise FlagError(f"--web.listen-address {address!r}: expected [HOST]:PORT, e.g. :9845")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), int(port)


def serve(app: web.Application, listen_address: str, ssl_context=None, shutdown_timeout: float = 30.0) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get ``shutdown_timeout`` seconds to finish.

    The port is bound first: a port in use is exit 2 before anything upstream is read. "listening on" is
    logged once the port answers, and nothing upstream is waited for before it (app start-up only starts
    the background reads)."""
    host, port = parse_listen_address(listen_address)
    sockets = bind(host, port, listen_address)
    # Background threads (the planner, the pages' documents) hand the interpreter back to the event
    # loop every millisecond instead of every 5: a probe or a scrape waits for it less.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    quiet_client_faults()  # a malformed request is the client's fault: no traceback in our log
    give_large_buffers_back()  # RSS flat after an upstream's endless answer (app/memory.py)
    # Not asyncio.run: it waits for every thread of the default executor at the end, and one stuck in a
    # hung upstream or driver call would keep SIGTERM from ending the process (as aiohttp's run_app).
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(app, sockets, listen_address, ssl_context, shutdown_timeout))
    finally:
        _cancel_remaining(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        for sock in sockets:
            sock.close()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


async def _serve(app: web.Application, sockets: list[socket.socket], listen_address: str, ssl_context,
                 shutdown_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    connections = app[CONNECTIONS_KEY]
    loop.set_exception_handler(connections.quiet_accept_failures)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout,
                           keepalive_timeout=IDLE_TIMEOUT_SECONDS)
    await runner.setup()
    try:
        connections.watch(runner.server)
        for sock in sockets:
            await web.SockSite(runner, sock, ssl_context=ssl_context, backlog=connections.backlog).start()
        log.info("listening on %s%s", listen_address, " (TLS)" if ssl_context else "")
        await stop.wait()
    finally:
        await runner.cleanup()  # in-flight requests finish (up to shutdown_timeout), then every at_stop
