"""What a job sets in its process while it runs, and hands back when it ends: the garbage collector's frozen
objects and, on glibc, the C allocator's thresholds. Both keep a CPU job's time in its model: with torch and
Ultralytics loaded, each costs a 2.6 s job on the P0706 mosaic 0.1-0.2 s here (bench/README.md, "Job over forward
on a CPU")."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
from typing import Callable, Iterator

# mallopt(3) parameters and limits (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc takes on 64-bit: blocks up to it come from the heap, reused
TRIM_DURING_JOB = 2**31 - 1  # (an int) nothing freed is handed back to the kernel while the job runs
TRIM_AFTER_JOB = 2 * MMAP_THRESHOLD  # where glibc's own adaptive threshold ends up once torch has run


@contextlib.contextmanager
def objects_frozen() -> Iterator[Callable[[], None]]:
    """While a job runs, the objects that exist when it starts (torch's, Ultralytics' and the rest: some 200 000)
    are left out of the garbage collector's full passes, and so is the model once loaded (call the function
    yielded). A full pass over them costs 0.1 s here, and a job's shapely geometries trigger some: 0.1-0.2 s of
    a 2.7 s job on the P0706 mosaic. They are handed back when the job ends (nothing stays frozen); a process
    that froze objects of its own is left as it is."""
    if gc.get_freeze_count():
        yield lambda: None
        return
    gc.freeze()
    try:
        yield gc.freeze
    finally:
        gc.unfreeze()


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def heap_kept() -> Iterator[None]:
    """While a job runs, memory it frees stays in the process for its next batch (glibc only; elsewhere nothing
    changes).

    glibc hands the top of its heap back to the kernel once more than a threshold of it is free, and serves
    blocks above another threshold with mmap, unmapped when freed. Both thresholds adapt, but only up to the
    largest block freed so far: a forward pass of yolov8n-obb on 4 patches of 640 px frees tens of MB of
    activations, the heap shrank after many batches and every page was faulted in again at the next (8 000-14 000
    faults a batch; 0.1-0.2 s of the mosaic's 2.6 s job, 5-10 % of its model's time). While the job runs, blocks
    up to 32 MB come from the heap and nothing is handed back; peak memory is what it was within 5 % (the pages
    were in use at the peak anyway: +5 % on the mosaic). When the job ends, what is free is handed back
    (`malloc_trim`) and the process keeps thresholds of 32 MB (blocks) and 64 MB (free top), where glibc's own
    adaptation ends up in a process running torch."""
    libc = _keep_heap()
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_AFTER_JOB)
            libc.malloc_trim(0)


def settle_for_life() -> None:
    """What `objects_frozen` and `heap_kept` do for a job, for a process that lives for one job (a Ray actor, once
    its model is loaded): what exists now stays out of the garbage collector's full passes, and what it frees stays
    for its next batch; neither is handed back."""
    gc.freeze()
    _keep_heap()


def _keep_heap():
    """glibc's thresholds set as `heap_kept` keeps them while a job runs; the C library where it is glibc, else
    None (nothing changed)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_DURING_JOB)
    return libc
