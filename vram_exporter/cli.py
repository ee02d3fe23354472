"""Command line: ``vram-exporter [serve]``, ``vram-exporter capture``.

Flags follow node_exporter's dotted style (``--web.listen-address``). Exit codes:
0 success, 2 bad input (a flag, a fixture or a manifest that cannot be used).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import __version__
from .errors import BadInput, FlagError
from .units import parse_size

COMMANDS = ("serve", "check", "capture")
EXIT_SOME_DO_NOT_FIT = 1
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vram-exporter",
        description="Prometheus exporter: will each model fit on these GPUs under GPUStack's "
        "scheduler and vLLM's memory rules?",
    )
    parser.add_argument("--version", action="version", version=f"vram-exporter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve /metrics (the default command)")
    serve.add_argument("--web.listen-address", dest="listen_address", default=":9845",
                       metavar="[HOST]:PORT", help="address to listen on (default :9845)")
    serve.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics",
                       metavar="PATH", help="path under which to expose metrics (default /metrics)")
    serve.add_argument("--web.config.file", dest="web_config_file", type=Path, metavar="FILE",
                       help="TLS and basic auth, in Prometheus exporter-toolkit's format")
    serve.add_argument("--web.max-requests", dest="max_requests", type=int, default=40, metavar="N",
                       help="requests served at once; more get 503 (0: no limit; default 40)")
    serve.add_argument("--web.max-connections", dest="max_connections", type=_count, default=512, metavar="N",
                       help="connections held open at once; past it the oldest idle one is closed to make room "
                       "(0: no bound but the open-files limit's; kept below that limit whatever N is; default 512)")
    serve.add_argument("--manifest", type=Path, metavar="FILE",
                       help="models to judge against this node's GPUs (YAML, see examples/); with --gpustack.url, "
                       "an overlay giving the sizes GPUStack's API lacks. Reloaded on SIGHUP and when the file changes")
    serve.add_argument("--model.gpu-detail", dest="gpu_detail", choices=["all", "relevant", "failing"],
                       default="all", help="per-GPU model series: for every model on every GPU (all, default); "
                       "for models that do not fit and the GPUs fitting ones are assigned to (relevant); only for "
                       "models that do not fit (failing). See README: cardinality")
    serve.add_argument("--manifest.check-interval", dest="manifest_check_interval", type=_positive_seconds,
                       default=10.0, metavar="SECONDS", help="how often to look for a changed manifest (default 10)")
    _add_nvml_flags(serve)
    _add_gpustack_flags(serve)
    _add_fleet_flags(serve)
    serve.add_argument("--vllm.metrics-interval", dest="vllm_metrics_interval", type=_positive_seconds,
                       default=30.0, metavar="SECONDS", help="how often to read each running model's own vLLM "
                       "/metrics (the manifest's metrics_url) for its real KV cache (default 30)")
    serve.add_argument("--vllm.max-body-bytes", dest="vllm_max_body_bytes", type=_positive_size,
                       default="8MiB", metavar="SIZE", help="largest vLLM /metrics answer read; a larger one is "
                       "that instance's error, never memory (default 8MiB)")
    _add_log_flag(serve)

    check = commands.add_parser(
        "check", help="print each model's verdicts, reasons and fixes; exit 0 all fit, 1 some do not, 2 bad input")
    check.add_argument("--manifest", type=Path, metavar="FILE",
                       help="the models (YAML); with --gpustack.url, an overlay giving the sizes GPUStack's API lacks")
    check.add_argument("--format", choices=["text", "json"], default="text", help="output format (default text)")
    _add_nvml_flags(check)
    _add_gpustack_flags(check, refresh=False)
    _add_log_flag(check)

    capture = commands.add_parser(
        "capture", help="record this node's NVML readings as a fixture (for --nvml.fixture)")
    capture.add_argument("--output", "-o", type=Path, metavar="FILE",
                         help="write the fixture here (default: standard output)")
    _add_nvml_flags(capture)
    _add_log_flag(capture)
    return parser


def _add_nvml_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nvml.fixture", dest="nvml_fixture", type=Path, metavar="FILE",
                        help="replay a recorded NVML snapshot (YAML/JSON) instead of the driver")
    parser.add_argument("--nvml.timeout", dest="nvml_timeout", type=_positive_seconds, default=5.0,
                        metavar="SECONDS", help="time limit for one NVML collection (default 5)")
    parser.add_argument("--processes.proc-root", dest="proc_root", type=Path, metavar="DIR",
                        help="where the GPU processes' parents, containers and listening ports are read, to "
                             "attribute their memory to GPUStack's instances or a manifest's running models (default "
                             "/proc: needs the host's "
                             "PID namespace, README: Booked against used; with --nvml.fixture: not read unless given, "
                             "the fixture's pids are not this machine's)")


def _add_gpustack_flags(parser: argparse.ArgumentParser, refresh: bool = True) -> None:
    group = parser.add_argument_group("GPUStack as the source of the models")
    group.add_argument("--gpustack.url", dest="gpustack_url", metavar="URL",
                       help="read workers, models and instances from this GPUStack server (2.x, e.g. "
                       "https://gpustack.example:443) instead of listing models in --manifest")
    group.add_argument("--gpustack.api-key-file", dest="gpustack_api_key_file", type=Path, metavar="FILE",
                       help="file holding a GPUStack API key (management scope), sent as a Bearer token")
    group.add_argument("--gpustack.worker-name", dest="gpustack_worker_name", metavar="NAME",
                       help="this node's GPUStack worker, by name or hostname (default: this host's name)")
    if refresh:
        group.add_argument("--gpustack.refresh-interval", dest="gpustack_refresh_interval", type=_positive_seconds,
                           default=30.0, metavar="SECONDS", help="how often to read GPUStack's API (default 30)")
    group.add_argument("--gpustack.timeout", dest="gpustack_timeout", type=_positive_seconds, default=10.0,
                       metavar="SECONDS", help="time limit for each request to GPUStack (default 10)")
    group.add_argument("--gpustack.read-deadline", dest="gpustack_read_deadline", type=_positive_seconds,
                       default=60.0, metavar="SECONDS", help="time limit for one whole read of GPUStack's workers, "
                       "models and instances, every page (default 60)")
    group.add_argument("--gpustack.max-body-bytes", dest="gpustack_max_body_bytes", type=_positive_size,
                       default="16MiB", metavar="SIZE", help="largest page of GPUStack's API read; a larger one "
                       "fails the read, never grows memory (default 16MiB)")
    group.add_argument("--gpustack.tls.ca-file", dest="gpustack_ca_file", metavar="FILE",
                       help="CA certificates to trust for GPUStack's TLS certificate (default: the system's)")
    group.add_argument("--gpustack.tls.insecure-skip-verify", dest="gpustack_insecure", action="store_true",
                       help="do not verify GPUStack's TLS certificate (verification is on by default)")


def _add_fleet_flags(parser: argparse.ArgumentParser) -> None:
    """Which series this exporter exports in a fleet (serve only)."""
    group = parser.add_argument_group("fleet scale")
    group.add_argument("--gpustack.cluster-series", dest="gpustack_cluster_series", choices=["export", "skip"],
                       default="export", help="the cluster-wide model series (replicas, pending, predicted, "
                       "size known), the same from every exporter of the fleet: export them (default) or skip "
                       "them; a fleet exports them from one exporter only. See README: fleet scale")
    group.add_argument("--collector.nvml", dest="collector_nvml", action=argparse.BooleanOptionalAction,
                       default=True, help="read this node's GPUs through NVML (default); --no-collector.nvml "
                       "makes a cluster-only exporter, for a host that is not a GPU node: GPUStack's "
                       "cluster-wide series only, with --gpustack.url")


def _gpustack_source(args: argparse.Namespace, overlay):
    """The GPUStack source of ``serve`` and ``check``, or None without --gpustack.url."""
    if args.gpustack_url is None:
        for dest, flag in (("gpustack_api_key_file", "api-key-file"), ("gpustack_worker_name", "worker-name"),
                           ("gpustack_ca_file", "tls.ca-file")):
            if getattr(args, dest) is not None:
                raise FlagError(f"--gpustack.{flag} needs --gpustack.url")
        return None
    import socket

    from .sources.gpustack_view import GpuStackSource

    # A cluster-only exporter (serve --no-collector.nvml) is no worker: it looks none up.
    worker_name = (args.gpustack_worker_name or socket.gethostname()) if getattr(args, "collector_nvml", True) else None
    return GpuStackSource(_gpustack_client(args), worker_name=worker_name, source=args.gpustack_url, overlay=overlay)


def _gpustack_client(args: argparse.Namespace):
    from urllib.parse import urlsplit

    from .sources.gpustack_client import GpuStackClient, read_api_key

    url = args.gpustack_url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise FlagError(f"--gpustack.url {url!r}: expected http(s)://HOST[:PORT]")
    api_key = read_api_key(args.gpustack_api_key_file) if args.gpustack_api_key_file else None
    return GpuStackClient(url, api_key=api_key, timeout=args.gpustack_timeout,
                          verify_tls=not args.gpustack_insecure, ca_file=args.gpustack_ca_file,
                          max_body_bytes=args.gpustack_max_body_bytes, read_deadline=args.gpustack_read_deadline)


def _add_log_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log.level", dest="log_level", default="info",
                        choices=["debug", "info", "warn", "error"], help="log level (default info)")


def _positive_size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")  # `vram-exporter --flags` means `vram-exporter serve --flags`
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        if args.command == "capture":
            return _capture(args)
        if args.command == "check":
            return _check(args)
        return _serve(args)
    except BadInput as exc:  # InputFileError and UpstreamError (GPUStack unreadable) included
        print(f"vram-exporter: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _reader(args: argparse.Namespace):
    from .sources.nvml import NvmlReader

    if args.nvml_fixture is None:
        return NvmlReader()
    from .sources.fake_nvml import FakeNvml

    return NvmlReader(FakeNvml.watching(args.nvml_fixture), proc_root=None, source=f"fixture:{args.nvml_fixture}")


def _proc_root(args: argparse.Namespace) -> Path | None:
    if args.proc_root is not None:
        return args.proc_root
    return None if args.nvml_fixture is not None else Path("/proc")


def _serve_reader(args: argparse.Namespace):
    if args.collector_nvml:
        return _reader(args)
    if args.gpustack_url is None or args.gpustack_cluster_series == "skip":
        raise FlagError("--no-collector.nvml is a cluster-only exporter: it needs --gpustack.url and exports "
                        "the cluster-wide series (not with --gpustack.cluster-series=skip)")
    for dest, flag in (("nvml_fixture", "--nvml.fixture"), ("gpustack_worker_name", "--gpustack.worker-name")):
        if getattr(args, dest) is not None:
            raise FlagError(f"{flag} and --no-collector.nvml contradict each other (a cluster-only exporter "
                            "reads no GPU and is no worker)")
    from .sources.sampler import NoNvmlReader

    return NoNvmlReader()


def _serve(args: argparse.Namespace) -> int:
    from .app.exporter import Exporter
    from .app.server import create_app, parse_listen_address, serve
    from .app.web import connections

    if not args.telemetry_path.startswith("/") or args.telemetry_path == "/":
        raise FlagError(f"--web.telemetry-path {args.telemetry_path!r}: must start with / and not be /")
    parse_listen_address(args.listen_address)  # bad input is exit 2, before anything starts
    manifest = None
    if args.manifest is not None:
        from .sources.manifest import load_manifest

        manifest = load_manifest(args.manifest)
    gpustack = _gpustack_source(args, overlay=lambda: exporter.manifest)
    from .sources.vllm_client import VllmInstances

    exporter = Exporter(_serve_reader(args), manifest=manifest, nvml_timeout=args.nvml_timeout,
                        gpu_detail=args.gpu_detail, gpustack=gpustack,
                        instances=VllmInstances(max_body_bytes=args.vllm_max_body_bytes),
                        cluster_series=args.gpustack_cluster_series == "export", proc_root=_proc_root(args))
    web_config = None
    if args.web_config_file is not None:
        from .app.web.config import WebConfig

        web_config = WebConfig.load(args.web_config_file)
        exporter.extra_families.append(web_config.families)
    if args.max_requests < 0:
        raise FlagError("--web.max-requests must be 0 (no limit) or more")
    app = create_app(exporter, telemetry_path=args.telemetry_path, web_config=web_config,
                     manifest_check_interval=args.manifest_check_interval, max_requests=args.max_requests,
                     gpustack_refresh_interval=args.gpustack_refresh_interval,
                     vllm_metrics_interval=args.vllm_metrics_interval,
                     max_connections=connections.bound(args.max_connections))
    serve(app, args.listen_address, ssl_context=web_config.ssl_context if web_config else None)
    return 0


def _check(args: argparse.Namespace) -> int:
    import json

    from .sources.manifest import load_manifest
    from .sources.manifest_usage import read_manifest_usage
    from .app.inputs import node_inputs
    from .app.plan import Planner
    from .present.page_usage import usage_report
    from .present.report import all_fit, plan_report, render_text

    if args.gpustack_url is not None:
        return _check_gpustack(args)
    _gpustack_source(args, overlay=None)  # a --gpustack.* flag without --gpustack.url is refused
    if args.manifest is None:
        raise FlagError("check needs --manifest FILE (the models) or --gpustack.url URL (GPUStack's models)")
    manifest = load_manifest(args.manifest, cluster=True)
    if manifest.workers:
        return _check_cluster(manifest, args.format)
    snapshot = _reader(args).read()
    # The same plan the exporter serves, built here in one go.
    report = plan_report(Planner().build_now(node_inputs(manifest, snapshot), snapshot), snapshot)
    # Booked against used, as the exporter's /api/v1/fit has it, once a running model says its processes.
    if (usage := read_manifest_usage(manifest, snapshot, _proc_root(args))) is not None:
        report["usage"] = usage_report(usage)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(render_text(report, str(args.manifest)))
    return 0 if all_fit(report) else EXIT_SOME_DO_NOT_FIT


def _check_cluster(manifest, output_format: str) -> int:
    """Where GPUStack would place each candidate over the manifest's workers (sources/manifest_workers.py)."""
    import json

    from .sources import manifest_workers as manifest_cluster

    verdicts = manifest_cluster.place(manifest)
    if output_format == "json":
        print(json.dumps({"manifest": str(manifest.path), "workers": [w.name for w in manifest.workers],
                          "cluster": [v.as_dict() for v in verdicts]}, indent=2))
    else:
        sys.stdout.write(manifest_cluster.render_text(verdicts, len(manifest.workers)))
    return 0 if all(not v.pending for v in verdicts) else EXIT_SOME_DO_NOT_FIT


