"""Keep glibc from returning freed memory to the kernel between torch ops.

With glibc's defaults, every large temporary tensor is a fresh ``mmap`` and every free a
``munmap``, so each training op page-faults its buffers in again: large-batch torch work
measured 2-3x slower here. ``mallopt(M_MMAP_MAX, 0)`` keeps big blocks on the heap and a
high ``M_TRIM_THRESHOLD`` keeps the heap from shrinking, the runtime equivalent of
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``. The cost is that the process keeps its
peak heap. Environment settings made by the user win; other C libraries are left alone.
"""

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def tune_malloc(trim_threshold: int = 1 << 30) -> bool:
    """Apply the settings once per process; return True when glibc accepted them."""
    global _applied
    if _applied:
        return True
    if 'MALLOC_MMAP_MAX_' in os.environ or 'MALLOC_TRIM_THRESHOLD_' in os.environ:
        return False
    if os.environ.get('ROS2_LATENT_REPLAY_NO_MALLOC_TUNING'):
        return False
    name = ctypes.util.find_library('c')
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    _applied = ok
    return ok
