"""What this machine has: memory, for the size checks that refuse work that cannot fit before it starts."""

from __future__ import annotations

import os


def memory_bytes() -> int:
    """The machine's physical memory (a bound on what one process can hold)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not Linux: assume a large machine rather than refuse
        return 1 << 40


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"
