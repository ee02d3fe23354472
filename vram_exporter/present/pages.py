"""The explain page: what each GPU holds and what GPUStack and vLLM will do with each model.

Plain HTML with inline SVG and CSS; no JavaScript. Built from the same report document that
``/api/v1/fit`` and ``vram-exporter check --format json`` return. For a person who acts on it: per
model the fixes that work come first, the knobs that cannot help are greyed and short; the model's
demand is drawn on GPUStack's bar of each GPU (estimate, g x total, allocatable); with GPUStack as
the source a cluster table puts GPUStack's verdict next to ours; a what-if form (a GET to
``/what-if``, computed on the server) recomputes every verdict with one change. Everything taken
from the report, the manifest or the query string is escaped.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from .. import __version__
from ..rules import backends
from ..rules.node import CHECKS
from .report import EXPLAIN, engine_version_words
from ..units import GIB, gib
from .what_if_query import KV_CACHE_DTYPES, PATH as WHAT_IF_PATH, SIZING_FLAGS_WORDS, YES, from_fix
from .page_demand import demand_chart
from .page_usage import at_a_glance, by_attention, running_words

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:78rem;color:#1d2330;background:#fff}
h1{font-size:1.5rem} h2{font-size:1.2rem;margin-top:2rem} h3{font-size:1.05rem;margin:1.2rem 0 .3rem}
h4{margin:.8rem 0 .3rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccd;padding:.25rem .5rem;text-align:right}
th{background:#eef} .l{text-align:left} .bad{color:#b00020;font-weight:600} .good{color:#08703a;font-weight:600}
code{background:#f3f3f7;padding:0 .2rem} .model{border:1px solid #dde;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.legend span{display:inline-block;margin-right:1rem} .sw{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
pre{white-space:pre-wrap;background:#fafafc;border-left:3px solid #ccd;padding:.4rem .6rem;margin:.3rem 0}
ul.fixes{list-style:none;padding:0;margin:.4rem 0}
ul.fixes li{background:#e9f7ee;border-left:5px solid #08703a;padding:.45rem .7rem;margin:.3rem 0;font-weight:600;font-size:1.05rem}
ul.fixes a.try{font-weight:400;font-size:.9rem;margin-left:.8rem} ul.fixes li::before{content:"\\2192  ";color:#08703a}
.nofix{background:#fdecee;border-left:5px solid #b00020;padding:.45rem .7rem;font-weight:600}
.dim,.dim summary{color:#8a8f99;font-size:.9rem} .dim ul{margin:.2rem 0}
.banner{background:#fff6db;border:1px solid #e0c068;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.error{background:#fdecee;border:1px solid #b00020;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
tr.changed td{background:#fff6db} tr.disagree td{background:#fdecee}
form.whatif{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:end;margin:.5rem 0}
form.whatif label{display:flex;flex-direction:column;font-size:.85rem} form.whatif input,form.whatif select{font-size:.95rem}
p.demand{margin:.5rem 0 .1rem} td.why{font-size:.82rem;max-width:40rem}
details.try{margin:.6rem 0} details.try>summary{cursor:pointer;color:#3f5fbf}
"""
_COLOURS = {"driver-reserved": "#7a7a8c", "processes": "#d9822b", "used (other)": "#e8b07a", "free": "#cfe8cf",
            "system-reserved": "#5b5b9a", "claimed": "#3f7fbf", "allocatable": "#bfe0f5"}
_BAR_WIDTH = 640
REFUSED_MODELS = 10  # models shown beside a refused what-if when its model is not one of them
# Short names of the knobs, for the fixes that cannot help (the full sentence is its tooltip).
_KNOB_NAMES = {"system_reserved_vram": "--system-reserved vram", "gpu_memory_utilization": "--gpu-memory-utilization",
               "vram_claim": "GPUSTACK_MODEL_VRAM_CLAIM", "max_model_len": "--max-model-len",
               "kv_cache_dtype": "--kv-cache-dtype", "tensor_parallel_size": "--tensor-parallel-size",
               "gpu_selector": "pinning a GPU", "other_processes": "freeing memory",
               "kv_cache_memory_bytes": "--kv-cache-memory-bytes",
               "unset_gpu_memory_utilization": "removing --gpu-memory-utilization"}


