"""Training: phases, optimizers and schedulers, clipping, init, exact resume after kill -9, a changed
spec, non-finite losses, and data-parallel training under torchrun (gloo, 2 processes)."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from conftest import TINY_SPEC
from kdcore.stages.generate import generate
from kdcore.run.metrics_log import read_metrics
from kdcore.config.load import load_spec
from kdcore.run.folder import RunFolder
from kdcore.stages.phase import PhaseLoop
from kdcore.stages.train import Trainer, TrainStage
from kdcore.stages.train_state import kaiming_init

BIN = Path(sys.executable).parent

# Datasets shared by the tests (one store, generated once per module).
DATASETS = {
    "noise": TINY_SPEC["datasets"]["noise"],  # 40 samples, length-mix of uniform noise, last position
    "ids": {"samples": 24, "max_seq_len": 6, "batch_size": 8, "block_size": 8, "seed": 2,
            "sampler": {"name": "random-ids"}},
    "allpos": {"samples": 40, "max_seq_len": 6, "batch_size": 8, "block_size": 8, "seed": 3, "positions": "all",
               "sampler": {"name": "length-mix", "full_fraction": 0.3,
                           "sampler": {"name": "uniform", "low": -10.0, "high": 10.0}}},
}


def phase(dataset="noise", **kw) -> dict:
    base = {"dataset": dataset, "epochs": 1, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 2,
            "losses": [{"name": "kl"}]}
    return {**base, **kw}


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    # exact-equality checks are about the CPU; subprocesses inherit this too
    monkeypatch.setenv("KD_DEVICE", "cpu")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    data = {**copy.deepcopy(TINY_SPEC), "datasets": copy.deepcopy(DATASETS), "store_dir": str(root)}
    path = root / "spec.toml"
    path.write_text(tomli_w.dumps(data))
    spec = load_spec(path)
    for name in DATASETS:
        generate(spec, name)
    return root


@pytest.fixture
def make_spec(tmp_path, store_dir):
    """make_spec(phases, name=..., student=...) -> spec path; runs go to tmp_path/runs."""

    def make(phases: list[dict], name: str = "tiny", **top) -> Path:
        used = {p["dataset"] for p in phases}
        data = {**copy.deepcopy(TINY_SPEC), "name": name, "phases": phases,
                "datasets": {k: copy.deepcopy(v) for k, v in DATASETS.items() if k in used},
                "store_dir": str(store_dir), "runs_dir": str(tmp_path / "runs"), **top}
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(data))
        return path

    return make


def train(path: Path, restart: bool = False) -> RunFolder:
    """Train the spec at `path`; its run folder."""
    stage = TrainStage(load_spec(path))
    stage.run(restart=restart)
    return stage.run_folder


def final_weights(path: Path) -> dict[str, torch.Tensor]:
    spec = load_spec(path)
    return load_file(str(spec.run_path / "student" / "float_student.safetensors"))


def records(path: Path, stage: str = "train") -> list[dict]:
    return read_metrics(load_spec(path).run_path / "metrics.jsonl", stage)


def kd(*args, capsys=None, monkeypatch=None) -> tuple[int, str]:
    """`kd ARGS` in this process: (exit code, stderr)."""
    from kdcore.cli import main

    monkeypatch.setattr(sys, "argv", ["kd", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code or 0, capsys.readouterr().err


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- phases -------------------------------------------------------------------------------------


def test_curriculum_phases_resume_the_same_weights(make_spec, monkeypatch):
    """The original's recipe: index pre-training on random ids, then noise with a lower lr."""
    path = make_spec([
        phase("ids", name="index", epochs=2, lr=1e-3, losses=[{"name": "mse"}, {"name": "ce-argmax", "weight": 0.5}]),
        phase("noise", name="noise", epochs=1, lr=1e-4),
    ])
    starts = {}
    original = PhaseLoop.run

    def spy(self, state, ckpt):
        starts[self.index] = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        return original(self, state, ckpt)

    monkeypatch.setattr(PhaseLoop, "run", spy)
    from kdcore.stages.runner import Runner

    Runner(load_spec(path)).train()  # the runner draws training.png
    run = load_spec(path).run_path

    after0 = torch.load(run / "checkpoints" / "phase0.pt", weights_only=True)["model"]
    after1 = torch.load(run / "checkpoints" / "phase1.pt", weights_only=True)["model"]
    assert same(starts[1], after0)  # phase 1 starts from phase 0's weights
    assert not same(starts[0], after0) and not same(after0, after1)  # and both phases trained
    assert same(final_weights(path), after1)
    torch.load(run / "checkpoints" / "last.pt", weights_only=True)

    train_recs = records(path)
    assert [r["step"] for r in train_recs] == list(range(1, 3 * 2 + 5 + 1))  # 3 batches x 2 epochs, then 5
    by_phase = {p: [r for r in train_recs if r["phase"] == p] for p in (0, 1)}
    assert len(by_phase[0]) == 6 and len(by_phase[1]) == 5
    assert {r["lr"] for r in by_phase[0]} == {1e-3} and {r["lr"] for r in by_phase[1]} == {1e-4}
    for r in by_phase[0]:
        assert r["loss"] == pytest.approx(r["loss_mse"] + 0.5 * r["loss_ce-argmax"], rel=1e-5)
    for r in train_recs:
        for key in ("grad_norm", "samples_per_s", "distinct_pred", "distinct_teacher"):
            assert r[key] > 0, key
        assert 1 <= r["distinct_pred"] <= 8 and 1 <= r["distinct_teacher"] <= 8
    assert all("loss_kl" in r for r in by_phase[1])
    epochs = records(path, "train_epoch")
    assert [(r["phase"], r["epoch"]) for r in epochs] == [(0, 0), (0, 1), (1, 0)]
    assert (run / "training.png").stat().st_size > 1000

    # the students: float-input and reverted, as safetensors
    assert (run / "reverted" / "model.safetensors").exists()
    assert json.loads((run / "student" / "train.json").read_text())["parameters"] > 0


