"""Prometheus text (0.0.4) and OpenMetrics (1.0.0) rendering, built for large, mostly unchanged scrapes.

prometheus_client's ``generate_latest`` spends about 12 us per sample; a node with 8 GPUs and 200
models has tens of thousands. Here a family's samples come in *segments* (one GPU, one model, one
model's check...), and a segment that only changes with the plan comes rendered already
(``Segment.text``, made in the planner's thread, encoded already): a scrape renders and encodes only
what moved, and the body is one join of bytes. Escaping and number formatting follow the exposition
formats exactly (tests check them against prometheus_client's own parsers).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers exactly (bytes are integers: no 6.436159488e+09), floats in shortest round-trip form."""
    if type(value) is int:
        return str(value)
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


@dataclass(slots=True)
class Segment:
    """Samples that change together. ``key`` names it across scrapes; ``labels`` holds one tuple of
    label values per sample, in the family's label-name order; ``values`` one number per sample."""

    key: Hashable
    labels: Sequence[tuple[str, ...]]
    values: Sequence[float]
    # Already rendered by its producer (with sample_prefix), used as it is: bytes where it is made once
    # per plan (encoded once), str where it is made at a scrape.
    text: str | bytes | None = None


@dataclass(slots=True)
class Family:
    name: str  # the sample name; for type "info" it ends in _info
    help: str
    type: str  # "gauge" or "info"
    label_names: tuple[str, ...]
    segments: list[Segment] = field(default_factory=list)

    def add(self, key: Hashable, labels: Sequence[tuple[str, ...]], values: Sequence[float]) -> None:
        self.segments.append(Segment(key, labels, values))

    def sample(self, *labels_and_value) -> None:
        """One sample as its own segment: ``family.sample("0", "GPU-x", 42)``."""
        *labels, value = labels_and_value
        self.segments.append(Segment(tuple(labels), (tuple(labels),), (value,)))


class Renderer:
    """Renders what it is given, remembering nothing: what does not change between scrapes comes
    already rendered (``Segment.text``, made with the plan), and an unchanged scrape is answered
    with the last body by the plan (app/plan.py ``Planner.last_body``)."""

    def render(self, families: Iterable[Family], openmetrics: bool = False, eof: bool = True) -> bytes:
        """The exposition of ``families``; ``eof=False`` leaves out OpenMetrics' closing line (for a
        body assembled from several renders, the last of which closes it). One join of ``render_parts``:
        at 8 GPUs x 200 models the plan's prepared bytes are 76% of a 1.7 MB body, and joining them as
        text with the rest, then encoding the whole, copied it twice at every change of a reading (1.2
        against 0.6 ms, benchmarks/RESULTS.md, "A drifted scrape in parts")."""
        return b"".join(self.render_parts(families, openmetrics, eof))

    def render_parts(self, families: Iterable[Family], openmetrics: bool = False, eof: bool = True) -> tuple[bytes, ...]:
        """``render``'s bytes in parts: each segment already encoded (``Segment.text`` as bytes) is a part
        of its own, the same object; what is rendered here between two of them one encoded part."""
        parts: list[bytes] = []
        pending: list[str] = []  # rendered since the last prepared part
        pairs_of: dict = {}  # for this render only: the GPU families say each GPU's labels a dozen times
        for family in families:
            if not family.segments:
                continue
            pending.append(_header(family, openmetrics))
            for segment in family.segments:
                text = segment.text
                if text is None:
                    pending.append(_lines(family.name, family.label_names, segment.labels, segment.values, pairs_of))
                elif type(text) is bytes:
                    parts.append("".join(pending).encode())
                    pending.clear()
                    parts.append(text)
                else:
                    pending.append(text)
        if openmetrics and eof:
            pending.append("# EOF\n")
        parts.append("".join(pending).encode())
        return tuple(part for part in parts if part)


def _header(family: Family, openmetrics: bool) -> str:
    name = family.name
    kind = family.type
    if kind == "info" and openmetrics:
        name = name.removesuffix("_info")
    elif kind == "info":
        kind = "gauge"
    return f"# HELP {name} {escape_help(family.help)}\n# TYPE {name} {kind}\n"


def render_samples(name: str, label_names: Sequence[str], labels: Sequence[tuple[str, ...]],
                   values: Sequence[float]) -> str:
    """Sample lines, the same in both formats: for a producer that renders ahead (Segment.text)."""
    return _lines(name, label_names, labels, values, {})


def sample_prefix(name: str, label_names: Sequence[str], labels: Sequence[str]) -> str:
    """A sample's line up to its value, without the space: ``name{a="1",b="x"}``."""
    pairs = _pairs(label_names, labels)
    return f"{name}{{{pairs}}}" if pairs else name


def _lines(name: str, label_names: Sequence[str], labels: Sequence[tuple[str, ...]], values: Sequence[float],
           pairs_of: dict) -> str:
    """``render_samples``, each set of label values rendered once for all the lines that ``pairs_of``
    (label names and values -> pairs) is kept for."""
    lines = []
    for label_values, value in zip(labels, values, strict=True):
        key = (label_names, label_values)
        pairs = pairs_of.get(key)
        if pairs is None:
            pairs = pairs_of[key] = _pairs(label_names, label_values)
        lines.append(f"{name}{{{pairs}}} {format_value(value)}\n" if pairs else f"{name} {format_value(value)}\n")
    return "".join(lines)


def _pairs(label_names: Sequence[str], labels: Sequence[str]) -> str:
    return ",".join([f'{n}="{escape_label_value(v)}"' for n, v in zip(label_names, labels, strict=True)])


def wants_openmetrics(accept: str | None) -> bool:
    """True when the Accept header asks for OpenMetrics 1.0.0 (or names it without a version)."""
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media == "application/openmetrics-text":
            version = next((p.split("=", 1)[1] for p in params if p.startswith("version=")), "1.0.0")
            if version in ("1.0.0", "0.0.1"):
                return True
    return False
