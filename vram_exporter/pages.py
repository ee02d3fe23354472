"""HTML pages the exporter serves; plain HTML and inline CSS, no JavaScript."""

from __future__ import annotations

from html import escape

from . import __version__
from .snapshot import NodeSnapshot

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#1d2330}
h1{font-size:1.5rem} table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccd;padding:.3rem .6rem;text-align:right} th{background:#eef}
td.l,th.l{text-align:left} .down{color:#b00020;font-weight:bold} code{background:#f3f3f7;padding:0 .2rem}
"""


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def landing_page(snapshot: NodeSnapshot, telemetry_path: str) -> str:
    source = escape(snapshot.source)
    status = (
        f'<p class="down">NVML is not answering: {escape(snapshot.error)}. '
        "The exporter keeps serving and retries on every scrape.</p>"
        if snapshot.error else ""
    )
    rows = "".join(_gpu_row(snapshot, gpu) for gpu in snapshot.gpus)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vram-exporter</title>
<style>{_STYLE}</style></head><body>
<h1>vram-exporter {escape(__version__)}</h1>
<p>Reads GPU memory through NVML and tells whether each model will fit under GPUStack's
scheduler and vLLM's memory rules. Metrics: <a href="{escape(telemetry_path)}">{escape(telemetry_path)}</a>.</p>
<p>Reading from: <code>{source}</code>; driver <code>{escape(snapshot.driver_version or "unknown")}</code>.</p>
{status}
<table id="gpus"><tr><th>GPU</th><th class="l">Name</th><th class="l">UUID</th><th>Total</th>
<th>Driver-reserved</th><th>Used</th><th>Free</th><th>Processes</th></tr>{rows}</table>
</body></html>
"""


def _gpu_row(snapshot: NodeSnapshot, gpu) -> str:
    head = f"<td>{gpu.index}</td><td class=l>{escape(gpu.name)}</td><td class=l>{escape(gpu.uuid)}</td>"
    if gpu.memory is None:
        return f'<tr>{head}<td colspan=5 class="down">unreadable: {escape(gpu.error or "")}</td></tr>'
    mem = gpu.memory
    return (
        f"<tr>{head}<td>{gib(mem.total)}</td><td>{gib(mem.reserved)}</td><td>{gib(mem.used)}</td>"
        f"<td>{gib(mem.free)}</td><td>{len(gpu.processes)}</td></tr>"
    )