def test_max_steps_cuts_the_phase_across_epochs(make_spec):
    path = make_spec([phase(epochs=3, max_steps=7, checkpoint_every=3)])  # 5 batches per epoch
    run = train(path).path
    recs = records(path)
    assert [(r["epoch"], r["phase_step"]) for r in recs] == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 6), (1, 7)]
    assert [r["epoch"] for r in records(path, "train_epoch")] == [0]  # epoch 1 never finished
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert (state["epoch"], state["step_in_epoch"], state["phase_step"]) == (1, 2, 7)


def test_plots_without_records_or_with_mixed_terms(tmp_path):
    from kdcore.report.plots import plot_training

    assert plot_training(tmp_path / "missing.jsonl", tmp_path / "a.png") is None
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"stage": "generate", "samples": 3}\n{"stage": "train", "step": 1, "pha')  # killed mid-line
    assert plot_training(metrics, tmp_path / "a.png") is None and not (tmp_path / "a.png").exists()
    rows = [{"stage": "train", "step": 1, "phase": 0, "loss": 0.0, "loss_mse": 0.0, "lr": 1e-3, "distinct_pred": 1,
             "distinct_teacher": 2},
            {"stage": "train", "step": 2, "phase": 1, "loss": 0.5, "loss_kl": 0.5, "lr": 1e-4, "distinct_pred": 2,
             "distinct_teacher": 2}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_training(metrics, tmp_path / "b.png") == tmp_path / "b.png"
    assert (tmp_path / "b.png").stat().st_size > 1000


# --- optimizers, schedulers, clipping, init, seeds ----------------------------------------------


def _expected_lrs(kind: str, lr0: float, gamma: float, step_size: int, total: int, epochs: list[dict]):
    steps = range(total)
    if kind == "constant":
        return [lr0] * total
    if kind == "step":
        return [lr0 * gamma ** (s // step_size) for s in steps]
    if kind == "exponential":
        return [lr0 * gamma**s for s in steps]
    if kind == "cosine":
        return [lr0 * (1 + math.cos(math.pi * s / total)) / 2 for s in steps]
    # plateau (patience 0, torch's default relative threshold 1e-4): one decision per epoch
    out, lr, best = [], lr0, math.inf
    for e in epochs:
        out += [lr] * 5
        if e["mean_loss"] < best * (1 - 1e-4):
            best = e["mean_loss"]
        else:
            lr *= gamma
    return out


@pytest.mark.parametrize("kind,optimizer,lr", [
    ("constant", "sgd", 0.1), ("step", "sgd", 0.1), ("exponential", "adamw", 1e-2),
    ("cosine", "adamw", 1e-2), ("plateau", "sgd", 1e-7),  # a tiny lr: the loss stalls, the lr drops
])
def test_schedulers_and_optimizers(make_spec, kind, optimizer, lr):
    schedule = {"name": kind, **{"step": {"gamma": 0.5, "step_size": 2}, "exponential": {"gamma": 0.5},
                                 "plateau": {"gamma": 0.5}}.get(kind, {})}
    path = make_spec([phase(epochs=3, optimizer=optimizer, lr=lr, scheduler=schedule, checkpoint_every=100)])
    run = train(path).path
    recs = records(path)
    assert len(recs) == 15
    expected = _expected_lrs(kind, lr, 0.5, 2, 15, records(path, "train_epoch"))
    assert [r["lr"] for r in recs] == pytest.approx(expected, rel=1e-6)
    if kind == "plateau":
        assert len(set(expected)) > 1  # the lr did drop
    groups = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert ("betas" in groups[0]) == (optimizer == "adamw")


def _update_norm(path: Path) -> float:
    start = Trainer(TrainStage(load_spec(path))).build_student().state_dict()
    end = final_weights(path)
    return math.sqrt(sum(float((end[k] - start[k]).double().pow(2).sum()) for k in end))


def test_clip_bounds_the_update_and_grad_norm_is_before_clipping(make_spec):
    clip = 1e-3
    free = make_spec([phase(optimizer="sgd", lr=1.0, max_steps=1)], name="free")
    clipped = make_spec([phase(optimizer="sgd", lr=1.0, max_steps=1, clip=clip)], name="clipped")
    train(free), train(clipped)
    grad_norm = records(clipped)[0]["grad_norm"]
    assert records(free)[0]["grad_norm"] == grad_norm
    assert grad_norm > 100 * clip  # so clipping did something
    assert _update_norm(free) == pytest.approx(grad_norm, rel=1e-4)  # SGD lr 1: the update is the gradient
    assert clip * 0.999 <= _update_norm(clipped) <= clip * (1 + 1e-5)


def test_kaiming_init_is_applied_deterministically(make_spec):
    tiny_lr = dict(optimizer="sgd", lr=1e-30, max_steps=1)  # the weights stay at their initial values
    a = make_spec([phase(init="kaiming", seed=7, **tiny_lr)], name="a")
    b = make_spec([phase(init="kaiming", seed=7, **tiny_lr)], name="b")
    default = make_spec([phase(seed=7, **tiny_lr)], name="default")
    for p in (a, b, default):
        train(p)
    wa, wb, wd = final_weights(a), final_weights(b), final_weights(default)
    assert same(wa, wb)
    assert not torch.allclose(wa["embed.weight"], wd["embed.weight"])
    assert wa["embed.bias"].abs().max() < 1e-20 < wd["embed.bias"].abs().max()  # kaiming zeroes the biases
    student = Trainer(TrainStage(load_spec(a))).build_student()
    torch.manual_seed(7)
    kaiming_init(student)
    for k, v in student.state_dict().items():
        assert torch.allclose(wa[k], v, atol=1e-20), k
    std = wa["embed.weight"].std().item()  # He normal: std = sqrt(2 / fan_in), fan_in = vocab 64
    assert std == pytest.approx(math.sqrt(2 / 64), rel=0.1)


@pytest.mark.slow
def test_same_seed_same_weights(make_spec):
    # sld-cosine draws from the global RNG every step: the seed must fix that too
    losses = [{"name": "kl"}, {"name": "sld-cosine", "weight": 0.3}]
    paths = [make_spec([phase(epochs=2, seed=s, losses=losses)], name=n) for n, s in (("a", 3), ("b", 3), ("c", 4))]
    for p in paths:
        train(p)
    a, b, c = map(final_weights, paths)
    assert same(a, b)
    assert not same(a, c)


# --- exact resume after kill -9 ------------------------------------------------------------------


RESUME_PHASES = [
    # plateau: the lr depends on each epoch's mean loss, so the epoch's running totals must survive a kill
    phase("noise", name="first", epochs=3, lr=3e-3, scheduler={"name": "plateau"}, checkpoint_every=2,
          losses=[{"name": "kl"}, {"name": "sld-cosine", "weight": 0.3}]),
    phase("ids", name="second", epochs=3, lr=1e-3, scheduler={"name": "step", "step_size": 2}, checkpoint_every=2,
          losses=[{"name": "mse"}]),
]


def _checkpoint_state(run: Path) -> dict | None:
    try:
        return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def _kill_when(path: Path, run: Path, ready, env: dict, timeout: float = 90) -> dict:
    """Start `kd train`, SIGKILL it once `ready(checkpoint state)` holds; the state it was killed at."""
    proc = subprocess.Popen([sys.executable, "-m", "kdcore", "train", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while True:
            state = _checkpoint_state(run)
            if state is not None and ready(state):
                time.sleep(0.15)  # land between checkpoints, mid-step
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return state
            assert proc.poll() is None, f"kd train ended before the kill point: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# A test plugin (not production code): every training step takes 0.25 s longer, so a kill lands mid-phase.
SLOW_STEPS = """
import time
from kdcore.plugin.hookspecs import hookimpl


@hookimpl
def kd_on_metrics(stage, record):
    if stage == "train":
        time.sleep(0.25)
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_and_resume_is_exact(make_spec, tmp_path):
    ref = make_spec(RESUME_PHASES, name="ref")
    (tmp_path / "slow_steps.py").write_text(SLOW_STEPS)
    path = make_spec(RESUME_PHASES, name="killed", plugins=["slow_steps.py"])  # plugins are not what a student depends on
    run = load_spec(path).run_path
    env = dict(os.environ)

    first = _kill_when(path, run, lambda s: s["phase"] == 0 and s["phase_step"] >= 2, env)
    assert first["phase"] == 0 and 0 < first["step_in_epoch"]  # killed mid-epoch of the first phase
    second = _kill_when(path, run, lambda s: s["phase"] == 1 and s["phase_step"] >= 4, env)
    assert second["phase"] == 1 and second["epoch"] >= 1  # ... and in a later epoch of the second
    assert not (run / "student").exists()
    done = subprocess.run([sys.executable, "-m", "kdcore", "train", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    train(ref)  # uninterrupted, in this process
    a, b = final_weights(ref), final_weights(path)
    assert same(a, b), max((a[k] - b[k]).abs().max().item() for k in a)

    recs, ref_recs = records(path), records(ref)
    assert [r["step"] for r in recs] == list(range(1, 15 + 9 + 1))  # no duplicated or missing steps
    assert [r["loss"] for r in recs] == [r["loss"] for r in ref_recs]
    assert [r["lr"] for r in recs] == [r["lr"] for r in ref_recs]
    assert [(r["phase"], r["epoch"], r["mean_loss"]) for r in records(path, "train_epoch")] == \
        [(r["phase"], r["epoch"], r["mean_loss"]) for r in records(ref, "train_epoch")]


# --- refusing, restarting, non-finite -------------------------------------------------------------


def test_a_store_regenerated_by_another_teacher_is_not_trained_on_silently(make_spec, tmp_path, capsys,
                                                                            monkeypatch):
    """The spec alone does not name the teacher's weights (a local path can hold new ones): a store
    regenerated by a teacher of another fingerprint makes the trained student and its checkpoints
    out of date, and `kd train` says which store changed instead of resuming or skipping."""
    import zarr

    own = tmp_path / "own-store"
    path = make_spec([phase(epochs=1)], store_dir=str(own))
    spec = load_spec(path)
    generate(spec, "noise")
    code, err = kd("train", path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    before = final_weights(path)
    assert TrainStage(spec).status().done
    fingerprint = TrainStage(spec).identity()["store_teachers"]["noise"]
    assert fingerprint  # the store's teacher is part of what the student depends on

    group = zarr.open_group(str(spec.store_path("noise")), mode="r+")  # as if regenerated: other weights
    group.attrs["teacher"] = {**group.attrs["teacher"], "fingerprint": "0123456789abcdef"}
    assert not TrainStage(spec).status().done
    code, err = kd("train", path, capsys=capsys, monkeypatch=monkeypatch)
    message = " ".join(err.split())
    assert code == 1 and "Traceback" not in err
    assert f"datasets.noise: teacher {fingerprint} -> 0123456789abcdef" in message and "--restart" in message
    assert same(final_weights(path), before)  # nothing was touched
    code, err = kd("train", path, "--restart", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    assert TrainStage(spec).status().done


def test_changed_spec_refuses_to_resume_and_restart_works(make_spec, capsys, monkeypatch):
    path = make_spec([phase(epochs=1)])
    code, err = kd("train", path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    before = final_weights(path)

    path = make_spec([phase(epochs=1, lr=5e-3)])  # same experiment, another lr
    code, err = kd("train", path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1
    message = " ".join(err.split())
    assert "different training spec" in message and "--restart" in message and "Traceback" not in err
    assert same(final_weights(path), before)  # nothing was touched

    code, err = kd("train", path, "--restart", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    assert not same(final_weights(path), before)
    assert [r["step"] for r in records(path)] == [1, 2, 3, 4, 5]
    assert {r["lr"] for r in records(path)} == {5e-3}
    # complete: a second `kd train` skips
    code, err = kd("train", path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and len(records(path)) == 5


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(make_spec, capsys, monkeypatch):
    path = make_spec([
        phase(name="warmup", max_steps=3, checkpoint_every=2),
        phase(name="blowup", optimizer="sgd", lr=1e30, checkpoint_every=1, losses=[{"name": "mse"}]),
    ])
    code, err = kd("train", path, capsys=capsys, monkeypatch=monkeypatch)
    message = " ".join(err.split())
    assert code == 1, err
    assert "blowup" in message and "not finite" in message and "last good checkpoint" in message
    step = int(re.search(r"at step (\d+)", message).group(1))
    assert step > 3  # in the second phase
    ckpt = torch.load(load_spec(path).run_path / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["state"]["global_step"] < step
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (load_spec(path).run_path / "student").exists()


# --- data parallel ------------------------------------------------------------------------------


# A test plugin: every rank saves the weights it ended with, through the kd_on_trained hook.
RANK_WEIGHTS = """
from safetensors.torch import save_model
from kdcore.plugin.hookspecs import hookimpl


@hookimpl
def kd_on_trained(student, run_dir, rank):
    save_model(student, str(run_dir / "student" / f"rank{rank}.safetensors"))
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ddp_two_ranks_match_a_single_process(make_spec, tmp_path):
    """Rank r trains on rows r::2 of each global batch of 7 (unequal 4/3 splits, all positions with
    unequal valid counts): the batch weights make DDP's averaged gradient the global mean's, so
    the result equals the single-process run's up to float summation order."""
    phases = [phase("allpos", epochs=2, batch_size=7, lr=3e-3, losses=[{"name": "kl"}, {"name": "mse", "weight": 0.1}])]
    single = make_spec(phases, name="single")
    (tmp_path / "rank_weights.py").write_text(RANK_WEIGHTS)
    ddp = make_spec(phases, name="ddp", plugins=["rank_weights.py"])
    train(single)
    env = {**os.environ, "KD_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "kdcore", "train",
                           str(ddp)], env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    out = load_spec(ddp).run_path / "student"
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert same(r0, r1)  # identical weights on both ranks
    assert same(r0, final_weights(ddp))
    ref = final_weights(single)
    diff = max((r0[k] - ref[k]).abs().max().item() for k in ref)
    assert diff < 1e-4, diff
    moved = max((ref[k] - Trainer(TrainStage(load_spec(single))).build_student().state_dict()[k]).abs().max().item()
                for k in ref)
    assert moved > 100 * diff  # training moved the weights far more than the two runs differ
    # only rank 0 wrote metrics: each step once
    assert [r["step"] for r in records(ddp)] == list(range(1, 13))


def test_loader_workers_regenerate_the_same_noise(make_spec):
    # seed-mode noise is regenerated inside the DataLoader's worker processes: same weights as in-process
    paths = [make_spec([phase("noise", epochs=2, workers=w)], name=f"w{w}") for w in (0, 2)]
    for p in paths:
        train(p)
    assert same(*map(final_weights, paths))


def test_training_from_a_store_does_not_load_the_teacher(make_spec):
    # the store knows the vocabulary; a 7B teacher's weights would be read for nothing (on every DDP
    # rank). Its config and tokenizer are read (the reverted student's folder carries the tokenizer).
    from kdcore.stages.builder import Builder

    path = make_spec([phase("noise", epochs=1), phase("ids", epochs=1)], name="noteacher")
    spec = load_spec(path)
    generate(spec, "noise"), generate(spec, "ids")
    trainer = Trainer(TrainStage(spec))
    trainer.train(restart=False)
    assert (spec.run_path / "student" / "float_student.safetensors").exists()
    assert not trainer.builder.teacher.loaded, "the teacher's weights were loaded during training"


def test_vocabulary_comes_only_from_a_store_of_the_same_spec(tiny_spec, write_spec):
    # a store of the same name made by another spec (another teacher) must not decide the student's vocab
    from kdcore.stages.builder import Builder

    generate(load_spec(write_spec(tiny_spec, "a.toml")), "noise")
    assert Builder(load_spec(write_spec(tiny_spec, "a.toml"))).vocab_size == 64
    other = copy.deepcopy(tiny_spec)
    other["teacher"]["vocab_size"] = 96
    assert Builder(load_spec(write_spec(other, "b.toml"))).vocab_size == 96


# --- nothing lost ------------------------------------------------------------------------------


def test_two_losses_of_one_name_are_both_trained_and_logged(make_spec):
    """Forward KL + reverse KL in one phase: two terms, two log keys, their weighted sum the loss."""
    both = make_spec([phase(epochs=1, losses=[{"name": "kl"}, {"name": "kl", "direction": "reverse", "weight": 0.5}])],
                     name="both")
    forward = make_spec([phase(epochs=1, losses=[{"name": "kl"}])], name="forward")
    train(both), train(forward)
    recs = records(both)
    for r in recs:
        assert r["loss"] == pytest.approx(r["loss_kl[0]"] + 0.5 * r["loss_kl[1]"], rel=1e-5)
        assert r["loss_kl[0]"] != pytest.approx(r["loss_kl[1]"])  # really two different terms
    assert not same(final_weights(both), final_weights(forward))  # the reverse term changed the training


def test_restart_checks_everything_before_deleting(make_spec, tmp_path, capsys, monkeypatch):
    """`kd train --restart` with a store gone: refused, naming the store; checkpoints and the trained
    student are untouched. `kd eval` then says the store is missing, not that no student exists."""
    import shutil

    own = tmp_path / "own-store"
    path = make_spec([phase(epochs=1)], store_dir=str(own))
    generate(load_spec(path), "noise")
    code, err = kd("train", path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    run = load_spec(path).run_path
    kept = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    shutil.rmtree(own / "noise")
    code, err = kd("train", path, "--restart", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1 and "Traceback" not in err and str(own / "noise") in " ".join(err.split())
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == kept  # nothing deleted
    code, err = kd("eval", path, capsys=capsys, monkeypatch=monkeypatch)
    message = " ".join(err.split())
    assert code == 1 and "missing" in message and "no trained student" not in message


@pytest.mark.slow
def test_one_writer_per_run_folder(make_spec, tmp_path, capsys, monkeypatch):
    """A second `kd train` (or `kd eval`) on a run another process is training is refused, naming the
    holder; the first finishes with each step recorded once."""
    (tmp_path / "slow_steps.py").write_text(SLOW_STEPS)
    path = make_spec([phase(epochs=1)], name="busy", plugins=["slow_steps.py"])
    run = load_spec(path).run_path
    first = subprocess.Popen([sys.executable, "-m", "kdcore", "train", str(path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not records(path) and time.monotonic() < deadline:  # the first is training
            time.sleep(0.05)
        for command in ("train", "eval"):
            code, err = kd(command, path, capsys=capsys, monkeypatch=monkeypatch)
            message = " ".join(err.split())
            assert code == 1 and f"run {run} is in use by another process (pid {first.pid} on host" in message, message
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
    assert [r["step"] for r in records(path)] == [1, 2, 3, 4, 5]