def explain_page(report: dict[str, Any], telemetry_path: str, manifest: str | None,
                 what_if: dict[str, Any] | None = None) -> str:
    """``what_if``: {"values": {field: text}, "errors": [(field, message)], "changes": [text],
    "link": query string, "live": the live report} for a what-if page (``report`` is then its result,
    or the live report when the query has errors)."""
    what_if = what_if or {}
    nvml = (f'<p class="bad">NVML is not answering: {escape(report["nvml_error"])}. The exporter keeps '
            "serving and retries on every scrape.</p>") if report["nvml_error"] else ""
    if "gpustack" in report:
        manifest_line = (f"Models from GPUStack, {len(report['models'])} judged on this node"
                         + (f" (sizes from <code>{escape(manifest)}</code>)" if manifest else "") + ".")
    elif manifest:
        manifest_line = (f"Manifest: <code>{escape(manifest)}</code> ({len(report['models'])} models, "
                         f"{escape(report['scheduler'])} rules).")
    else:
        manifest_line = "No manifest given (<code>--manifest FILE</code>): only GPU readings are shown."
    gpus = "".join(_gpu_section(gpu) for gpu in report["gpus"])
    bookings = {str(g["index"]): g["gpustack"] for g in report["gpus"] if "gpustack" in g}
    chosen = what_if.get("values", {}).get("model")
    shown, more = by_attention(report["models"]), ""
    refused = bool(what_if.get("errors")) or "busy" in what_if
    if refused:
        # A refused what-if costs one model's section (or a few to choose from), not the whole node's page.
        shown = [m for m in shown if m["name"] == chosen] or shown[:REFUSED_MODELS]
        if len(shown) < len(report["models"]):
            more = (f'<p>{len(report["models"]) - len(shown)} more models: see <a href="/">the live page</a>.</p>')
    models = "".join(_model_section(m, bookings, report, what_if if m["name"] == chosen else None)
                     for m in shown) + more
    title = "vram-exporter: what-if" if what_if else "vram-exporter"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head><body>
<h1>vram-exporter {escape(__version__)}{' &middot; what-if' if what_if.get('live') else ''}</h1>
<p>Will each model fit on these GPUs under GPUStack's scheduler and vLLM's memory rules?
Metrics: <a href="{escape(telemetry_path)}">{escape(telemetry_path)}</a> &middot; the same as JSON:
<a href="/api/v1/fit">/api/v1/fit</a>{' &middot; <a href="/">the live page</a>' if what_if else ''}</p>
<p>Reading from: <code>{escape(report['source'])}</code>. {manifest_line}</p>
{nvml}{_what_if_banner(report, what_if)}
{'' if what_if else at_a_glance(report)}
{'' if refused else _cluster_section(report.get('gpustack'), bool(what_if.get('live')))}
<h2>Models</h2>
{models or '<p>No models.</p>'}
<h2>GPUs</h2>
<p class="legend">{''.join(f'<span><i class="sw" style="background:{c}"></i>{escape(k)}</span>' for k, c in _COLOURS.items())}</p>
{gpus or '<p>No GPU found.</p>'}
</body></html>
"""


# --- what-if ------------------------------------------------------------------------------


def _what_if_banner(report: dict[str, Any], what_if: dict[str, Any]) -> str:
    if what_if.get("errors"):
        items = "".join(f"<li><code>{escape(field)}</code>: {escape(message)}</li>"
                        for field, message in what_if["errors"])
        return (f'<div class="error"><strong>The what-if was not computed:</strong><ul>{items}</ul>'
                "The page shows the live state; correct the form below and submit again.</div>")
    if "busy" in what_if:
        return f'<div class="error">{escape(what_if["busy"])}</div>'
    live = what_if.get("live")
    if live is None:
        return ""
    changes = "".join(f"<li>{escape(c)}</li>" for c in what_if["changes"]) or "<li>nothing (all fields empty)</li>"
    link = f"{WHAT_IF_PATH}?{what_if['link']}"
    before = {m["name"]: m for m in live["models"]}
    rows = []
    for model in report["models"]:
        old = before.get(model["name"])
        now_words, old_words = _short_verdict(model), _short_verdict(old) if old else "-"
        css = ' class="changed"' if now_words != old_words else ""
        rows.append(f"<tr{css}><td class=l>{escape(model['name'])}</td><td class=l>{old_words}</td>"
                    f"<td class=l>{now_words}</td></tr>")
    fixes = "" if report["fixes_known"] else (
        "<p>The fix search of this what-if ran out of its time budget: verdicts are complete, fixes are not shown.</p>")
    return f"""<div class="banner"><strong>What-if, computed on this server; the live state is unchanged.</strong>
