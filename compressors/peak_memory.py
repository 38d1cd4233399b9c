"""The process's peak resident memory, measured so that it belongs to this run alone.

`getrusage().ru_maxrss` is the wrong number on Linux: it survives `fork` and `exec`, so a child
started by a large process (a pytest session, a worker's parent) reports its parent's size at
fork time. The kernel's high-water mark of the current address space (`VmHWM` in
/proc/self/status) starts afresh at `exec`, and writing 5 to /proc/self/clear_refs resets it to
the current RSS, so a run that calls `reset_peak()` first measures its own peak. Torch-free, so
the worker and the benchmarks can use it before importing anything heavy.
"""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int | None:
    """A memory line of /proc/self/status ("VmRSS", "VmHWM") in bytes, or None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Start the high-water mark again from the current RSS; False where the kernel can't."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def current_rss_bytes() -> int | None:
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak RSS since `exec` or the last `reset_peak()` (ru_maxrss where /proc is missing)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
