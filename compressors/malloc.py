"""Keep glibc from holding on to freed tensor memory (why a streamed run's RSS grew).

glibc serves large allocations with `mmap` and returns them to the kernel on `free`, but its
threshold for "large" moves: after a mapped chunk of size X is freed, later allocations up to
X (capped at 32 MiB) come from the heap instead, where freed space is kept for reuse and
fragments. A run that streams blocks through memory (load a block's tensors, free them, load
the next) then keeps most of what it ever held: streamed Wanda on a 2.2 GB-fp32 Llama peaked at
847 MB RSS with the moving threshold; pinned at 4 MiB, with the heap trimmed after each block,
at 667 MB (the estimate says 667 MB; pinned at 1 MiB 674 MB but 19% slower, at 16 MiB 720 MB).
Pinning (`mallopt(M_MMAP_THRESHOLD, ...)`, which also turns the moving rule off) makes every
tensor of 4 MiB or more its own mapping, given back when freed; `malloc_trim` hands back the
free pages of the heap below that. The pipeline pins for every run: held in memory too, the
heap's reuse made peaks vary from run to run with thread timing (quantize nf4 on SmolLM2:
1890 and 2215 MB in two identical runs; pinned, 1875 and 1834 MB), and the memory estimate a
job is admitted by is only as good as the peak is predictable. Mapping every large tensor
afresh costs page faults: ~10% longer on the streamed Wanda run. Torch-free; a no-op where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
THRESHOLD_BYTES = 4 << 20


@cache
def _libc_function(name: str, argtypes: tuple[Any, ...]) -> Any | None:
    """The C library's `name` with its argument types, or None where it has none (musl,
    macOS). Cached: `find_library` runs `ldconfig`, and streamed runs trim after every block."""
    path = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(path) if path else ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def pin_mmap_threshold(threshold: int = THRESHOLD_BYTES) -> bool:
    """Serve allocations of `threshold` bytes or more by mmap from now on; False where the
    C library has no glibc `mallopt` (musl, macOS) or refuses."""
    mallopt = _libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, threshold))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the kernel (`malloc_trim(0)`); False off glibc."""
    trim = _libc_function("malloc_trim", (ctypes.c_size_t,))
    return trim is not None and bool(trim(0))


@contextmanager
def small_tensors_mapped(threshold: int = 1 << 20) -> Iterator[None]:
    """Within the block, map allocations down to `threshold` bytes: for code that makes and
    frees many tensors of a few MB (a loader quantizing weight by weight), which the heap would
    otherwise keep as garbage. Slower per allocation, so only around such code."""
    pin_mmap_threshold(threshold)
    try:
        yield
    finally:
        pin_mmap_threshold(THRESHOLD_BYTES)
