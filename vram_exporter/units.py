"""Byte sizes as people write them ("512MiB", "1.5GB", 3087467144) and as we print them."""

from __future__ import annotations

import math
import re
from decimal import Decimal

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40
_UNITS = {
    "": 1, "b": 1,
    "kib": KIB, "mib": MIB, "gib": GIB, "tib": TIB,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str) -> int:
    """Bytes from an integer or a string with KiB/MiB/GiB/TiB (powers of 2) or KB/MB/GB/TB (powers of 10).

    Fractions are allowed in strings ("1.5GiB") and rounded down to whole bytes.
    Raises ValueError with the accepted forms on anything else.
    """
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '512MiB', not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0 or value != int(value):
            raise ValueError(f"a size in bytes must be a whole non-negative number: {value}")
        return int(value)
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"not a size: {value!r} (use bytes, or a number with KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
        )
    # Decimal, not float: '4611686019GB' must be exact, and floats stop being exact past 2**53.
    return int(Decimal(match.group(1)) * _UNITS[unit])


def gib(n: float | None) -> str:
    """GPUStack's way of printing sizes: GiB with two decimals."""
    return "-" if n is None else f"{n / GIB:.2f} GiB"
