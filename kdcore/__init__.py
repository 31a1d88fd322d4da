"""LlamaKD: data-free knowledge distillation of language models.

Importing this package is cheap: torch, transformers and zarr are imported by the stages that use them.
"""

import os

# torch's CPU allocator backs large tensors with transparent huge pages when this is set: the first
# touch of a fresh 50 MB noise batch then costs ~5 ms instead of ~25 ms of page faults (measured
# here). Read on torch's first large allocation; set it to 0 before running to turn it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _keep_freed_memory() -> None:
    """Large tensors freed by torch go back to glibc's heap for the next ones, not to the OS.

    glibc hands out every allocation above its mmap threshold (at most 32 MB, however it adapts) as
    fresh pages and unmaps them on free: a step that makes and drops a few vocab-sized activations
    (50 x 32000 floats: 6.4 MB) page-faults on each, ~1600 faults apiece. An elementwise sub, exp
    and mul on such a tensor took 6-12 ms that way and 2-3 ms with the threshold raised (measured
    here); it is what jemalloc or tcmalloc fix when preloaded under PyTorch. Allocations of 1 GiB or
    more (a large teacher's weights) still get their own pages. The process keeps the memory it
    peaked at. KD_MALLOC=system before the first import of kdcore leaves glibc as it is; elsewhere
    (not glibc) nothing changes."""
    if os.environ.get("KD_MALLOC", "keep") == "system":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if libc.gnu_get_libc_version:  # glibc only: another libc's mallopt takes other numbers
            m_trim_threshold, m_mmap_threshold = -1, -3
            libc.mallopt(m_mmap_threshold, 1 << 30)
            libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


_keep_freed_memory()

__version__ = "0.1.0"
