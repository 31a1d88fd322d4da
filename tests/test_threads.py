"""Helper threads (kdcore.system.threads) and the read-ahead loader built on them."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from kdcore.stages.batches import loader
from kdcore.system.threads import background, spread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_background_helpers_run_at_idle_priority_and_leave_the_caller_alone():
    with background("t") as helper:
        policy = helper.submit(os.sched_getscheduler, 0).result()
    assert policy == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE


def test_a_helper_left_on_its_own_thread_does_not_wait_for_itself():
    """A read-ahead generator garbage-collected on its helper's thread leaves its `with` there: the
    pool shuts down without joining the thread it runs on (a plain executor raises)."""
    from kdcore.system.threads import background

    pool = background("self").__enter__()
    assert pool.submit(pool.__exit__, None, None, None).result() is False  # no "cannot join current thread"
    with pytest.raises(RuntimeError):
        pool.submit(print)  # shut down
    with background("other") as other:
        assert other.submit(lambda: 7).result() == 7


def test_spread_covers_every_index_once_in_any_thread():
    seen, lock = [], threading.Lock()

    def record(i):
        with lock:
            seen.append((i, threading.current_thread().name))

    spread(record, 37)
    assert sorted(i for i, _ in seen) == list(range(37))
    with background("t") as helper:  # from a helper: idle-priority spreaders, the same coverage
        seen.clear()
        helper.submit(spread, record, 11).result()
    assert sorted(i for i, _ in seen) == list(range(11))


class Items(torch.utils.data.Dataset):
    """Item k is k squared; records what was warmed and hinted, in which thread, and fails at `bad`."""

    def __init__(self, n, bad=None):
        self.n, self.bad, self.warmed, self.hinted, self.events = n, bad, [], [], []

    def __len__(self):
        return self.n

    def _record(self, what, k):
        self.events.append((what, k, threading.current_thread().name))

    def warm(self, k):
        self.warmed.append(k)
        self._record("warm", k)

    def hint(self, k):
        self.hinted.append(k)
        self._record("hint", k)

    def __getitem__(self, k):
        if k == self.bad:
            raise ValueError(f"item {k} is corrupt")
        self._record("get", k)
        return k * k


def test_read_ahead_keeps_order_reads_ahead_in_its_own_threads():
    items = Items(20)
    assert list(loader(items, ahead=3, warm_ahead=5, hint_ahead=9)) == [k * k for k in range(20)]
    assert sorted(items.warmed) == list(range(20))  # every batch's blocks read ahead of it, once
    assert sorted(items.hinted) == list(range(20))  # and the OS asked to fetch them before that
    # batches are built in the idle-priority helper; blocks are read in the I/O thread, in this order:
    # the first group hinted; then (once the first batch is built from its own rows) read; then each
    # batch's blocks as batch k - 5 (read) or k - 9 (hint) is handed over
    gets = [(w, k) for w, k, thread in items.events if thread.startswith("kd-read")]
    io = [(w, k) for w, k, thread in items.events if thread.startswith("kd-io")]
    assert gets == [("get", k) for k in range(20)]
    later = [e for k in range(20) for e in (("warm", k + 5), ("hint", k + 9)) if e[1] < 20]
    assert io == ([("hint", k) for k in range(5)] + [("warm", k) for k in range(5)]
                  + [("hint", k) for k in range(5, 9)] + later)
    when = {(w, k): i for i, (w, k, _) in enumerate(items.events)}
    assert when[("get", 0)] < when[("warm", 0)]
    subset = torch.utils.data.Subset(Items(20), range(7, 12))  # a resumed epoch
    assert list(loader(subset)) == [k * k for k in range(7, 12)]
    assert sorted(subset.dataset.warmed) == list(range(7, 12))


def test_read_ahead_raises_the_items_error_in_the_caller():
    with pytest.raises(ValueError, match="item 4 is corrupt"):
        for _ in loader(Items(10, bad=4)):
            pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_kd_helpers_normal_keeps_helpers_at_normal_priority(monkeypatch):
    """For machines shared with other busy processes, which would starve idle-priority helpers."""
    monkeypatch.setenv("KD_HELPERS", "normal")
    with background("t") as helper:
        policy = helper.submit(os.sched_getscheduler, 0).result()
    assert policy == os.SCHED_OTHER
