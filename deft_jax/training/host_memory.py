"""Hand the process's freed heap back to the operating system (glibc's malloc_trim).

XLA's compiler, orbax's writes and the eval programs allocate many small blocks; once freed, glibc keeps
them in its arenas, so the resident set stays at its high-water mark and the next phase adds on top.
`release_freed_heap()` returns them (a no-op where the C library has no malloc_trim, e.g. macOS, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_heap() -> bool:
    """malloc_trim(0): free heap pages go back to the OS. True when the C library released some."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
