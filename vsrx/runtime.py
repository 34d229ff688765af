"""Process-wide settings that the command line applies before any heavy work."""

from __future__ import annotations

import ctypes
import os
import platform

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def keep_freed_memory() -> bool:
    """Serve large blocks from glibc's heap and keep freed memory there for reuse.

    By default glibc gives every block over 32 MB its own fresh mapping and unmaps it on free,
    so each 720p activation or stacked N*C decomposition tensor is page-faulted and zeroed
    again on every window; on a 2-core VM that was close to half of the CPU time of a window.
    With mmap off and trimming off, the heap grows to the peak working set once and stays
    there (peak RSS is unchanged; RSS no longer shrinks after a peak). Only glibc; skipped when
    the user set any ``MALLOC_*`` variable. Returns whether the settings were applied.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(key.startswith("MALLOC_") for key in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # A trim threshold of -1 reads as SIZE_MAX inside glibc: never trim.
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_TOP_PAD, 1 << 30))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
