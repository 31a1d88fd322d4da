"""One writer at a time (kdcore.system.locks): who holds a lock is named, a dead holder's lock is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from kdcore.problems import KDError
from kdcore.system.locks import hold, lock_path


def test_a_second_holder_is_refused_with_the_first_named(tmp_path):
    store = tmp_path / "store" / "noise"
    with hold(store, f"store {store}"):
        assert lock_path(store) == tmp_path / "store" / ".noise.lock" and lock_path(store).exists()
        with pytest.raises(KDError) as e:
            with hold(store, f"store {store}"):
                pass
        msg = str(e.value)
        assert f"store {store} is in use by another process" in msg
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg
    assert not lock_path(store).exists()  # released: the file goes with it
    with hold(store, "store"):
        pass


def test_readers_share_and_keep_writers_out(tmp_path):
    run = tmp_path / "runs" / "x"
    with hold(run, "run", shared=True), hold(run, "run", shared=True):
        with pytest.raises(KDError, match="run is in use"):
            with hold(run, "run"):
                pass
    with hold(run, "run"):
        with pytest.raises(KDError):
            with hold(run, "run", shared=True):
                pass


def test_a_killed_holder_leaves_no_lock(tmp_path):
    """kill -9 cannot release a lock file's contents, but the OS ends the lock itself: the next
    holder takes it (and rewrites who holds it)."""
    store = tmp_path / "s"
    child = subprocess.Popen([sys.executable, "-c", "import time; from kdcore.system.locks import hold\n"
                              f"with hold({str(store)!r}, 's'):\n    print('held', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(KDError, match=f"pid {child.pid} "):
            with hold(store, "s"):
                pass
    finally:
        child.kill()
        child.wait()
    assert lock_path(store).exists()  # the stale file stays ...
    with hold(store, "s"):  # ... and is no obstacle
        assert f'"pid": {os.getpid()}' in lock_path(store).read_text()