def _check_gpustack(args: argparse.Namespace) -> int:
    """The cluster view and this node's verdicts once; exit 1 when an instance stays (or would stay)
    Pending anywhere or a model of this node does not fit."""
    import json
    import socket

    from .app import check_gpustack
    from .present.report import all_fit

    overlay = None
    if args.manifest is not None:
        from .sources.manifest import load_manifest

        overlay = load_manifest(args.manifest)
    if args.gpustack_api_key_file is None:
        raise FlagError("--gpustack.url needs --gpustack.api-key-file FILE (a GPUStack API key, management scope)")
    client = _gpustack_client(args)
    worker_name = args.gpustack_worker_name or socket.gethostname()
    report = check_gpustack.check_report(client, worker_name=worker_name,
                                         explicit_worker=args.gpustack_worker_name is not None,
                                         url=args.gpustack_url, overlay=overlay, read_snapshot=_reader(args).read,
                                         proc_root=_proc_root(args))
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(check_gpustack.render(report, args.gpustack_url, worker_name))
    fits = all_fit(report) and not check_gpustack.some_pending(report)
    return 0 if fits else EXIT_SOME_DO_NOT_FIT


def _capture(args: argparse.Namespace) -> int:
    from .sources import fixture

    snapshot = _reader(args).read()
    text = f"# captured by vram-exporter {__version__} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
    text += fixture.dump(fixture.from_snapshot(snapshot))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        logging.getLogger(__name__).info("wrote %s (%d GPUs)", args.output, len(snapshot.gpus))
    return 0 if snapshot.ok else 1


class _LogfmtFormatter(logging.Formatter):
    """``ts=... level=info source=nvml msg="..."``, like the Go exporters' logfmt."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs):03d}Z"
        msg = record.getMessage().replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        level = {"WARNING": "warn"}.get(record.levelname, record.levelname.lower())
        source = record.name.removeprefix("vram_exporter.")
        line = f'ts={ts} level={level} source={source} msg="{msg}"'
        if record.exc_info:
            line += ' err="' + self.formatException(record.exc_info).replace("\n", "\\n") + '"'
        return line


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))


if __name__ == "__main__":
    sys.exit(main())
