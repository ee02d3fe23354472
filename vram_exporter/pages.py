"""The explain page: what each GPU holds and what GPUStack and vLLM will do with each model.

Plain HTML with inline SVG and CSS; no JavaScript. Built from the same report document that
``/api/v1/fit`` and ``vram-exporter check --format json`` return.
"""

from __future__ import annotations

from html import escape
from typing import Any

from . import __version__
from .fit.node import CHECKS
from .report import EXPLAIN
from .units import gib

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:78rem;color:#1d2330;background:#fff}
h1{font-size:1.5rem} h2{font-size:1.2rem;margin-top:2rem} h3{font-size:1.05rem;margin:1.2rem 0 .3rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccd;padding:.25rem .5rem;text-align:right}
th{background:#eef} .l{text-align:left} .bad{color:#b00020;font-weight:600} .good{color:#08703a;font-weight:600}
code{background:#f3f3f7;padding:0 .2rem} .model{border:1px solid #dde;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.legend span{display:inline-block;margin-right:1rem} .sw{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
pre{white-space:pre-wrap;background:#fafafc;border-left:3px solid #ccd;padding:.4rem .6rem;margin:.3rem 0}
"""
_COLOURS = {"driver-reserved": "#7a7a8c", "processes": "#d9822b", "used (other)": "#e8b07a", "free": "#cfe8cf",
            "system-reserved": "#5b5b9a", "claimed": "#3f7fbf", "allocatable": "#bfe0f5"}
_BAR_WIDTH = 640


def explain_page(report: dict[str, Any], telemetry_path: str, manifest: str | None) -> str:
    nvml = (f'<p class="bad">NVML is not answering: {escape(report["nvml_error"])}. The exporter keeps '
            "serving and retries on every scrape.</p>") if report["nvml_error"] else ""
    manifest_line = (f"Manifest: <code>{escape(manifest)}</code> ({len(report['models'])} models, "
                     f"{escape(report['scheduler'])} rules)." if manifest
                     else "No manifest given (<code>--manifest FILE</code>): only GPU readings are shown.")
    gpus = "".join(_gpu_section(gpu) for gpu in report["gpus"])
    models = "".join(_model_section(m) for m in report["models"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vram-exporter</title><style>{_STYLE}</style></head><body>
<h1>vram-exporter {escape(__version__)}</h1>
<p>Will each model fit on these GPUs under GPUStack's scheduler and vLLM's memory rules?
Metrics: <a href="{escape(telemetry_path)}">{escape(telemetry_path)}</a> &middot; the same as JSON:
<a href="/api/v1/fit">/api/v1/fit</a></p>
<p>Reading from: <code>{escape(report['source'])}</code>. {manifest_line}</p>
{nvml}
<h2>GPUs</h2>
<p class="legend">{''.join(f'<span><i class="sw" style="background:{c}"></i>{escape(k)}</span>' for k, c in _COLOURS.items())}</p>
{gpus or '<p>No GPU found.</p>'}
<h2>Models</h2>
{models or '<p>No models.</p>'}
</body></html>
"""


def _gpu_section(gpu: dict[str, Any]) -> str:
    title = f"GPU {gpu['index']} &middot; {escape(gpu['name'] or '?')} <small>{escape(gpu['uuid'])}</small>"
    if not gpu["up"]:
        return f'<h3>{title}</h3><p class="bad">unreadable: {escape(gpu["error"] or "")}</p>'
    mem = gpu["memory"]
    process_bytes = sum(p["used"] or 0 for p in gpu["processes"])
    physical = [("driver-reserved", mem["reserved"] or 0), ("processes", min(process_bytes, mem["used"])),
                ("used (other)", max(mem["used"] - process_bytes, 0)), ("free", mem["free"])]
    booked = []
    if "gpustack" in gpu:
        gs = gpu["gpustack"]
        booked = [("system-reserved", min(gs["system_reserved"], gs["total"])),
                  ("claimed", min(gs["claimed"], gs["total"])), ("allocatable", gs["allocatable"])]
    bars = _bar("NVML", physical, mem["total"], 0) + (_bar("GPUStack", booked, mem["total"], 1) if booked else "")
    height = 34 * (2 if booked else 1) + 4
    procs = "".join(
        f"<tr><td>{p['pid']}</td><td class=l>{escape(p['name'] or '?')}</td><td>{gib(p['used'])}</td></tr>"
        for p in gpu["processes"])
    figures = ", ".join(f"{k} {gib(v)}" for k, v in physical)
    return (f"<h3>{title}</h3><svg role=img aria-label=\"memory of GPU {gpu['index']}: {figures}\" "
            f'width="{_BAR_WIDTH + 110}" height="{height}" xmlns="http://www.w3.org/2000/svg">{bars}</svg>'
            f"<p>total {gib(mem['total'])}: {escape(figures)}</p>"
            + (f"<table><tr><th>PID</th><th class=l>process</th><th>used</th></tr>{procs}</table>" if procs else ""))


def _bar(label: str, parts: list[tuple[str, int]], total: int, row: int) -> str:
    y, x, out = row * 34 + 2, 100.0, [f'<text x="0" y="{row * 34 + 22}" font-size="13">{label}</text>']
    for name, value in parts:
        width = _BAR_WIDTH * value / total if total else 0
        if width > 0:
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="28" fill="{_COLOURS[name]}">'
                       f"<title>{escape(name)}: {gib(value)}</title></rect>")
            x += width
    return "".join(out)


def _model_section(model: dict[str, Any]) -> str:
    ok = model["schedulable"] and model["startable"] and not model["error"]
    verdict = (f'<span class="{"good" if ok else "bad"}">'
               f"{'fits' if ok else 'will not fit'}</span>: GPUStack "
               f"{'places it' if model['schedulable'] else 'leaves it Pending'}"
               + (f" on GPU {', '.join(map(str, model['gpus']))}" if model["gpus"] else "")
               + f"; {_engine_words(model)}.")
    if model["error"]:
        return (f'<div class="model"><h3>{escape(model["name"])}</h3><p class="bad">cannot be judged: '
                f"{escape(model['error'])}</p></div>")
    gmu = model["gpu_memory_utilization"]
    head = "".join(f"<th>GPU {escape(i)}</th>" for i in model["checks"])
    rows = "".join(
        f"<tr><td class=l title=\"{escape(EXPLAIN[c])}\">{c}</td>"
        + "".join(_headroom_cell(checks.get(c)) for checks in model["checks"].values()) + "</tr>"
        for c in _checks(model))
    rows += f"<tr><td class=l>working {_KNOB[model.get('backend', 'vllm')]}</td>" + "".join(
        f"<td>{_window(checks['gpu_memory_utilization_window'])}</td>" for checks in model["checks"].values())
    rows += "</tr><tr><td class=l>longest context (tokens)</td>" + "".join(
        f"<td>{checks['max_model_len_tokens']}</td>" for checks in model["checks"].values()) + "</tr>"
    reasons = "".join(f"<pre>{escape(r)}</pre>" for r in model["reasons"])
    fixes = "".join(f'<li class="{"" if f["works"] else "bad"}">{escape(f["action"])}</li>' for f in model["fixes"])
    backend = model.get("backend", "vllm")
    return f"""<div class="model"><h3>{escape(model['name'])} <small>({_ENGINE[backend]} backend)</small></h3>
<p>{verdict}</p>
<p>weights {gib(model['weights_bytes'])} &middot; GPUStack estimate {gib(model['estimate_bytes'])} &middot;
KV {model['kv_cache_bytes_per_token']} B/token, {gib(model['kv_cache_required_bytes'])} for {model['max_model_len']}
tokens &middot; {_fraction_words(backend, gmu)}</p>
<table><tr><th class=l>headroom per check</th>{head}</tr>{rows}</table>
{('<h4>Why</h4>' + reasons) if reasons else ''}{('<h4>Fixes</h4><ul>' + fixes + '</ul>') if fixes else ''}</div>"""


_ENGINE = {"vllm": "vLLM", "sglang": "SGLang", "custom": "custom"}
_KNOB = {"vllm": "gpu_memory_utilization", "sglang": "--mem-fraction-static (GPUStack's tests)",
         "custom": "fraction"}


def _checks(model: dict[str, Any]) -> list[str]:
    """vLLM's four checks always (n/a where one does not apply); another backend's where they apply."""
    if model.get("backend", "vllm") == "vllm":
        return list(CHECKS[:4])
    return [c for c in CHECKS if any(c in checks for checks in model["checks"].values())]


def _fraction_words(backend: str, gmu: dict[str, Any]) -> str:
    if backend == "sglang":
        return f"--mem-fraction-static booked by GPUStack {gmu['gpustack']}, taken by SGLang {gmu['sglang']:.4g}"
    if backend == "custom":
        return (f"fraction GPUStack's custom selector reads (the last --gpu-memory-utilization or "
                f"--mem-fraction-static): {gmu['gpustack'] or 'none, it books the estimate'}")
    return f"gpu_memory_utilization read by GPUStack {gmu['gpustack']}, by vLLM {gmu['vllm']}"


def _engine_words(model: dict[str, Any]) -> str:
    backend = model.get("backend", "vllm")
    if backend == "custom":
        return "a custom backend's engine is not modelled"
    engine = _ENGINE[backend]
    if model["schedulable"]:
        return f"{engine} starts" if model["startable"] else f"{engine} does not start there"
    alone = model["vllm_alone_gpus"]
    return (f"{engine} alone would start on GPU {', '.join(map(str, alone))}" if alone
            else f"{engine} would not start either")


def _headroom_cell(check: dict[str, Any] | None) -> str:
    if check is None:
        return "<td>n/a</td>"
    css = "good" if check["passed"] else "bad"
    return f'<td class="{css}">{check["headroom_bytes"] / 2**30:+.2f} GiB</td>'


def _window(window: list[float]) -> str:
    lo, hi = window
    return f"{lo:.4f} &ndash; {hi:.4f}" if lo <= hi else f'<span class="bad">none ({lo:.4f} &gt; {hi:.4f})</span>'
