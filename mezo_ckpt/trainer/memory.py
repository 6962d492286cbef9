"""Keep training's resident memory at inference level.

The perturbed forward allocates and frees one layer's perturbed weights at a time (a few
MB each). glibc raises its mmap threshold each time such a block is freed, after which
blocks of that size come from the heap and stay resident after free, so the high-water
mark climbs by tens of MB. Pinning the threshold keeps large temporaries mmapped: freed
at once, returned to the OS at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_done = False


def pin_malloc_thresholds(mmap_threshold: int = 1 << 20) -> bool:
    """Fix glibc's mmap/trim thresholds (no-op elsewhere). Returns whether it applied."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
        ok = ok and libc.mallopt(M_TRIM_THRESHOLD, 2 * mmap_threshold) == 1
    except (OSError, AttributeError):  # not glibc
        return False
    _done = ok
    return ok
