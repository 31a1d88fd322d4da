"""What a run ships: a third-party student through `kd run` by the documented contract alone, the
reverted folder loaded back by `kdcore.load_student` in a fresh process, and (real teacher) the llama
student as a standard transformers folder that plain transformers loads and decodes exactly as
`kd eval` reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import kd_in_process as kd

# A student plugin as a third party writes it: it imports only kdcore's documented contract.
GRU_PLUGIN = '''
"""A GRU student: Linear(vocab, width) over float rows, a GRU, a head; reverts to an Embedding."""
import copy

import torch
from pydantic import BaseModel, ConfigDict, Field

from kdcore.hookspecs import hookimpl


class GRUParams(BaseModel):
    """A one-layer GRU of the given width."""

    model_config = ConfigDict(extra="forbid")
    width: int = Field(16, gt=0)


class GRUStudent(torch.nn.Module):
    """Float vocab rows through Linear(vocab, width), a GRU and a head."""

    positions = ("last", "all")

    def __init__(self, params, ctx):
        super().__init__()
        self.vocab_size = ctx.vocab_size
        self.embed = torch.nn.Linear(ctx.vocab_size, params.width)
        self.gru = torch.nn.GRU(params.width, params.width, batch_first=True)
        self.head = torch.nn.Linear(params.width, ctx.vocab_size)

    def forward(self, inputs, positions="last"):
        return run(self.gru, self.head, self.embed(inputs.as_soft(self.vocab_size)), inputs.lengths, positions)

    def revert(self):
        return RevertedGRU(self)


class RevertedGRU(torch.nn.Module):
    positions = ("last", "all")
    max_seq_len = None  # a recurrent model reads any length

    def __init__(self, student):
        super().__init__()
        folded = (student.embed.weight.T + student.embed.bias).detach().clone()
        self.embedding = torch.nn.Embedding.from_pretrained(folded, freeze=False)
        self.gru, self.head = copy.deepcopy(student.gru), copy.deepcopy(student.head)

    def forward(self, ids, lengths, positions="last"):
        return run(self.gru, self.head, self.embedding(ids), lengths, positions)


def run(gru, head, x, lengths, positions):
    logits = head(gru(x)[0])  # left to right: padding after a row's end cannot reach it
    return logits if positions == "all" else logits[torch.arange(len(lengths)), lengths - 1]


@hookimpl
def kd_register_students(register):
    register("gru", GRUStudent, GRUParams)
'''


def test_a_third_party_student_goes_through_kd_run(tiny_spec, write_spec, tmp_path):
    (tmp_path / "gru_student.py").write_text(GRU_PLUGIN)
    tiny_spec["plugins"] = ["gru_student.py"]
    tiny_spec["student"] = {"name": "gru", "width": 12}
    path = write_spec(tiny_spec)
    code, out = kd("run", path)
    assert code == 0, out
    run = tmp_path / "runs" / "tiny"
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["results"]["student"]["positions_scored"] > 0 and report["samples"][0]["student"]

    # the shipped folder loads in a fresh process, without the spec: the plugin is found again
    probe = (f"import kdcore, torch; m = kdcore.load_student({str(run / 'reverted')!r}); "
             "ids = torch.arange(6)[None] % 64; print(type(m).__name__, tuple(m(ids, torch.tensor([6])).shape))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["RevertedGRU", "(1,", "64)"]

    # what was evaluated is the trained student: the loaded reverted model equals the float student
    from kdcore import load_student
    from kdcore.components import Inputs
    from kdcore.spec import load_spec
    from kdcore.train import Trainer

    student = Trainer(load_spec(path), progress=False).load_trained().eval()
    reverted = load_student(run / "reverted")
    ids = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([6, 2, 4])
    with torch.no_grad():
        soft = student(Inputs(lengths, soft=Inputs(lengths, ids=ids).as_soft(64)))
        assert (reverted(ids, lengths) - soft).abs().max() <= 1e-5


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

    from kdcore.components import Inputs
    from kdcore.spec import load_spec
    from kdcore.train import Trainer

    student = Trainer(load_spec(path), progress=False).load_trained().eval()
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, smollm2_teacher.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        soft = Inputs(torch.tensor([8, 8]), ids=ids).as_soft(smollm2_teacher.vocab_size)
        expected = student(Inputs(torch.tensor([8, 8]), soft=soft), positions="all")
        assert (hf(input_ids=ids).logits - expected).abs().max() <= 1e-4


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
