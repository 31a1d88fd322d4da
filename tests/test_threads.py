"""Helper threads (kdcore.threads) and the read-ahead loader built on them."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from kdcore.data import loader
from kdcore.threads import background, spread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_background_helpers_run_at_idle_priority_and_leave_the_caller_alone():
    with background("t") as helper:
        policy = helper.submit(os.sched_getscheduler, 0).result()
    assert policy == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE


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
    """Item k is k squared; records which blocks were warmed and fails at `bad`."""

    def __init__(self, n, bad=None):
        self.n, self.bad, self.warmed, self.hinted, self.events, self.threads = n, bad, [], [], [], set()

    def __len__(self):
        return self.n

    def warm(self, k):
        self.warmed.append(k)
        self.events.append(("warm", k))

    def hint(self, k):
        self.hinted.append(k)
        self.events.append(("hint", k))

    def __getitem__(self, k):
        self.threads.add(threading.current_thread().name)
        if k == self.bad:
            raise ValueError(f"item {k} is corrupt")
        self.events.append(("get", k))
        return k * k


def test_read_ahead_keeps_order_warms_ahead_and_works_in_a_helper():
    items = Items(20)
    assert list(loader(items, ahead=3, warm_ahead=5, hint_ahead=9)) == [k * k for k in range(20)]
    assert sorted(items.warmed) == list(range(20))  # every batch's blocks read ahead of it, once
    assert sorted(items.hinted) == list(range(20))  # and the OS asked to fetch them before that
    when = {e: i for i, e in enumerate(items.events)}
    assert all(when[("hint", k)] < when[("warm", k)] < when[("get", k)] for k in range(20))
    # queued as batch k - 9 (hint) or k - 5 (warm) is handed over, behind batch k - 9 + 3 or k - 5 + 3
    assert all(when[("hint", k)] < when[("get", k - 5)] for k in range(9, 20))
    assert all(when[("warm", k)] < when[("get", k - 1)] for k in range(1, 20))
    assert all(name.startswith("kd-read") for name in items.threads)
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
