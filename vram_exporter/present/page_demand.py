"""The explain page's demand chart: a model's demand drawn on GPUStack's bar of each GPU it is judged on.

GPUStack (>= 0.7) places a model on one GPU when (1) its estimate E <= g x total and (2) g x total
<= allocatable (docs/rulebooks.md#a-gpustacks-placement). Both are drawn from the start of the allocatable part of the
GPU's bar: the claim g x total must end before the GPU ends (test 2), the estimate before the claim
ends (test 1; under gpustack-0.6 rules, before the GPU ends: E <= allocatable). What sticks out is
red, so the gap is seen at a glance. The figures come from the report's headroom per check (the
rulebooks' own numbers), never recomputed here.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ..rules import backends
from ..units import gib

DEMAND_COLOURS = {"system-reserved": "#5b5b9a", "claimed": "#3f7fbf", "allocatable": "#bfe0f5",
                  "g x total (its claim)": "#f2c14e", "estimate E": "#8e5cc2", "short (over the limit)": "#d93a3a"}
_LABEL, _WIDTH, _CAP = 90, 520, 1.35  # px for the label, px for the GPU's total, most drawn (x total)
MAX_GPUS = 8


def demand_chart(model: dict[str, Any], bookings: dict[str, dict[str, Any]], scheduler: str) -> str:
    """The chart for ``model`` (a report model), or "" where it has no demand to draw (running)."""
    if model["placed"] or not model["checks"] or not backends.of(model.get("backend", backends.VLLM)).engine_modelled:
        return ""  # a custom backend has one test, allocatable >= its claim: the headroom table says it
    indexes = [str(i) for i in model["gpus"]] if model["schedulable"] and model["gpus"] else list(model["checks"])
    indexes = [i for i in indexes if i in bookings and i in model["checks"]]
    shown = indexes[:MAX_GPUS]
    if not shown:
        return ""
    g = model["gpu_memory_utilization"]["gpustack"]
    rows = [_gpu_demand(i, model["checks"][i], bookings[i], g, model["estimate_bytes"], scheduler) for i in shown]
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{escape(k)}</span>'
                     for k, c in DEMAND_COLOURS.items())
    more = (f"<p class=dim>and {len(indexes) - len(shown)} more GPUs: see the headroom table.</p>"
            if len(indexes) > len(shown) else "")
    return (f'<h4>What it asks of GPUStack, GPU by GPU</h4><p class="legend">{legend}</p>'
            + "".join(rows) + more)


def _gpu_demand(index: str, checks: dict[str, Any], booking: dict[str, Any], g: float, estimate: int,
                scheduler: str) -> str:
    total, reserved = booking["total"], min(booking["system_reserved"], booking["total"])
    claim = total * g
    # At the model's turn (candidates placed before it included): allocatable = headroom of test 2 + g x T.
    allocatable = max(checks["gpustack_allocatable"]["headroom_bytes"] + claim, 0)
    claimed = max(total - reserved - allocatable, 0)
    start = total - allocatable
    limit_e = claim if scheduler == "gpustack" else allocatable
    share = limit_e - checks["gpustack_estimate"]["headroom_bytes"]  # E, or E / n on n GPUs
    parts = round(estimate / share) if share > 0 else 1
    scale = _WIDTH / total if total else 0

    def x(b: float) -> float:
        return _LABEL + min(b, total * _CAP) * scale

    def rect(lo: float, hi: float, y: int, h: int, colour: str, what: str) -> str:
        if hi <= lo:
            return ""
        return (f'<rect x="{x(lo):.1f}" y="{y}" width="{x(hi) - x(lo):.1f}" height="{h}" fill="{colour}">'
                f"<title>{escape(what)}</title></rect>")

    c = DEMAND_COLOURS
    share_name = "estimate E" if parts <= 1 else f"estimate E / {parts} GPUs"
    limit_name = "g x total" if scheduler == "gpustack" else "allocatable"
    svg = [f'<text x="0" y="17" font-size="12">GPU {escape(index)}</text>',
           '<text x="0" y="42" font-size="12">g x total</text>',
           f'<text x="0" y="67" font-size="12">{"estimate" if parts <= 1 else f"estimate/{parts}"}</text>',
           rect(0, reserved, 2, 22, c["system-reserved"], f"system-reserved {gib(reserved)}"),
           rect(reserved, reserved + claimed, 2, 22, c["claimed"], f"claimed {gib(claimed)}"),
           rect(start, total, 2, 22, c["allocatable"], f"allocatable {gib(allocatable)}"),
           # Test 2: the claim, from where allocatable starts, must end before the GPU does.
           rect(start, min(start + claim, total), 28, 20, c["g x total (its claim)"], f"g x total {gib(claim)}"),
           rect(total, start + claim, 28, 20, c["short (over the limit)"],
                f"g x total exceeds allocatable by {gib(start + claim - total)}"),
           # Test 1: the estimate must end before the claim does (gpustack-0.6: before the GPU does).
           rect(start, min(start + share, start + limit_e), 53, 20, c["estimate E"], f"{share_name} {gib(share)}"),
           rect(start + limit_e, start + share, 53, 20, c["short (over the limit)"],
                f"the estimate exceeds {limit_name} by {gib(share - limit_e)}"),
           f'<line x1="{x(total):.1f}" y1="0" x2="{x(total):.1f}" y2="50" stroke="#1d2330" stroke-dasharray="3,2"/>',
           f'<line x1="{x(start + limit_e):.1f}" y1="50" x2="{x(start + limit_e):.1f}" y2="76" stroke="#1d2330" '
           'stroke-width="2"/>']
    if start + max(claim, share) > total * _CAP:
        svg.append(f'<text x="{x(total * _CAP) + 4:.1f}" y="67" font-size="12" fill="#b00020">&#8594;</text>')
    width = _LABEL + _WIDTH * _CAP + 20
    test1 = _test(f"{share_name} {gib(share)}", limit_name, limit_e, share)
    test2 = _test(f"g x total {gib(claim)}", "allocatable", allocatable, claim)
    label = f"GPU {index}: {test1[0]}; {test2[0]}"
    return (f'<p class="demand">GPU {escape(index)}: {test1[1]} &middot; {test2[1]}</p>'
            f'<svg role="img" aria-label="{escape(label)}" width="{width:.0f}" height="78" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(svg)}</svg>')


def _test(what: str, limit_name: str, limit: float, value: float) -> tuple[str, str]:
    """The test in words: (text, HTML)."""
    if value <= limit:
        text = f"{what} <= {limit_name} {gib(limit)}"
        return f"{text}: passes", f'{_html(text)} <span class="good">passes</span>'
    text = f"{what} > {limit_name} {gib(limit)}"
    return f"{text}: {gib(value - limit)} short", f'{_html(text)}: <span class="bad">{gib(value - limit)} short</span>'


def _html(text: str) -> str:
    return escape(text).replace("&lt;=", "&le;").replace(" x ", " &times; ")
