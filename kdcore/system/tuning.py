"""Process-wide tuning for the long-running commands, applied at their entry points (the `kd` command
line, the benchmarks in bench/), never on import: a plugin author's notebook that imports kdcore keeps its process
as it was. What each setting buys, measured, is in docs/DESIGN.md ("Helper threads").

- THP_MEM_ALLOC_ENABLE=1 (unless already set): torch backs large tensors with transparent huge pages,
  so a fresh vocab-sized batch page-faults less. Read on torch's first large allocation, so it only
  helps when set before torch allocates.
- glibc keeps large freed blocks for reuse (`mallopt`) instead of unmapping them and page-faulting
  the next vocab-sized temporary. The process keeps the memory it peaked at. KD_MALLOC=system opts out.
"""

from __future__ import annotations

import os

_done = False


def tune_process() -> None:
    """Apply both settings once (idempotent)."""
    global _done
    if _done:
        return
    _done = True
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if os.environ.get("KD_MALLOC", "keep") != "system":
        _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Raise glibc's mmap and trim thresholds to 1 GiB: allocations below it are served from (and
    returned to) the heap; above it (a large teacher's weights) they still get their own pages."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if libc.gnu_get_libc_version:  # glibc only: another libc's mallopt takes other numbers
            m_trim_threshold, m_mmap_threshold = -1, -3
            libc.mallopt(m_mmap_threshold, 1 << 30)
            libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass
