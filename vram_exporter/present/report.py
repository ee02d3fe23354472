"""The fit verdicts as one JSON-able document (``check --format json``, ``/api/v1/fit``, the explain
page) and as text for a person in a terminal (``check``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..errors import BadInput
from ..rules import backends
from ..rules.fixes import Fix, FixPlan
from ..rules.gpustack import ENV_CLAIM
from ..rules.model import ModelSpec
from ..rules.node import CHECKS, ModelFit, NodeFit, apply_free, free_memory, vllm_starts_on
from ..snapshot import NodeSnapshot

from ..units import GIB, gib

EXPLAIN = {
    "gpustack_estimate": "GPUStack test 1: estimate E <= g x total (v0.6: E <= allocatable)",
    "gpustack_allocatable": "GPUStack test 2: allocatable / total >= g",
    "vllm_free_memory": "vLLM start-up: free - context overhead >= budget R",
    "vllm_kv_cache": "vLLM KV cache: R - weights - overhead >= KV for max_model_len",
    "gpustack_custom_claim": "GPUStack custom backend: allocatable >= max(E, fraction x total)",
    "sglang_kv_pool": "SGLang KV pool: fraction x free - weights > 0 (else 'Not enough memory')",
    "sglang_context": "SGLang context: KV pool holds one request of the full context length",
    "sglang_free_memory": "SGLang start-up: free memory gives that pool (fraction x free - weights)",
    "vllm_takes_beyond_booking": "GPUStack's claim - what vLLM will hold, where another instance shares the GPU",
}


class Planned(Protocol):
    """What a report reads of a plan: the static fit, the models it judged, their fix plans (None
    while not yet known)."""

    @property
    def node(self) -> NodeFit: ...

    @property
    def specs(self) -> Sequence[ModelSpec]: ...

    @property
    def fixes(self) -> Mapping[str, FixPlan] | None: ...


def plan_report(plan: Planned, snapshot: NodeSnapshot) -> dict[str, Any]:
    """The plan with the free memory of ``snapshot`` applied; fixes left out while not yet known."""
    free = free_memory(snapshot)
    node = apply_free(plan.node, free)
    fixes = {}
    if plan.fixes is not None:
        fixes = {fit.name: plan.fixes[fit.name].pick(fit, free) for fit in node.models if fit.name in plan.fixes}
    report = fit_report(snapshot, node, fixes, fixes_known=plan.fixes is not None)
    settings = {spec.name: model_settings(spec) for spec in plan.specs}
    for model in report["models"]:
        model["settings"] = settings.get(model["name"], {})
    return report


def model_settings(spec: ModelSpec) -> dict[str, Any]:
    """The knobs a person may change (the explain page's what-if), as the model has them now."""
    try:
        gs, vp = spec.gpustack, spec.vllm
    except BadInput:  # the model's own error says why
        return {}
    return {"gpu_memory_utilization": gs.gpu_memory_utilization if gs.gmu_given else vp.gpu_memory_utilization,
            "max_model_len": spec.max_model_len if spec.max_model_len is not None else vp.max_model_len,
            "kv_cache_dtype": vp.kv_cache_dtype, "vram_claim": spec.env.get(ENV_CLAIM),
            "kv_cache_memory_bytes": vp.kv_cache_memory_bytes}


def fit_report(snapshot: NodeSnapshot, node: NodeFit, fixes: Mapping[str, Sequence[Fix]],
               fixes_known: bool = True) -> dict[str, Any]:
    """``node``: the fit with free memory applied."""
    bookings = {b.index: b for b in node.gpus}
    free = free_memory(snapshot)
    return {
        "source": snapshot.source,
        "scheduler": node.cluster.scheduler,
        "system_reserved_vram": node.cluster.system_reserved_vram,
        "nvml_error": snapshot.error,
        "fixes_known": fixes_known,
        "gpus": [_gpu(gpu, bookings.get(gpu.index)) for gpu in snapshot.gpus],
        "models": [_model(fit, fixes.get(fit.name, ()), free) for fit in node.models],
    }


def _gpu(gpu, booking) -> dict[str, Any]:
    out: dict[str, Any] = {"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name, "up": gpu.up,
                           "error": gpu.error}
    if gpu.memory is not None:
        out["memory"] = {"total": gpu.memory.total, "reserved": gpu.memory.reserved,
                         "used": gpu.memory.used, "free": gpu.memory.free}
        out["processes"] = [{"pid": p.pid, "name": p.name, "used": p.used_bytes} for p in gpu.processes]
    if booking is not None:
        out["gpustack"] = {"total": booking.total, "system_reserved": booking.system_reserved,
                           "claimed": booking.claimed, "allocatable": booking.allocatable,
                           "predicted_claims": booking.predicted}
    return out


def _model(fit: ModelFit, fixes: Sequence[Fix], free: Mapping[int, int]) -> dict[str, Any]:
    return {
        "name": fit.name,
        "schedulable": fit.schedulable,
        "startable": fit.startable,
        "gpus": list(fit.gpus),
        "placed": fit.placed,
        "overcommit": fit.overcommit,
        "error": fit.error,
        "replicas": {"requested": fit.replicas, "placeable": fit.replicas_placed},
        "weights_bytes": fit.weights,
        "estimate_bytes": fit.estimate,
        "kv_cache_bytes_per_token": fit.bytes_per_token,
        "kv_cache_required_bytes": fit.kv_required,
        "max_model_len": fit.max_model_len,
        # GPUs where vLLM on its own (`vllm serve`, no scheduler) would start and serve max_model_len.
        "vllm_alone_gpus": [f.index for f in fit.per_gpu if vllm_starts_on(f, free.get(f.index, 0))],
        "backend": fit.backend,
        # The engine version the verdict assumes and why (rules/runner_pick.py); None: not said.
        "engine_version": ({"version": fit.engine_version.version, "why": fit.engine_version.why}
                           if fit.engine_version else None),
        "gpu_memory_utilization": {"gpustack": fit.gmu_gpustack, **({reader: fit.gmu_vllm}
                                   if (reader := backends.of(fit.backend).engine_reader) else {}),
                                   "mismatch": fit.gmu_mismatch},
        "checks": {
            str(f.index): {
                **{name: {"headroom_bytes": f.headroom[name], "passed": f.headroom[name] >= 0}
                   for name in CHECKS if name in f.headroom},
                "vllm_budget_bytes": f.budget,
                "gpu_memory_utilization_window": [f.gmu_min, f.gmu_max],
                "max_model_len_tokens": f.max_model_len,
            }
            for f in fit.per_gpu
        },
        "reasons": list(fit.reasons) + _mismatch_reason(fit),
        "fixes": [{"knob": x.knob, "action": x.action, "works": x.works, "change": dict(x.change)} for x in fixes],
    }


def _mismatch_reason(fit: ModelFit) -> list[str]:
    if fit.error or not fit.gmu_mismatch or not backends.of(fit.backend).fraction_spelling_matters:
        return []  # SGLang's mismatch is said by backend_fit.py, custom has no engine reading
    return [f"GPUStack books with gpu_memory_utilization {fit.gmu_gpustack} but vLLM runs with {fit.gmu_vllm}: "
            "write --gpu-memory-utilization=X with dashes so that both read the same value."]


def gpustack_report(view, *, refresh_success: bool, last_success_timestamp: float) -> dict[str, Any]:
    """GPUStack's verdict next to ours, per model (``view``: a GpuStackView or None before the first read)."""
    return {
        "refresh_success": refresh_success,
        "last_success_timestamp": last_success_timestamp,
        "worker": view.worker.name if view and view.worker else None,
        "models": [{"name": v.name, "replicas": v.replicas, "gpustack_pending": v.gpustack_pending,
                    "predicted_pending": v.predicted_pending, "size_known": v.size_known,
                    "agree": v.predicted_pending is None or v.predicted_pending == v.gpustack_pending,
                    "note": v.note, "decisions": [_decision(d) for d in v.decisions]}
                   for v in (view.verdicts if view else ())],
        "allocated": {str(index): size for index, size in (view.allocated if view else {}).items()},
    }


def _decision(verdict) -> dict[str, Any]:
    """One pending instance as we decide it: placed or not, the claims GPUStack would book and the
    candidates its selector listed before its placement scorer chose (``verdict``: a replay Verdict)."""
    return {"instance": verdict.instance, "placed": verdict.placed, "reason": verdict.reason,
            **(_placement(verdict.worker, verdict.gpus, verdict.claims) if verdict.placed else {}),
            "candidates": [_placement(c.worker, c.gpus, c.claims) for c in verdict.candidates]}


def _placement(worker: int, gpus, claims) -> dict[str, Any]:
    """A placement: the main worker and its GPUs, then every GPU it books (subordinate workers included)."""
    return {"worker": worker, "gpus": sorted(gpus),
            "subordinate_workers": sorted({w for w, _ in claims} - {worker}),
            "claims": [{"worker": w, "gpu": g, "bytes": b} for (w, g), b in sorted(claims.items())]}


def all_fit(report: dict[str, Any]) -> bool:
    return all(m["schedulable"] and m["startable"] and not m["error"] for m in report["models"])


# --- text --------------------------------------------------------------------------------


def render_text(report: dict[str, Any], manifest: str) -> str:
    rules = "GPUStack >= 0.7 rules" if report["scheduler"] == "gpustack" else "GPUStack 0.4-0.6 rules"
    lines = [f"vram-exporter check: {manifest} against {report['source']} ({rules})", ""]
    if report["nvml_error"]:
        lines += [f"NVML is not answering: {report['nvml_error']}", ""]
    for gpu in report["gpus"]:
        lines.append(_gpu_line(gpu))
    lines.append("")
    if report.get("usage") is not None:
        lines += _usage_lines(report["usage"]) + [""]
    for model in report["models"]:
        lines += _model_lines(model) + [""]
    fit = sum(1 for m in report["models"] if m["schedulable"] and m["startable"] and not m["error"])
    lines.append(f"{fit} of {len(report['models'])} models fit.")
    return "\n".join(lines) + "\n"


def _usage_lines(usage: list[dict[str, Any]]) -> list[str]:
    """Booked against used per GPU: each instance's claim beside what its processes use."""
    lines = ["Booked against used:"]
    for gpu in usage:
        overbooked = ", OVERBOOKED" if gpu["overbooked"] else ""
        lines.append(f"  GPU {gpu['gpu']}: booked {gib(gpu['booked'])} of {gib(gpu['total'])}{overbooked}; "
                     f"used by no instance {gib(gpu['unattributed'])}")
        for row in gpu["instances"]:
            used = gib(row["used"]) if row["watched"] else "not watched (no processes: given)"
            flag = " OVERRUN" if row["overrun"] else " CLAIM WITHOUT PROCESS" if row["idle_claim"] else ""
            lines.append(f"    {row['instance']}: booked {gib(row['booked'])}, used {used}{flag}")
    return lines


def _gpu_line(gpu: dict[str, Any]) -> str:
    if not gpu["up"]:
        return f"GPU {gpu['index']}  {gpu['name'] or '?'}  DOWN ({gpu['error']})"
    mem, gs = gpu["memory"], gpu["gpustack"]
    return (f"GPU {gpu['index']}  {gpu['name']}  total {gib(mem['total'])}, free {gib(mem['free'])}; GPUStack: "
            f"system-reserved {gib(gs['system_reserved'])}, claimed {gib(gs['claimed'])}, "
            f"allocatable {gib(gs['allocatable'])} ({gs['allocatable'] / gs['total'] * 100:.2f}%)")


def _verdict(model: dict[str, Any]) -> str:
    if model["error"]:
        return "ERROR"
    where = f" on GPU {','.join(map(str, model['gpus']))}" if model["gpus"] else ""
    backend = backends.of(model.get("backend", backends.VLLM))
    engine = backend.display_name
    if model["placed"]:
        return f"RUNNING{where}" + ("" if model["startable"] else f", but {engine}'s KV check fails")
    if not model["schedulable"]:
        alone = model["vllm_alone_gpus"] if backend.engine_modelled else []
        return "PENDING: GPUStack will not place it" + (
            f" ({engine} alone would start on GPU {','.join(map(str, alone))})" if alone else "")
    if not model["startable"]:
        return f"SCHEDULED{where}, but {engine} will not start"
    return f"FITS{where}" + (" (overcommit)" if model["overcommit"] else "")


def _fraction_line(model: dict[str, Any]) -> str:
    """The backend's own knob, as GPUStack and the engine read it."""
    gmu, backend = model["gpu_memory_utilization"], model.get("backend", backends.VLLM)
    if backends.of(backend).engine_sizes_own_fraction:
        return f"SGLang backend, --mem-fraction-static: GPUStack {gmu['gpustack']}, SGLang {gmu['sglang']:.4g}"
    if not backends.of(backend).engine_modelled:
        return f"custom backend, declared fraction (GPUStack's custom selector): {gmu['gpustack'] or 'none'}"
    return f"gpu_memory_utilization: GPUStack {gmu['gpustack']}, vLLM {gmu['vllm']}"


def engine_version_words(model: dict[str, Any]) -> str:
    """The version a verdict assumes, for a person: "assumes vLLM 0.17.1: GPUStack's runner for CUDA 12.8 (...)"."""
    version = model["engine_version"]
    engine = backends.of(model.get("backend", "vllm")).display_name
    if version["version"] == "unknown":
        return f"assumes {engine}, {version['why']}"
    return f"assumes {engine} {version['version']}: {version['why']}"


def _model_lines(model: dict[str, Any]) -> list[str]:
    ok = model["schedulable"] and model["startable"] and not model["error"]
    lines = [f"{'ok ' if ok else 'NO '} {model['name']}: {_verdict(model)}"]
    if model.get("engine_version"):
        lines.append(f"    {engine_version_words(model)}")
    if model["error"]:
        return lines + [f"    {model['error']}"]
    gmu = model["gpu_memory_utilization"]
    lines.append(f"    weights {gib(model['weights_bytes'])}, GPUStack estimate {gib(model['estimate_bytes'])}, "
                 f"KV {model['kv_cache_bytes_per_token']} B/token, {gib(model['kv_cache_required_bytes'])} for "
                 f"{model['max_model_len']} tokens; " + _fraction_line(model))
    for index, checks in model["checks"].items():
        lo, hi = checks["gpu_memory_utilization_window"]
        window = f"{lo:.4f}..{hi:.4f}" if lo <= hi else f"empty (needs >= {lo:.4f}, allows <= {hi:.4f})"
        lines.append(f"    GPU {index}: budget {gib(checks['vllm_budget_bytes'])}, longest context "
                     f"{checks['max_model_len_tokens']} tokens, working gpu_memory_utilization {window}")
        for name in CHECKS:
            if name in checks:
                c = checks[name]
                lines.append(f"      {'pass' if c['passed'] else 'FAIL'}  {name:21s} headroom "
                             f"{c['headroom_bytes'] / GIB:+.2f} GiB   {EXPLAIN[name]}")
    if model["reasons"]:
        lines.append("    why:")
        for reason in model["reasons"]:
            lines += [f"      {line}" for line in reason.splitlines()]
    if model["fixes"]:
        lines.append("    fixes:")
        for fix in sorted(model["fixes"], key=lambda f: not f["works"]):  # what works first, as on the page
            lines.append(f"      {'->' if fix['works'] else 'x '} {fix['action']}")
    return lines
