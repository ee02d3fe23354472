"""``vram-exporter check --gpustack.url URL``: what GPUStack would do with the cluster as it is now, once.

One read of GPUStack's API (sources/gpustack_client.py), the same view the exporter serves
(sources/gpustack_view.build_view: the cluster replayed over every worker, and this node's worker as a
manifest would describe it), this node's verdicts from its NVML readings (or a fixture) on the inputs ``serve``
builds (app/inputs.py), and the same document as the exporter's ``/api/v1/fit``. A worker name given and not found is bad input
(exit 2); with the default (this host's name) and no such worker, only the cluster view is shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..sources.manifest import LoadedManifest
from ..errors import FlagError
from ..sources.gpustack_api import Worker
from ..sources.gpustack_client import GpuStackClient, read_once
from ..sources.gpustack_view import build_view
from ..sources.gpustack_usage import read_usage
from ..present.page_usage import usage_report
from .inputs import node_inputs
from .plan import Planner
from ..present.report import gpustack_report, plan_report, render_text
from ..snapshot import NodeSnapshot


def check_report(client: GpuStackClient, *, worker_name: str, explicit_worker: bool, url: str,
                 overlay: LoadedManifest | None, read_snapshot, proc_root: Path | None = None) -> dict[str, Any]:
    """The report of ``/api/v1/fit`` for this node as worker ``worker_name``; raises GpuStackError
    (GPUStack unreadable) and FlagError (an explicit worker name that matches no worker)."""
    state = asyncio.run(read_once(client))
    view = build_view(state, worker_name=worker_name, source=url, overlay=overlay)
    if view.worker is None and explicit_worker:
        raise FlagError(f"--gpustack.worker-name {worker_name!r}: no worker of {url} has that name or hostname "
                        f"(its workers: {_names(state.workers)})")
    snapshot: NodeSnapshot = read_snapshot()
    # No worker here, or no GPU readings to judge it on: the cluster view alone. Else the inputs
    # ``serve`` builds, the cluster's placement of the pending instances here included.
    inputs = node_inputs(None if snapshot.error else view.node_models, snapshot)
    report = plan_report(Planner().build_now(inputs, snapshot), snapshot)
    report["gpustack"] = gpustack_report(view, refresh_success=True, last_success_timestamp=time.time())
    if view.worker is not None and (usage := read_usage(snapshot, view.instances_here, proc_root)) is not None:
        report["usage"] = usage_report(usage)  # as the exporter's /api/v1/fit has it
    return report


def _names(workers: Sequence[Worker]) -> str:
    listed = ", ".join(f"{w.name} (hostname {w.hostname})" if w.hostname and w.hostname != w.name else w.name
                       for w in workers[:20])
    return (listed + (f" and {len(workers) - 20} more" if len(workers) > 20 else "")) or "none"


def some_pending(report: dict[str, Any]) -> bool:
    """GPUStack leaves, or the rulebooks predict, an instance Pending somewhere in the cluster."""
    return any(m["gpustack_pending"] or m["predicted_pending"] for m in report["gpustack"]["models"])


def render(report: dict[str, Any], url: str, worker_name: str) -> str:
    gs = report["gpustack"]
    lines = [f"vram-exporter check: GPUStack {url}", "",
             "Cluster: every model of GPUStack, its pending instances and ours (the rulebooks replaying its scheduler)"]
    for m in gs["models"]:
        predicted = "-" if m["predicted_pending"] is None else m["predicted_pending"]
        if m["predicted_pending"] is None:
            verdict = "not evaluated"
        elif not m["agree"]:
            verdict = "DISAGREE with GPUStack"
        else:
            verdict = "Pending, both agree" if m["gpustack_pending"] else "placed, both agree"
        lines.append(f"  {'ok ' if not (m['gpustack_pending'] or m['predicted_pending']) else 'NO '} "
                     f"{m['name']}: replicas {m['replicas']}, GPUStack pending {m['gpustack_pending']}, "
                     f"predicted {predicted}: {verdict}")
        if m["note"]:
            lines += [f"      {line}" for line in m["note"].splitlines()]
    pending = sum(1 for m in gs["models"] if m["gpustack_pending"] or m["predicted_pending"])
    disagree = sum(1 for m in gs["models"] if not m["agree"])
    lines += [f"  {pending} of {len(gs['models'])} models have instances pending; "
              f"{disagree} where the rulebooks and GPUStack disagree.", ""]
    if gs["worker"] is None:
        lines.append(f"This node: no GPUStack worker is named {worker_name!r} or has that hostname "
                     "(--gpustack.worker-name NAME judges one): the cluster view only.")
        return "\n".join(lines) + "\n"
    if report["nvml_error"]:
        lines.append(f"This node, worker {gs['worker']}: NVML is not answering here ({report['nvml_error']}); "
                     "its verdicts need its GPUs: run check on the worker, or give --nvml.fixture.")
        return "\n".join(lines) + "\n"
    return "\n".join(lines) + "\n" + render_text(report, f"this node, worker {gs['worker']},")
