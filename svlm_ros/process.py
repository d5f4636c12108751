"""What this process holds: its resident memory (RSS), for replays' samples, benchmarks and tests."""
from __future__ import annotations

import os
import resource
import sys


def rss_bytes() -> int:
    """The process's resident set size now, in bytes; where /proc is missing, the peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            # statm counts pages, whose size the kernel chooses (4 KiB on x86, 16 or 64 KiB on some ARM)
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is all there is (bytes on macOS, KiB elsewhere)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
