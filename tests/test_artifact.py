"""What a run ships: a third-party student through `kd run` by the documented contract alone, the
reverted folder loaded back by `kdcore.load_student` in a fresh process, and (real teacher) the llama
student as a standard transformers folder that plain transformers loads and decodes exactly as
`kd eval` reported."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import kd_in_process as kd

REPO = Path(__file__).resolve().parent.parent


def docs_blocks(lang: str, first_line: str) -> list[str]:
    """The fenced `lang` blocks of docs/plugins.md that start with (or contain) `first_line`."""
    text = (REPO / "docs" / "plugins.md").read_text()
    return [b for b in re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M) if first_line in b]


@pytest.mark.slow
def test_the_documented_student_plugin_goes_through_kd_run(tmp_path, monkeypatch):
    """docs/plugins.md's GRU student, as a third party writes it (kdcore's documented contract
    only): kd run, then the shipped folder loads in a fresh process, and it is the trained student."""
    (plugin,), (spec_text,), (usage,) = (docs_blocks("python", "# my_student.py"), docs_blocks("toml", "# gru.toml"),
                                         docs_blocks("python", "kdcore.load_student("))
    assert "kd_plugins" not in plugin
    (tmp_path / "my_student.py").write_text(plugin)
    (tmp_path / "gru.toml").write_text(spec_text)
    monkeypatch.chdir(tmp_path)  # store/ and runs/ are relative to the working directory
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, out = kd("run", "gru.toml")
    assert code == 0, out
    run = tmp_path / "runs" / "gru"
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["results"]["student"]["positions_scored"] > 0 and report["samples"][0]["student"]

    # the docs' usage, in a fresh process, without the spec: the plugin is found again
    done = subprocess.run([sys.executable, "-c", usage + "\nprint(type(student).__name__, tuple(logits.shape))"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["RevertedGRU", "(1,", "64)"]

    # what was evaluated is the trained student: the loaded reverted model equals the float student
    from kdcore import load_student
    from kdcore.api import Inputs
    from kdcore.config.load import load_spec
    from kdcore.stages.train import Trainer, TrainStage, train

    student = Trainer(TrainStage(load_spec("gru.toml"))).load_trained().eval()
    reverted = load_student(run / "reverted")
    ids = torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([8, 2, 4])
    with torch.no_grad():
        soft = student(Inputs(lengths, soft=Inputs(lengths, ids=ids).as_soft(64)), positions="all")
        mask = Inputs(lengths, ids=ids).mask()
        assert (reverted(ids, lengths, positions="all") - soft)[mask].abs().max() <= 1e-5


def test_version_and_dry_run_need_no_teacher_weights(tiny_spec, write_spec, monkeypatch):
    from kd_plugins.teachers import HFTeacher

    from kdcore import __version__

    code, out = kd("--version")
    assert code == 0 and out.strip() == f"llamakd {__version__}"

    def refuse(self):
        raise AssertionError("the teacher's weights were read")

    monkeypatch.setattr(HFTeacher, "model", property(refuse))
    path = write_spec(tiny_spec)
    for args in (("validate", path), ("run", "--dry-run", path)):
        code, out = kd(*args)
        assert code == 0, out


@pytest.mark.real_teacher
def test_real_teacher_reverted_student_is_a_transformers_model(write_spec, tmp_path, smollm2_teacher):
    """A short `kd run` on SmolLM2; then, in a process that imports transformers and nothing of
    LlamaKD, AutoModelForCausalLM + AutoTokenizer greedy-decode the report's first prompt to the
    report's continuation, character for character."""
    spec = {
        "name": "export",
        "teacher": {"name": "smollm2"},
        "datasets": {"ids": {"samples": 32, "max_seq_len": 8, "batch_size": 16, "block_size": 16,
                             "positions": "all", "logits": "topk", "topk": 16, "sampler": {"name": "random-ids"}}},
        "student": {"name": "llama", "hidden_size": 32, "layers": 1, "heads": 2},
        "phases": [{"dataset": "ids", "epochs": 1, "batch_size": 16, "lr": 3e-3, "losses": [{"name": "kl"}]}],
        "eval": {"windows": 8, "max_new_tokens": 10, "prompts": ["The capital of France is", "Once upon a time"]},
    }
    path = write_spec(spec)
    code, out = kd("run", path)
    assert code == 0, out
    folder = tmp_path / "runs" / "export" / "reverted"
    report = json.loads((folder.parent / "eval" / "report.json").read_text())
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"

    probe = f"""
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
tok = AutoTokenizer.from_pretrained({str(folder)!r})
for prompt in {[s["prompt"] for s in report["samples"]]!r}:
    x = tok(prompt, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**x, max_new_tokens=10, do_sample=False)
    print(repr(tok.decode(out[0, x["input_ids"].shape[1]:], skip_special_tokens=True)))
assert not any(m.startswith(("kdcore", "kd_plugins")) for m in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [repr(s["student"]) for s in report["samples"]]

    # the reverted model's logits are the float student's on one-hot rows
    from transformers import AutoModelForCausalLM

    from kdcore.api import Inputs
    from kdcore.config.load import load_spec
    from kdcore.stages.train import Trainer, TrainStage, train

    student = Trainer(TrainStage(load_spec(path))).load_trained().eval()
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, smollm2_teacher.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        soft = Inputs(torch.tensor([8, 8]), ids=ids).as_soft(smollm2_teacher.vocab_size)
        expected = student(Inputs(torch.tensor([8, 8]), soft=soft), positions="all")
        assert (hf(input_ids=ids).logits - expected).abs().max() <= 1e-4


@pytest.mark.slow
def test_kd_sample_shows_teacher_and_student_side_by_side(tiny_spec, write_spec):
    path = write_spec(tiny_spec)
    code, out = kd("sample", path, "The cat")
    assert code == 1 and "no trained student" in out  # nothing trained yet: a clear error
    assert kd("run", path)[0] == 0
    report = json.loads((path.parent / "runs" / "tiny" / "eval" / "report.json").read_text())
    code, greedy = kd("sample", path, "The cat", "--max-new-tokens", "3")
    assert code == 0, greedy
    assert "teacher" in greedy and "student" in greedy
    assert repr(report["samples"][0]["student"]) in greedy  # greedy: what kd eval reported for that prompt
    sampled = [kd("sample", path, "The cat", "--temperature", "1.5", "--seed", str(s)) for s in (1, 1, 2)]
    assert all(code == 0 for code, _ in sampled)
    assert sampled[0][1] == sampled[1][1]  # a seed gives the same continuations
    assert sampled[0][1] != sampled[2][1]
