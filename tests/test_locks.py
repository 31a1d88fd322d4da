"""One writer at a time (kdcore.system.locks): who holds a lock is named, a dead holder's lock is gone."""

from __future__ import annotations

import os
import socket

import pytest

from kdcore.problems import KDError
from kdcore.system.locks import hold, lock_path
from conftest import held_elsewhere


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
    with held_elsewhere(store, "s") as child:
        with pytest.raises(KDError, match=f"pid {child.pid} "):
            with hold(store, "s"):
                pass
    assert lock_path(store).exists()  # the stale file stays ...
    with hold(store, "s"):  # ... and is no obstacle
        assert f'"pid": {os.getpid()}' in lock_path(store).read_text()


def test_a_writer_refused_by_readers_names_their_pids(tmp_path):
    """A reader says who it is beside the lock; a killed reader's note is not taken for a holder."""
    store = tmp_path / "store" / "noise"
    with held_elsewhere(store, "s", shared=True) as child:
        with pytest.raises(KDError, match=f"store is in use by another process \\(read by pid {child.pid} on host"):
            with hold(store, "store"):
                pass
    with hold(store, "store"):  # the killed reader's lock is gone with it
        pass


@pytest.mark.slow
def test_training_holds_its_stores_against_overwrite_and_repair(tiny_spec, write_spec, tmp_path, monkeypatch):
    """`kd train` reads its stores under a shared lock: another spec's `generate --overwrite` (or a
    `--repair`) of the same store, attempted while it trains, is refused and names the trainer."""
    from conftest import kd_in_process as kd
    from kdcore.config.load import load_spec
    from kdcore.stages.generate import generate
    from kdcore.stages.phase import PhaseLoop

    path = write_spec(tiny_spec)
    generate(load_spec(path), "noise")
    other = {**tiny_spec, "name": "other"}
    other["datasets"]["noise"]["seed"] = 2  # another dataset of the same name: --overwrite would replace it
    other_path = write_spec(other, "other.toml")
    seen = []
    original = PhaseLoop.run

    def run_and_try(self, state, ckpt):
        for args in (("generate", "--overwrite", other_path), ("generate", "--repair", path)):
            seen.append(kd(*args))
        return original(self, state, ckpt)

    monkeypatch.setattr(PhaseLoop, "run", run_and_try)
    code, output = kd("train", path)
    assert code == 0, output
    for code, output in seen:
        said = " ".join(output.split())
        assert code == 1 and f"is in use by another process (read by pid {os.getpid()}" in said, output
    assert load_spec(path).store_path("noise").exists()