<ul>{''.join(changes)}</ul>
<p>Link to this what-if: <a href="{escape(link)}">{escape(link)}</a></p>
<table><tr><th class=l>model</th><th class=l>live</th><th class=l>with the change</th></tr>{''.join(rows)}</table>
{fixes}</div>"""


def _short_verdict(model: dict[str, Any]) -> str:
    if model["error"]:
        return '<span class="bad">cannot be judged</span>'
    if model["schedulable"] and model["startable"]:
        where = f" on GPU {', '.join(map(str, model['gpus']))}" if model["gpus"] else ""
        return f'<span class="good">fits</span>{where}'
    return '<span class="bad">Pending</span>' if not model["schedulable"] else '<span class="bad">vLLM will not start</span>'


def _what_if_form(model: dict[str, Any], report: dict[str, Any], what_if: dict[str, Any] | None) -> str:
    values = (what_if or {}).get("values", {})
    now = model.get("settings", {})
    gmu = now.get("gpu_memory_utilization")
    reserved = report.get("system_reserved_vram", 0) // GIB
    max_len = now.get("max_model_len") or model["max_model_len"]
    claim = now.get("vram_claim") or "none"
    dtype_now = now.get("kv_cache_dtype", "auto")
    chosen_dtype = values.get("kv_cache_dtype", "")
    options = f'<option value=""{" selected" if not chosen_dtype else ""}>unchanged ({escape(dtype_now)})</option>' + "".join(
        f'<option{" selected" if d == chosen_dtype else ""}>{d}</option>' for d in KV_CACHE_DTYPES)

    def field(name: str, label: str, placeholder: str, size: int = 10) -> str:
        return (f'<label>{label}<input name="{name}" value="{escape(values.get(name, ""))}" '
                f'placeholder="now: {escape(placeholder)}" size="{size}" maxlength="128"></label>')

    kv_sizing = ""
    if backends.of(model.get("backend", backends.VLLM)).kv_bytes_flag is not None:
        kv_now = now.get("kv_cache_memory_bytes")
        checked = " checked" if values.get("unset_gpu_memory_utilization") else ""
        kv_sizing = (field("kv_cache_memory_bytes", "--kv-cache-memory-bytes (8192M, 8G)",
                           "unset" if kv_now is None else str(kv_now), 10)
                     + f'<label><span><input type="checkbox" name="unset_gpu_memory_utilization" value="{YES}"{checked}> '
                     f"none of {SIZING_FLAGS_WORDS}</span>"
                     '<span class="dim">vLLM 0.34: the KV cache takes what is free after warm-up</span></label>')
    is_open = " open" if what_if else ""
    return f"""<details class="try"{is_open}><summary>Try a change (what-if): every verdict recomputed, nothing applied</summary>
