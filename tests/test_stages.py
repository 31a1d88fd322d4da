"""Resumability has one home: each stage's identity, status and run. Changing one input of a
finished run leaves exactly the stages that depend on it to run again; the dry-run's figures are
the ones the stages run with."""

from __future__ import annotations

import copy

import pytest

from kdcore.config.load import load_spec
from kdcore.stages.evaluate import EvaluateStage
from kdcore.stages.generate import GenerateStage
from kdcore.stages.runner import Runner
from kdcore.stages.train import TrainStage


def statuses(path) -> dict[str, str]:
    spec = load_spec(path)
    return {"generate": GenerateStage(spec, "noise").status().state, "train": TrainStage(spec).status().state,
            "evaluate": EvaluateStage(spec).status().state}


def real_text_spec(tiny_spec, tmp_path):
    """The tiny spec on windows of a text file of its own, evaluated on another."""
    (tmp_path / "train.txt").write_text(" ".join(f"word{i} of the training text." for i in range(300)))
    (tmp_path / "eval.txt").write_text(" ".join(f"token{i} in the evaluation text!" for i in range(300)))
    data = copy.deepcopy(tiny_spec)
    data["datasets"]["noise"]["sampler"] = {"name": "text-windows", "text": "train.txt"}
    data["eval"]["text"] = "eval.txt"
    return data


CHANGES = {  # what changes -> the stages left to run
    "a sampler parameter": (lambda d, p: d["datasets"]["noise"]["sampler"].update(text="other.txt"), {"generate", "train", "evaluate"}),
    "the training text's content": (lambda d, p: (p / "train.txt").write_text((p / "train.txt").read_text() + " more."), {"generate", "train", "evaluate"}),
    "the dataset's batch size": (lambda d, p: d["datasets"]["noise"].update(batch_size=5), set()),
    "the student": (lambda d, p: d["student"].update(hidden_size=8), {"train", "evaluate"}),
    "a phase's lr": (lambda d, p: d["phases"][0].update(lr=2e-3), {"train", "evaluate"}),
    "a phase's checkpoint_every": (lambda d, p: d["phases"][0].update(checkpoint_every=3), set()),
    "the evaluation's windows": (lambda d, p: d["eval"].update(windows=6), {"evaluate"}),
    "the evaluation text's content": (lambda d, p: (p / "eval.txt").write_text((p / "eval.txt").read_text() + " more!"), {"evaluate"}),
}


@pytest.mark.slow
def test_each_identity_input_reruns_exactly_the_stages_that_depend_on_it(tiny_spec, write_spec, tmp_path):
    data = real_text_spec(tiny_spec, tmp_path)
    (tmp_path / "other.txt").write_text(" ".join(f"other{i} words here." for i in range(300)))
    path = write_spec(data)
    Runner(load_spec(path)).run()
    assert statuses(path) == {"generate": "done", "train": "done", "evaluate": "done"}
    originals = {f: (tmp_path / f).read_text() for f in ("train.txt", "eval.txt")}
    for what, (change, rerun) in CHANGES.items():
        changed = copy.deepcopy(data)
        change(changed, tmp_path)
        found = statuses(write_spec(changed))
        assert {stage for stage, state in found.items() if state != "done"} == rerun, f"{what}: {found}"
        for f, text in originals.items():
            (tmp_path / f).write_text(text)


@pytest.mark.slow
def test_a_rerun_redoes_only_what_changed(tiny_spec, write_spec, tmp_path):
    """Rewrite the evaluation text and run again: the same store and student, a new report."""
    path = write_spec(real_text_spec(tiny_spec, tmp_path))
    Runner(load_spec(path)).run()
    spec = load_spec(path)
    store, student, report = (spec.store_path("noise") / "zarr.json", spec.run_path / "student" / "train.json",
                              spec.run_path / "eval" / "report.json")
    before = {f: f.stat().st_mtime_ns for f in (store, student, report)}
    (tmp_path / "eval.txt").write_text((tmp_path / "eval.txt").read_text() + " A new last sentence!")
    Runner(load_spec(path)).run()
    after = {f: f.stat().st_mtime_ns for f in (store, student, report)}
    assert after[store] == before[store] and after[student] == before[student] and after[report] > before[report]
    assert statuses(path) == {"generate": "done", "train": "done", "evaluate": "done"}


@pytest.mark.parametrize("samples, block, batch", [(40, 8, 3), (41, 7, 5), (30, 64, 48), (17, 4, 16)])
def test_the_dry_run_counts_the_forwards_generation_makes(tiny_spec, write_spec, monkeypatch, samples, block, batch):
    """Batches are cut at block edges: 640 samples in blocks of 64 and batches of 48 are 20 forwards,
    not ceil(640 / 48) = 14. The plan counts them with the stage's own batches."""
    data = copy.deepcopy(tiny_spec)
    data["datasets"]["noise"].update(samples=samples, block_size=block, batch_size=batch)
    data["datasets"]["noise"]["sampler"] = {"name": "random-ids"}
    spec = load_spec(write_spec(data))
    stage = GenerateStage(spec, "noise")
    planned = int(stage.plan()[0].teacher_forwards.split()[0])
    teacher = stage.builder.teacher.inner
    calls = []
    forward = type(teacher).logits
    monkeypatch.setattr(type(teacher), "logits", lambda self, *a: calls.append(1) or forward(self, *a))
    stage.run()
    assert planned == len(calls) == sum(-(-min(block, samples - lo) // batch) for lo in range(0, samples, block))
    assert [row.what for row in TrainStage(spec).plan()] == [f"phase 0: noise, adamw lr 0.001, {spec.phase_steps(0)} steps of 8"]
    assert spec.phase_steps(0) == -(-samples // 8) * 2  # 2 epochs of batches of 8
