"""Prometheus text (0.0.4) and OpenMetrics (1.0.0) rendering, built for large, mostly unchanged scrapes.

prometheus_client's ``generate_latest`` spends about 12 us per sample; a node with 8 GPUs and 200
models has tens of thousands. Here a family's samples come in *segments* (one GPU, one model, one
model's check...), and a segment whose label sets and values are the very same objects as in the
last scrape is not rendered again: its bytes are reused. Escaping and number formatting follow the
exposition formats exactly (tests check them against prometheus_client's own parsers).
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
    text: str | None = None  # already rendered by its producer (with sample_prefix): used as it is


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
    """Renders families, reusing the bytes of segments unchanged since the last render."""

    def __init__(self) -> None:
        # (openmetrics, family name, segment key) -> (labels object, values object, rendered text)
        self._cache: dict[tuple, tuple[object, object, str]] = {}
        # (openmetrics, family name) -> (segments list object, rendered text): a producer that hands
        # over the very same list of segments again gets the whole family back without a look inside.
        self._families: dict[tuple, tuple[object, str]] = {}
        self._prefixes: dict[tuple, str] = {}

    def render(self, families: Iterable[Family], openmetrics: bool = False, eof: bool = True) -> bytes:
        """The exposition of ``families``; ``eof=False`` leaves out OpenMetrics' closing line (for a
        body assembled from several renders, the last of which closes it)."""
        parts: list[str] = []
        seen: dict[tuple, tuple[object, object, str]] = {}
        families_seen: dict[tuple, tuple[object, str]] = {}
        for family in families:
            if not family.segments:
                continue
            whole = self._families.get((openmetrics, family.name))
            if whole is not None and whole[0] is family.segments:
                parts.append(whole[1])
                families_seen[(openmetrics, family.name)] = whole
                continue
            start = len(parts)
            parts.append(self._header(family, openmetrics))
            for segment in family.segments:
                if segment.text is not None:
                    parts.append(segment.text)
                    continue
                key = (openmetrics, family.name, segment.key)
                cached = self._cache.get(key)
                if cached is not None and cached[0] is segment.labels and cached[1] is segment.values:
                    text = cached[2]
                elif cached is not None and cached[0] == segment.labels and cached[1] == segment.values:
                    text = cached[2]
                else:
                    text = self._segment(family, segment)
                seen[key] = (segment.labels, segment.values, text)
                parts.append(text)
            families_seen[(openmetrics, family.name)] = (family.segments, "".join(parts[start:]))
        if openmetrics and eof:
            parts.append("# EOF\n")
        # Forget what no longer exists, but only now and then: segments of families reused whole
        # were not looked at, and stay useful for when their family changes.
        self._cache.update(seen)
        if len(self._cache) > 4 * len(seen) + 10_000:
            self._cache = seen
        self._families = families_seen
        return "".join(parts).encode()

    def _header(self, family: Family, openmetrics: bool) -> str:
        name = family.name
        kind = family.type
        if kind == "info" and openmetrics:
            name = name.removesuffix("_info")
        elif kind == "info":
            kind = "gauge"
        return f"# HELP {name} {escape_help(family.help)}\n# TYPE {name} {kind}\n"

    def _segment(self, family: Family, segment: Segment) -> str:
        lines = []
        for labels, value in zip(segment.labels, segment.values, strict=True):
            lines.append(f"{self._prefix(family, labels)} {format_value(value)}\n")
        return "".join(lines)

    def _prefix(self, family: Family, labels: tuple[str, ...]) -> str:
        key = (family.name, family.label_names, labels)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) > 500_000:  # label churn (e.g. PIDs) must not grow memory forever
                self._prefixes.clear()
            prefix = sample_prefix(family.name, family.label_names, labels)
            self._prefixes[key] = prefix
        return prefix


def render_samples(name: str, label_names: Sequence[str], labels: Sequence[tuple[str, ...]],
                   values: Sequence[float]) -> str:
    """Sample lines, the same in both formats: for a producer that renders ahead (Segment.text)."""
    return "".join(f"{sample_prefix(name, label_names, l)} {format_value(v)}\n"
                   for l, v in zip(labels, values, strict=True))


def sample_prefix(name: str, label_names: Sequence[str], labels: Sequence[str]) -> str:
    """A sample's line up to its value, without the space: ``name{a="1",b="x"}``."""
    pairs = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(label_names, labels, strict=True))
    return f"{name}{{{pairs}}}" if pairs else name


def wants_openmetrics(accept: str | None) -> bool:
    """True when the Accept header asks for OpenMetrics 1.0.0 (or names it without a version)."""
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media == "application/openmetrics-text":
            version = next((p.split("=", 1)[1] for p in params if p.startswith("version=")), "1.0.0")
            if version in ("1.0.0", "0.0.1"):
                return True
    return False