<form class="whatif" method="get" action="{WHAT_IF_PATH}">
<input type="hidden" name="model" value="{escape(model['name'])}">
{field("gpu_memory_utilization", "--gpu-memory-utilization", "default" if gmu is None else str(gmu), 8)}
{field("system_reserved_vram", "worker's --system-reserved vram (GiB)", str(reserved), 6)}
{field("max_model_len", "--max-model-len (tokens, 4k, auto)", str(max_len), 10)}
<label>--kv-cache-dtype<select name="kv_cache_dtype">{options}</select></label>
{field("vram_claim", "GPUSTACK_MODEL_VRAM_CLAIM (bytes, 4GiB, none)", str(claim), 14)}
{kv_sizing}
<button type="submit">Recompute</button>
</form><p class="dim">Empty fields stay as they are.</p></details>"""


# --- cluster ------------------------------------------------------------------------------


def _cluster_section(gpustack: dict[str, Any] | None, what_if: bool) -> str:
    if gpustack is None:
        return ""
    if gpustack["refresh_success"]:
        status = "read at " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(gpustack["last_success_timestamp"]))
    elif gpustack["last_success_timestamp"]:
        status = ('<span class="bad">the last read failed</span>; shown as read at ' + time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime(gpustack["last_success_timestamp"])))
    else:
        status = '<span class="bad">not read yet</span>'
    worker = (f"This node is worker <code>{escape(gpustack['worker'])}</code>." if gpustack["worker"]
              else '<span class="bad">No GPUStack worker matches this node</span> (set --gpustack.worker-name): '
              "only the cluster view is shown.")
    rows = "".join(_cluster_row(m) for m in gpustack["models"])
    note = "<p>The what-if changes this node's verdicts; the cluster table is the live one.</p>" if what_if else ""
    return f"""<h2>Cluster: GPUStack's verdict next to ours</h2>
