"""Let glibc keep freed buffers for reuse during a build (``hiroml-build`` calls
:func:`keep_freed_buffers` once, at start-up).

A build allocates and frees buffers of megabytes per member: the zip member read, its inflated
bytes, the decoded pixels, the float image. glibc's ``malloc`` serves each from fresh pages
of ``mmap`` and gives them back on ``free`` (above its mmap threshold, 128 KiB to 32 MiB),
so every member pays the kernel for zeroed pages again: on a virtual machine about 2.5 ms
per MB, as much as inflating the member (``benchmarks/bench_build.py --mode xr``). With a
mmap threshold of 64 MiB and a trim threshold of 256 MiB, buffers below 64 MiB come from
the heap and freed ones are reused; the process keeps at most 256 MiB it no longer uses.
Larger buffers (a CT volume) still come from ``mmap`` and go back at once.

The driver hands the heap's free pages back after a stage that made large temporary arrays
(:func:`release_freed`): otherwise it would carry them, up to the trim threshold, into
the next stage's peak.

pyarrow's buffers come from the same heap: :func:`keep_freed_buffers` makes its system pool
the default (``ARROW_DEFAULT_MEMORY_POOL=system``, unless that is set already) in place of
its own mimalloc pool, which keeps freed pages apart from the heap's and hands them back only
when asked, so that each step's Arrow buffers touch fresh pages again. On the bench's zips
(``benchmarks/bench_scale.py``) the driver peaks at 279 MB in a week on 6,000 zips with the
system pool against 323 MB with mimalloc, 223 against 251 MB on 1,000, and 238 against 257 MB
in a first build of 2,000, at the same CPU time.

Only on Linux with glibc; elsewhere, or when ``mallopt`` is missing, nothing changes.
``runtime.malloc=default`` (or ``HIROML_MALLOC=default``) makes ``hiroml-build`` leave glibc's
defaults: it then does not call this.

Python's cyclic garbage collector: :func:`collect_young_less_often` raises its young
threshold (a collection of the young objects every :data:`YOUNG_THRESHOLD` containers made,
not 700). A command's process does it as it starts (``hiroml.cli``: a build's imports leave
about 100,000 objects the collector tracks, all kept: 93 ms of collections against 44), and
a build for as long as it runs (``hiroml.pipeline.driver``), for the records each stage
keeps until it ends (``docs/scale.md``: "The collector's young threshold").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
MMAP_THRESHOLD = 64 * 1024**2
TRIM_THRESHOLD = 256 * 1024**2
#: the cyclic garbage collector's young threshold in a command's process and during a build:
#: a collection of the young objects once this many more containers were made than freed
#: (Python's default: 700)
YOUNG_THRESHOLD = 100_000


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once per process (``find_library`` runs ``ldconfig -p``)."""
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        return ctypes.CDLL(name) if name is not None else None
    except OSError:
        return None


def release_freed() -> bool:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``); True when
    done. After the near-duplicate search of 7,000 signatures (blocks of 4,096 x 4,096) the
    driver's heap held about 120 MB of freed pages; a trim takes a few milliseconds."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:  # musl and others
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def release_all() -> bool:
    """:func:`release_freed`, and the memory pyarrow's pool keeps after freeing (when
    pyarrow is loaded and its pool is its own: mimalloc or jemalloc); what
    :func:`release_freed` returns. With mimalloc, after the manifest frame's checks (the flow
    counts, the leak check's Arrow columns) the driver keeps about 25 MB of freed Arrow pages
    at 6,000 samples, which it would carry into the publish step's peak."""
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    return release_freed()


def collect_young_less_often() -> tuple[int, int, int]:
    """Raise the collector's young threshold to :data:`YOUNG_THRESHOLD` (the other two left
    as they are), unless it is higher already or 0 (the collector off); the thresholds
    before, for ``gc.set_threshold(*before)``."""
    before = gc.get_threshold()
    if 0 < before[0] < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, *before[1:])
    return before


def keep_freed_buffers() -> bool:
    """Set glibc's mmap and trim thresholds for this process and the workers it forks; True
    when they were set."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    log.debug("glibc mallopt: mmap threshold %d, trim threshold %d: %s", MMAP_THRESHOLD,
              TRIM_THRESHOLD, "set" if done else "refused")  # fmt: skip
    if done:
        _arrow_on_the_heap()
    return done


def _arrow_on_the_heap() -> None:
    """pyarrow's default memory pool: its system pool (glibc's heap), unless
    ``ARROW_DEFAULT_MEMORY_POOL`` names one already. Before pyarrow is loaded, through that
    variable (which pyarrow reads as it loads, as do the worker processes that inherit it)."""
    if ARROW_POOL_VARIABLE in os.environ:
        return  # the user's choice
    arrow = sys.modules.get("pyarrow")
    if arrow is None:
        os.environ[ARROW_POOL_VARIABLE] = "system"
    else:
        arrow.set_memory_pool(arrow.system_memory_pool())
