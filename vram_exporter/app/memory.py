"""Large buffers go back to the system once freed.

glibc's malloc gives each large allocation its own mapping and unmaps it when freed, but each time such a
block is freed it raises that threshold (up to 32 MiB): after one endless answer read up to
--gpustack.max-body-bytes (16 MiB), buffers that large come from the heap, and the heap keeps them. The
soak showed it: RSS 54 MiB, then 72 to 87 MiB after the first endless-body faults, while the memory Python
traces stayed flat (25 MiB); with a fixed threshold RSS stayed at 54 MiB. So the threshold is fixed here,
unless MALLOC_MMAP_THRESHOLD_ is set (the operator's choice). Other C libraries: nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE_BYTES = 1 << 20  # a scrape's and a read's small buffers stay on the heap; bodies and documents do not


def give_large_buffers_back() -> bool:
    """True when the C library took the fixed threshold."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    taken = bool(mallopt(M_MMAP_THRESHOLD, LARGE_BYTES))
    log.debug("malloc's mmap threshold fixed at %d bytes: %s", LARGE_BYTES, taken)
    return taken
