"""Keep large CPU buffers warm between uses.

A paper-scale PSF needs (M, M) complex temporaries of ~112 MB (M = 3750). glibc serves every allocation above
its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it on free, so each use faults in 27 000 pages
of 4 KiB and the kernel zeroes them: two training steps of the 2500² spec spent 28 s of 85 s in the kernel with
17.6 million minor page faults. Two settings remove that (measured in `benchmarks/bench_step2d.py`):

* glibc's heap keeps freed memory: no mmap for large blocks (`M_MMAP_MAX` 0) and no trimming of the heap top
  (`M_TRIM_THRESHOLD` at its maximum), so a freed 112 MB block is reused, already mapped, by the next one;
* torch's CPU allocator backs blocks of 2 MB and more with transparent huge pages (`THP_MEM_ALLOC_ENABLE=1`),
  so the memory that is faulted in takes 512 times fewer faults and fewer TLB misses.

The cost is a process that keeps its peak heap mapped until it exits (the peak itself barely changes). Set
`LENSDESIGN_WARM_ALLOCATOR=0` to leave both allocators as they are; a `MALLOC_MMAP_MAX_` or
`THP_MEM_ALLOC_ENABLE` already in the environment is respected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def enabled() -> bool:
    """Whether the warm-allocator settings are wanted (`LENSDESIGN_WARM_ALLOCATOR`, default on)."""
    return os.environ.get("LENSDESIGN_WARM_ALLOCATOR", "1").strip().lower() not in ("0", "false", "no", "off")


def configure() -> dict[str, bool]:
    """Apply the settings to this process; {"glibc_heap": applied, "thp": applied}.

    Call before torch is imported: torch reads `THP_MEM_ALLOC_ENABLE` once, at its first allocation. The glibc
    part takes effect for every later allocation whenever it is called. Linux / glibc only; a no-op elsewhere.
    """
    done = {"glibc_heap": False, "thp": False}
    if not enabled() or not sys.platform.startswith("linux"):
        return done
    if "THP_MEM_ALLOC_ENABLE" not in os.environ and "torch" not in sys.modules:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
        done["thp"] = True
    if "MALLOC_MMAP_MAX_" not in os.environ and "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc
            return done
        done["glibc_heap"] = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _INT_MAX))
    return done
