"""Rulebook A: GPUStack's placement of a vLLM model (DESIGN.md section 2).

Sources: gpustack 2.3.0 on PyPI, ``gpustack/policies/resource_view.py`` (allocatable),
``gpustack/policies/utils.py::estimate_model_vram`` (the estimate),
``gpustack/policies/candidate_selectors/vllm_resource_fit_selector.py`` (the tests).
"""

from __future__ import annotations

MIB = 2**20
GIB = 2**30


def total_whole_mib(total_bytes: int) -> int:
    """GPUStack's workers report memory in whole MiB; the scheduler sees T floored to MiB, in bytes."""
    return total_bytes // MIB * MIB


def allocatable_bytes(total_bytes: int, claimed: int, system_reserved: int) -> int:
    """A = max(T - claims - R_res, 0). Live used/free memory is never read by GPUStack."""
    return max(total_whole_mib(total_bytes) - claimed - system_reserved, 0)
