"""Helper threads: work that runs beside the teacher or the student without slowing them.

Sampling the next batch, reading the store and writing blocks happen in `background` threads at the
OS's idle priority (Linux SCHED_IDLE): they run on the cores the main thread's compute leaves idle
(Python between ops, waits on an accelerator) and yield the moment it needs them back, where an
ordinary thread would take cores from the main thread's OpenMP threads (figures: docs/DESIGN.md,
"Helper threads"). Where the main work keeps every core busy, a helper runs when the main thread
waits for it: the work is then done in turn, never slower than that.

The catch: other processes that keep every core busy (a build, another job) leave an idle-priority
helper almost nothing, and the main thread then waits on it. On such a shared machine set
KD_HELPERS=normal: helpers run at normal priority (and compete with the main thread, as above).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

_local = threading.local()
_pools: dict[tuple[int, bool], ThreadPoolExecutor] = {}


def _idle_priority() -> None:
    if os.environ.get("KD_HELPERS", "idle") == "normal":
        return
    try:  # the calling thread only (Linux); elsewhere the helper runs at normal priority
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def _helper() -> None:
    _local.idle = True
    _idle_priority()


def _spreader(idle: bool) -> Callable[[], None]:
    def init() -> None:
        _local.spreading, _local.idle = True, idle
        if idle:
            _idle_priority()
    return init


class _Helper(ThreadPoolExecutor):
    """One thread that knows itself: a generator holding the pool (read-ahead) may be garbage-collected
    on that thread and leave its `with` there, where joining the thread from itself would raise."""

    def __init__(self, name: str, initializer: Callable[[], None] | None):
        self._own: set[int] = set()

        def init() -> None:  # runs on the thread before any task
            self._own.add(threading.get_ident())
            if initializer is not None:
                initializer()
        super().__init__(1, thread_name_prefix=f"kd-{name}", initializer=init)

    def __exit__(self, *exc) -> bool:
        self.shutdown(wait=threading.get_ident() not in self._own)
        return False


def background(name: str, idle: bool = True) -> ThreadPoolExecutor:
    """A one-thread executor at idle priority, or at normal priority for a thread that mostly
    waits (use it as a context manager; left on its own thread, it does not wait for itself)."""
    return _Helper(name, _helper if idle else None)


def spread(fn: Callable[[int], None], n: int) -> None:
    """fn(0), ..., fn(n-1), spread over torch's intra-op thread count. For independent rows (each
    sample draws from its own generator, so the result is the same as in order): torch's RNG holds
    no GIL, so the draw scales with the threads. Called from a background helper, the threads
    run at idle priority too (on a CPU teacher they fill its gaps; beside an accelerator, whose host
    thread mostly waits, they get every core). In order in a DataLoader worker (one thread) or
    inside `spread` itself."""
    import torch

    threads = min(n, torch.get_num_threads())
    if threads <= 1 or getattr(_local, "spreading", False):
        for i in range(n):
            fn(i)
        return
    idle = getattr(_local, "idle", False)
    key = (os.getpid(), idle)  # per process: a forked worker must not reuse its parent's threads
    pool = _pools.get(key)
    if pool is None:
        pool = _pools[key] = ThreadPoolExecutor(torch.get_num_threads(), thread_name_prefix="kd-spread",
                                                initializer=_spreader(idle))
    list(pool.map(fn, range(n)))
