"""The explain page's what-if, as a query: its fields and their vocabulary, parsed strictly, written
back as a link, and applied to a plan's inputs as plain values. The page (present/pages.py) links to
it; app/whatif.py answers it (a plan in a worker thread, one at a time).

A what-if comes from the network (a GET query string), so it is parsed strictly: known fields only,
each at most once, short, and within bounds; every problem is reported with its field, never raised
as a server error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import TypeVar
from urllib.parse import urlencode

from ..errors import BadInput
from ..rules import backends
from ..rules.flags import human_readable_int, parse_model_len, with_param, without_param
from ..rules.gpustack import ENV_CLAIM
from ..units import GIB, MIB, parse_size

Inputs = TypeVar("Inputs")  # a plan's inputs (app/inputs.py NodeInputs): a dataclass with cluster and models

PATH = "/what-if"
FIELDS = ("model", "gpu_memory_utilization", "system_reserved_vram", "max_model_len", "kv_cache_dtype",
          "vram_claim", "kv_cache_memory_bytes", "unset_gpu_memory_utilization")
YES = "yes"  # unset_gpu_memory_utilization=yes: the flags that size the KV cache removed
# vLLM's --kv-cache-dtype values whose bytes per element the rulebook knows (vllm/config/cache.py
# ``CacheDType``: fp8* is one byte; auto, float16 and bfloat16 keep two). fp8_inc, fp8_ds_mla and the
# turboquant formats are not modelled, so they are not offered.
KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")
NO_CLAIM = "none"  # vram_claim=none: drop the model's GPUSTACK_MODEL_VRAM_CLAIM
# What unset_gpu_memory_utilization removes, in words (rules/backends/vllm/versions.py KV_SIZING_FLAGS)
SIZING_FLAGS_WORDS = ", ".join(f"--{name}" for name in backends.KV_SIZING_FLAGS)
MAX_VALUE_CHARS = 128
MAX_PROBLEMS = 20  # listed on the page; a query of a thousand unknown fields gets the first ones
MAX_RESERVED_GIB = 1024
MAX_MODEL_LEN = 100_000_000
MAX_CLAIM = 2**50  # 1 PiB


class WhatIfError(BadInput):
    """Every problem of a what-if query, each as (field, message); ``str()`` joins them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class WhatIf:
    model: str
    gpu_memory_utilization: float | None = None
    system_reserved_vram: int | None = None  # bytes, whole GiB
    max_model_len: int | None = None  # tokens; -1: auto (the longest that fits)
    kv_cache_dtype: str | None = None
    vram_claim: int | str | None = None  # bytes, or NO_CLAIM
    kv_cache_memory_bytes: int | None = None  # bytes (vLLM: --kv-cache-memory-bytes)
    unset_gpu_memory_utilization: bool | None = None  # True: the flags that size the KV cache removed (vLLM 0.34)

    def query(self) -> str:
        """The canonical query string that reproduces this what-if."""
        return urlencode([(name, text) for name, text in self.fields() if text != ""])

    def fields(self) -> list[tuple[str, str]]:
        """Each field as text, "" where unchanged (the form's values)."""
        return [("model", self.model),
                ("gpu_memory_utilization", _text(self.gpu_memory_utilization)),
                ("system_reserved_vram", "" if self.system_reserved_vram is None
                 else str(self.system_reserved_vram // GIB)),
                ("max_model_len", "auto" if self.max_model_len == -1 else _text(self.max_model_len)),
                ("kv_cache_dtype", self.kv_cache_dtype or ""),
                ("vram_claim", _text(self.vram_claim)),
                ("kv_cache_memory_bytes", _bytes_text(self.kv_cache_memory_bytes)),
                ("unset_gpu_memory_utilization", YES if self.unset_gpu_memory_utilization else "")]

    def changes(self) -> list[str]:
        """What is changed, for a person."""
        out = []
        if self.system_reserved_vram is not None:
            out.append(f"the worker's --system-reserved vram = {self.system_reserved_vram // GIB} GiB")
        if self.gpu_memory_utilization is not None:
            out.append(f"{self.model}: --gpu-memory-utilization={self.gpu_memory_utilization}")
        if self.max_model_len is not None:
            out.append(f"{self.model}: --max-model-len={'auto' if self.max_model_len == -1 else self.max_model_len}")
        if self.kv_cache_dtype is not None:
            out.append(f"{self.model}: --kv-cache-dtype={self.kv_cache_dtype}")
        if self.vram_claim == NO_CLAIM:
            out.append(f"{self.model}: no {ENV_CLAIM}")
        elif self.vram_claim is not None:
            out.append(f"{self.model}: {ENV_CLAIM}={self.vram_claim}")
        if self.unset_gpu_memory_utilization:
            out.append(f"{self.model}: none of {SIZING_FLAGS_WORDS}")
        if self.kv_cache_memory_bytes is not None:
            out.append(f"{self.model}: --kv-cache-memory-bytes={_bytes_text(self.kv_cache_memory_bytes)}")
        return out

    def apply(self, inputs: Inputs) -> Inputs:
        """The inputs (a plan's: its cluster and models) with this what-if applied; raises WhatIfError
        for a model this node does not judge."""
        names = [spec.name for spec in inputs.models]
        if self.model not in names:
            raise WhatIfError([("model", f"{self.model!r} is not one of this node's models")])
        models = tuple(self._model(spec) if spec.name == self.model else spec for spec in inputs.models)
        cluster = inputs.cluster
        if self.system_reserved_vram is not None:
            cluster = replace(cluster, system_reserved_vram=self.system_reserved_vram)
        return replace(inputs, cluster=cluster, models=models)

    def _model(self, spec):
        parameters, env, max_len = tuple(spec.backend_parameters), dict(spec.env), spec.max_model_len
        # Each engine's own flags for the same knobs (its booked fraction, its context; rules/backends/__init__.py).
        backend = backends.of(spec.backend)
        fraction, length = backend.what_if_flags
        if self.unset_gpu_memory_utilization or self.kv_cache_memory_bytes is not None:
            parameters = self._kv_sizing(backend, parameters)
        if self.gpu_memory_utilization is not None:
            # Written with dashes: GPUStack and vLLM both read it (rules/flags.py).
            parameters = with_param(parameters, fraction, self.gpu_memory_utilization)
        if self.max_model_len is not None:
            max_len = self.max_model_len
            parameters = with_param(parameters, length, self.max_model_len)
        if self.kv_cache_dtype is not None:
            parameters = with_param(parameters, "kv-cache-dtype", self.kv_cache_dtype)
        if self.vram_claim == NO_CLAIM:
            env.pop(ENV_CLAIM, None)
        elif self.vram_claim is not None:
            env[ENV_CLAIM] = str(self.vram_claim)
        return replace(spec, backend_parameters=parameters, env=env, max_model_len=max_len)

    def _kv_sizing(self, backend, parameters: tuple[str, ...]) -> tuple[str, ...]:
        """The KV cache's own flags: removed (the engine then sizes it from what is free), or its size given."""
        field = "kv_cache_memory_bytes" if self.kv_cache_memory_bytes is not None else "unset_gpu_memory_utilization"
        if backend.kv_bytes_flag is None:
            raise WhatIfError([(field, f"{self.model} runs on {backend.display_name}, which has no such flag")])
        if self.unset_gpu_memory_utilization:
            for name in backend.kv_sizing_flags:
                parameters = without_param(parameters, name)
        if self.kv_cache_memory_bytes is not None:
            parameters = with_param(parameters, backend.kv_bytes_flag, _bytes_text(self.kv_cache_memory_bytes))
        return parameters


def from_fix(model: str, change: Mapping[str, object]) -> WhatIf | None:
    """The what-if that makes a fix's change (present/report.py's ``change``, in the knobs' own terms and
    units), or None where it cannot (pinning a GPU, more GPUs, freeing memory)."""
    if not change or not set(change) <= set(FIELDS[1:]):
        return None
    return WhatIf(model, **change)


def _text(value) -> str:
    return "" if value is None else str(value)


def _bytes_text(value: int | None) -> str:
    """Bytes as vLLM's human_readable_int reads them: whole MiB as ``<n>M`` (the fixes' own spelling)."""
    if value is None:
        return ""
    return f"{value // MIB}M" if value % MIB == 0 else str(value)


def parse(items: Iterable[tuple[str, str]]) -> WhatIf:
    """A what-if from a query string's (name, value) pairs; raises WhatIfError listing every problem.
    An empty value leaves that knob as it is."""
    problems: list[tuple[str, str]] = []
    given: dict[str, str] = {}
    for name, value in items:
        if name not in FIELDS:
            shown = name[:40] if name.isprintable() else ascii(name[:40])
            problems.append((shown, f"unknown field (known: {', '.join(FIELDS)})"))
        elif name in given:
            problems.append((name, "given more than once"))
        elif len(value) > MAX_VALUE_CHARS:
            problems.append((name, f"longer than {MAX_VALUE_CHARS} characters"))
        elif not value.isprintable() or (name != "model" and not value.isascii()):
            problems.append((name, f"{ascii(value)}: unexpected characters"))
        else:
            given[name] = value.strip()
        if len(problems) >= MAX_PROBLEMS:
            problems.append(("...", "more problems not listed"))
            break
    values: dict[str, object] = {}
    for name, parser in _PARSERS.items():
        text = given.get(name, "")
        if text == "":
            continue
        try:
            values[name] = parser(text)
        except ValueError as exc:
            problems.append((name, str(exc)))
    if not given.get("model"):
        problems.append(("model", "choose the model to change"))
    if values.get("unset_gpu_memory_utilization"):
        for other in ("gpu_memory_utilization", "kv_cache_memory_bytes"):
            if other in values:
                problems.append((other, "removed by unset_gpu_memory_utilization: give one or the other"))
    if problems:
        raise WhatIfError(problems)
    return WhatIf(model=given["model"], **values)


def _utilization(text: str) -> float:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number (e.g. 0.85)") from None
    if not value.is_finite() or not 0 < value <= 1 or not float(value) > 0:  # 1e-400 is 0.0 as a float
        raise ValueError(f"{text} is not in (0, 1]: a fraction of the GPU's memory, e.g. 0.85")
    return float(value)


def _reserved(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r}: whole GiB, as GPUStack's --system-reserved takes it (e.g. 0 or 1)")
    if int(text) > MAX_RESERVED_GIB:
        raise ValueError(f"{text} GiB is more than {MAX_RESERVED_GIB} GiB")
    return int(text) * GIB


def _model_len(text: str) -> int:
    try:
        value = parse_model_len(text)
    except BadInput as exc:
        raise ValueError(str(exc)) from None
    if value == 0 or value > MAX_MODEL_LEN:
        raise ValueError(f"{text} tokens: expected 1 to {MAX_MODEL_LEN} tokens, or auto")
    return value


def _kv_cache_dtype(text: str) -> str:
    if text not in KV_CACHE_DTYPES:
        raise ValueError(f"{text!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
    return text


def _claim(text: str) -> int | str:
    if text.lower() == NO_CLAIM:
        return NO_CLAIM
    value = parse_size(text)  # ValueError with the accepted forms
    if not 0 < value <= MAX_CLAIM:
        raise ValueError(f"{text}: expected 1 byte to 1 PiB (GPUStack reads whole bytes), or none")
    return value


def _kv_bytes(text: str) -> int:
    try:
        value = human_readable_int(text)
    except ValueError:
        raise ValueError(f"{text!r}: bytes as vLLM reads them (e.g. 8589934592, 8192M, 8G)") from None
    if not 0 < value <= MAX_CLAIM:
        raise ValueError(f"{text}: expected 1 byte to 1 PiB")
    return value


def _yes(text: str) -> bool:
    if text.lower() != YES:
        raise ValueError(f"{text!r}: {YES}, or leave it empty")
    return True


_PARSERS = {"gpu_memory_utilization": _utilization, "system_reserved_vram": _reserved,
            "max_model_len": _model_len, "kv_cache_dtype": _kv_cache_dtype, "vram_claim": _claim,
            "kv_cache_memory_bytes": _kv_bytes, "unset_gpu_memory_utilization": _yes}