<p>GPUStack {status}. {worker} Pending instances per model: GPUStack's own (its API) and ours
(the rulebooks replaying its scheduler over every worker).</p>{note}
<table><tr><th class=l>model</th><th>replicas</th><th>GPUStack pending</th><th>predicted pending</th>
<th class=l>verdict</th><th class=l>why</th></tr>{rows or '<tr><td colspan=6 class=l>GPUStack has no models.</td></tr>'}</table>"""


def _cluster_row(model: dict[str, Any]) -> str:
    predicted = model["predicted_pending"]
    if predicted is None:
        verdict, css = "not evaluated", ""
    elif model["agree"]:
        verdict = ('<span class="good">placed</span>, both agree' if predicted == 0
                   else '<span class="bad">Pending</span>, both agree')
        css = ""
    else:
        verdict, css = '<span class="bad">we disagree with GPUStack</span>', ' class="disagree"'
    return (f"<tr{css}><td class=l>{escape(model['name'])}</td><td>{model['replicas']}</td>"
            f"<td>{model['gpustack_pending']}</td><td>{'-' if predicted is None else predicted}</td>"
            f"<td class=l>{verdict}</td><td class=\"l why\">{escape(model['note'] or '')}</td></tr>")


# --- GPUs ---------------------------------------------------------------------------------


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
    return (f"<h3>{title}</h3><svg role=img aria-label=\"memory of GPU {gpu['index']}: {escape(figures)}\" "
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


# --- models -------------------------------------------------------------------------------


def _model_section(model: dict[str, Any], bookings: dict[str, dict[str, Any]], report: dict[str, Any],
                   what_if: dict[str, Any] | None) -> str:
    name = escape(model["name"])
    version = f'<p class="version">{escape(engine_version_words(model))}</p>' if model.get("engine_version") else ""
    if model["error"]:
        return (f'<div class="model" id="{name}"><h3>{name}</h3>{version}<p class="bad">cannot be judged: '
                f"{escape(model['error'])}</p></div>")
    ok = model["schedulable"] and model["startable"]
    verdict = running_words(model) or (f'<span class="{"good" if ok else "bad"}">'
               f"{'fits' if ok else 'will not fit'}</span>: GPUStack "
               f"{'places it' if model['schedulable'] else 'leaves it Pending'}"
               + (f" on GPU {', '.join(map(str, model['gpus']))}" if model["gpus"] else "")
               + f"; {_engine_words(model)}.")
    gmu = model["gpu_memory_utilization"]
    settings = model.get("settings", {})
    claim = settings.get("vram_claim")
    reasons = "".join(f"<pre>{escape(r)}</pre>" for r in model["reasons"])
    backend = model.get("backend", backends.VLLM)
    return f"""<div class="model" id="{name}"><h3>{name} <small>({backends.of(backend).short_name} backend)</small></h3>{version}<p>{verdict}</p>
{_fixes(model, ok, report['fixes_known'])}
{demand_chart(model, bookings, report['scheduler'])}
<p>weights {gib(model['weights_bytes'])} &middot; GPUStack estimate {gib(model['estimate_bytes'])}
{f'(GPUSTACK_MODEL_VRAM_CLAIM={escape(str(claim))})' if claim else ''} &middot;
KV {model['kv_cache_bytes_per_token']} B/token ({escape(str(settings.get('kv_cache_dtype', 'auto')))}),
{gib(model['kv_cache_required_bytes'])} for {model['max_model_len']} tokens &middot; {_fraction_words(backend, gmu)}</p>
{_headroom_table(model)}
{('<h4>Why</h4>' + reasons) if reasons else ''}
{_what_if_form(model, report, what_if)}</div>"""


def _fixes(model: dict[str, Any], ok: bool, fixes_known: bool) -> str:
    if ok:
        return ""
    if not fixes_known:
        return '<p class="dim">The fixes are still being computed: reload in a moment.</p>'
    working = [f for f in model["fixes"] if f["works"]]
    futile = [f for f in model["fixes"] if not f["works"]]
    out = ("<h4>Fixes that work (any one of them)</h4><ul class=\"fixes\">"
           + "".join(f"<li>{escape(f['action'])}{_try_it(model['name'], f)}</li>" for f in working)
           + "</ul>") if working else (
        '<p class="nofix">No single knob makes it fit on this node.</p>')
    if futile:
        names = ", ".join(f'<span title="{escape(f["action"])}">{escape(_KNOB_NAMES.get(f["knob"], f["knob"]))}</span>'
                          for f in futile)
        details = "".join(f"<li>{escape(f['action'])}</li>" for f in futile)
        out += (f'<details class="dim"><summary>Cannot help on their own: {names}</summary>'
                f"<ul>{details}</ul></details>")
    return out


def _try_it(name: str, fix: dict[str, Any]) -> str:
    what_if = from_fix(name, fix.get("change") or {})
    if what_if is None:
        return ""
    return f' <a class="try" href="{escape(WHAT_IF_PATH + "?" + what_if.query())}">try it</a>'


def _headroom_table(model: dict[str, Any]) -> str:
    head = "".join(f"<th>GPU {escape(i)}</th>" for i in model["checks"])
    rows = "".join(
        f"<tr><td class=l title=\"{escape(EXPLAIN[c])}\">{c}</td>"
        + "".join(_headroom_cell(checks.get(c)) for checks in model["checks"].values()) + "</tr>"
        for c in _checks(model))
    rows += f"<tr><td class=l>working {backends.of(model.get('backend', backends.VLLM)).window_knob}</td>" + "".join(
        f"<td>{_window(checks['gpu_memory_utilization_window'])}</td>" for checks in model["checks"].values())
    rows += "</tr><tr><td class=l>longest context (tokens)</td>" + "".join(
        f"<td>{checks['max_model_len_tokens']}</td>" for checks in model["checks"].values()) + "</tr>"
    return f"<table><tr><th class=l>headroom per check</th>{head}</tr>{rows}</table>"


def _checks(model: dict[str, Any]) -> list[str]:
    """vLLM's four checks always (n/a where one does not apply); another backend's where they apply."""
    if backends.of(model.get("backend", backends.VLLM)).checks_shown_always:
        return list(CHECKS[:4])
    return [c for c in CHECKS if any(c in checks for checks in model["checks"].values())]


def _fraction_words(backend: str, gmu: dict[str, Any]) -> str:
    if backends.of(backend).engine_sizes_own_fraction:
        return f"--mem-fraction-static booked by GPUStack {gmu['gpustack']}, taken by SGLang {gmu['sglang']:.4g}"
    if not backends.of(backend).engine_modelled:
        return (f"fraction GPUStack's custom selector reads (the last --gpu-memory-utilization or "
                f"--mem-fraction-static): {gmu['gpustack'] or 'none, it books the estimate'}")
    return f"gpu_memory_utilization read by GPUStack {gmu['gpustack']}, by vLLM {gmu['vllm']}"


def _engine_words(model: dict[str, Any]) -> str:
    backend = model.get("backend", backends.VLLM)
    if not backends.of(backend).engine_modelled:
        return "a custom backend's engine is not modelled"
    engine = backends.of(backend).short_name
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

