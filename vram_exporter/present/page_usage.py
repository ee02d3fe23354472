"""The explain page's opening: this node at a glance, and the order of the model list.

Per GPU two bars on one scale: what GPUStack booked (its system reserve, then each instance's claim) and
what is used (the driver's reserve, each instance's processes, processes of nobody), each instance in one
colour on both bars, so an instance that uses more than it booked shows at once. Below them the models
that will not fit, each with its first working fix; then the model list, sorted by what needs attention.
A running model's checks are what a new start would meet: GPUStack does not re-check a placed instance.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ..rules.usage import NodeUsage
from ..units import gib

_PALETTE = ("#3f7fbf", "#d9822b", "#5aa469", "#a05195", "#c9a227", "#2f9e9e", "#d45087", "#6b6ecf")
_RESERVED, _NOBODY, _FREE = "#7a7a8c", "#b00020", "#e6e9ef"
_WIDTH = 640
_STYLE = """
.glance{border:1px solid #dde;border-radius:6px;padding:.3rem 1rem .6rem;margin:1rem 0;background:#fbfcfe}
.glance h3{margin:.6rem 0 .1rem} .glance table{font-size:.9rem} .glance td.warn{color:#b00020;font-weight:600}
.glance ul.fixes li{font-size:.95rem}
"""


def usage_report(usage: NodeUsage | None) -> list[dict[str, Any]] | None:
    """Booked against used for /api/v1/fit and the page (None: neither GPUStack nor a manifest's
    ``processes`` say which process is whose)."""
    if usage is None:
        return None
    return [{"gpu": gpu.gpu, "total": gpu.total, "booked": gpu.booked, "unattributed": gpu.unattributed,
             "overbooked": gpu.overbooked,
             "instances": [{"instance": row.instance, "model": row.model, "booked": row.booked, "used": row.used,
                            "overrun": row.overrun, "idle_claim": row.idle_claim, "watched": row.watched}
                           for row in gpu.instances]}
            for gpu in usage.gpus]


def at_a_glance(report: dict[str, Any]) -> str:
    """The section the page opens with."""
    if report.get("usage") is None and not report["models"]:
        return ""  # nothing booked, nothing to judge: the GPUs section says it all
    usage = {str(gpu["gpu"]): gpu for gpu in report.get("usage") or []}
    colours = _colours(report.get("usage") or [])
    # The bars need bookings beside processes (usage: GPUStack's, or a manifest's running models with
    # ``processes``); without, the node has its GPUs section further down.
    bars = "".join(_gpu_glance(gpu, usage.get(str(gpu["index"])), colours) for gpu in report["gpus"]
                   if gpu["up"] and str(gpu["index"]) in usage)
    failing = [m for m in report["models"] if not _fits(m) and not m["placed"]]
    items = "".join(f"<li>{escape(m['name'])}: {_first_fix(m, report['fixes_known'])}</li>" for m in failing)
    wont = (f"<h3>{len(failing)} model{'s' if len(failing) != 1 else ''} will not fit here</h3>"
            f'<ul class="fixes">{items}</ul>') if failing else "<p>Every model fits on this node.</p>"
    legend = ('<p class="legend dim">one colour per instance: pale, what GPUStack booked; solid, what its processes '
              f'use &middot; <i class="sw" style="background:{_NOBODY}"></i>used by no instance &middot; '
              f'<i class="sw" style="background:{_RESERVED}"></i>reserved &middot; '
              f'<i class="sw" style="background:{_FREE}"></i>neither</p>') if bars else ""
    return (f'<style>{_STYLE}</style><section class="glance"><h2>This node at a glance</h2>{legend}{bars}{wont}'
            "</section>")


def by_attention(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Errors first, then the models that will not fit, then the running ones, then the rest; by name within."""
    def rank(model: dict[str, Any]) -> tuple[int, str]:
        if model["error"]:
            return 0, model["name"]
        if model["placed"]:
            return 2, model["name"]
        return (1 if not _fits(model) else 3), model["name"]
    return sorted(models, key=rank)


def running_words(model: dict[str, Any]) -> str | None:
    """The verdict line of a running model (None: not running): its checks are not failures."""
    if not model["placed"]:
        return None
    where = f" on GPU {', '.join(map(str, model['gpus']))}" if model["gpus"] else ""
    note = ("" if model["startable"] else
            "; the checks below are what a new start would meet, and one would fail now (a restart would not "
            "come up)")
    return (f'<span class="good">running</span>{where}: GPUStack placed it and does not re-check a placed '
            f"instance{note}.")


def _fits(model: dict[str, Any]) -> bool:
    return bool(model["schedulable"] and model["startable"] and not model["error"])


def _first_fix(model: dict[str, Any], fixes_known: bool) -> str:
    if model["error"]:
        return f"cannot be judged: {escape(model['error'])}"
    working = [f for f in model["fixes"] if f["works"]]
    if working:
        return f'{escape(working[0]["action"])} <a href="#{escape(model["name"])}">more</a>'
    return "the fixes are still being computed" if not fixes_known else "no single change makes it fit here"


def _colours(gpus: list[dict[str, Any]]) -> dict[str, str]:
    names = sorted({row["instance"] for gpu in gpus for row in gpu["instances"]})
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def _gpu_glance(gpu: dict[str, Any], usage: dict[str, Any], colours: dict[str, str]) -> str:
    mem, total = gpu["memory"], gpu["memory"]["total"]
    rows = usage["instances"]
    system_reserved = gpu.get("gpustack", {}).get("system_reserved", 0)
    booked = [("GPUStack's system reserve", system_reserved, _RESERVED, 1.0)]
    booked += [(f"{r['instance']} booked", r["booked"], colours[r["instance"]], 0.45) for r in rows]
    used = [("driver-reserved", mem["reserved"] or 0, _RESERVED, 1.0)]
    used += [(f"{r['instance']} used", r["used"], colours[r["instance"]], 1.0) for r in rows]
    used.append(("used by no instance", usage["unattributed"], _NOBODY, 1.0))
    svg = (f'<svg role=img aria-label="GPU {gpu["index"]}: booked and used" width="{_WIDTH + 110}" height="62" '
           f'xmlns="http://www.w3.org/2000/svg">{_bar("booked", booked, total, 0)}{_bar("used", used, total, 1)}</svg>')
    title = f"GPU {gpu['index']} &middot; {escape(gpu['name'] or '?')} &middot; {gib(total)}"
    if usage["overbooked"]:
        title += f' <span class="bad">booked {gib(usage["booked"])}: more than the card</span>'
    return f"<h3>{title}</h3>{svg}{_table(rows, usage, colours)}"


def _bar(label: str, parts: list[tuple[str, int, str, float]], total: int, row: int) -> str:
    y, x = row * 30 + 2, 70.0
    out = [f'<text x="0" y="{y + 18}" font-size="13">{label}</text>',
           f'<rect x="70" y="{y}" width="{_WIDTH}" height="24" fill="{_FREE}"/>']
    for name, value, colour, opacity in parts:
        width = min(_WIDTH * value / total, 70 + _WIDTH - x) if total else 0
        if width > 0:
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="24" fill="{colour}" '
                       f'fill-opacity="{opacity}" stroke="#fff"><title>{escape(name)}: {gib(value)}</title></rect>')
            x += width
    return "".join(out)


def _table(rows: list[dict[str, Any]], usage: dict[str, Any], colours: dict[str, str]) -> str:
    body = "".join(
        f'<tr><td class=l><i class="sw" style="background:{colours[r["instance"]]}"></i>{escape(r["instance"])}</td>'
        f'<td class=l>{escape(r["model"])}</td><td>{gib(r["booked"])}</td>'
        f'<td{" class=warn" if r["overrun"] else ""}>{gib(r["used"])}</td><td class=l>{_state(r)}</td></tr>'
        for r in rows)
    body += (f'<tr><td class=l><i class="sw" style="background:{_NOBODY}"></i>no instance</td><td></td><td></td>'
             f'<td>{gib(usage["unattributed"])}</td><td></td></tr>')
    return ("<table><tr><th class=l>instance</th><th class=l>model</th><th>booked</th><th>used</th>"
            f"<th class=l></th></tr>{body}</table>")


def _state(row: dict[str, Any]) -> str:
    if row["overrun"]:
        return '<span class="bad">uses more than booked; GPUStack places by bookings</span>'
    if row["idle_claim"]:
        return "booked, no process here (starting, or a claim left behind)"
    if not row.get("watched", True):
        return "booked; its processes are not known (the manifest gives it no <code>processes</code>)"
    if row["booked"] == 0:
        return "holds memory it did not book here"
    return ""
