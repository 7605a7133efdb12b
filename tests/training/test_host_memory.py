"""release_freed_heap hands freed heap pages back: the resident set shrinks by what was freed."""
import ctypes.util
import platform

import psutil
import pytest

from deft_jax.training import host_memory

MIB = 2**20


@pytest.mark.skipif(platform.system() != "Linux" or "libc" not in (ctypes.util.find_library("c") or ""),
                    reason="glibc's malloc_trim")
def test_freed_heap_goes_back_to_the_os():
    process = psutil.Process()
    blocks = [bytearray(4000) for _ in range(50_000)]  # 200 MB of heap blocks (under the mmap threshold)
    keep = blocks[-1]  # the block at the top of the heap stays: free() alone cannot shrink the heap
    del blocks
    freed = process.memory_info().rss
    assert host_memory.release_freed_heap()
    released = freed - process.memory_info().rss
    assert released > 100 * MIB, f"released {released / MIB:.0f} MiB"
    assert len(keep) == 4000
