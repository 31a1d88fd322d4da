"""Weight subcloning: a full-size subclone is the teacher, a narrower one is a consistent, deterministic
cut of it, mistakes name their key, and training, resuming, reverting and evaluating start from it."""

from __future__ import annotations

import copy
from types import SimpleNamespace
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_SPEC, kd_in_process
from kd_plugins import subclone
from kd_plugins.students import LlamaParams, LlamaStudent, llama
from kd_plugins.teachers import TinyLlamaParams, tiny_llama
from kdcore.api import BuildContext, Inputs
from kdcore.problems import ParamError
from kdcore.stages.generate import generate
from kdcore.config.load import load_spec
from kdcore.stages.train import Trainer, TrainStage, train

TEACHER = {k: v for k, v in TINY_SPEC["teacher"].items() if k != "name"}  # 64 vocab, 32 wide, 4 heads / 2 KV
FULL = {"hidden_size": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate_size": 64}
S = 8


@pytest.fixture(scope="module")
def teacher():
    """The tiny teacher with RMSNorm gains that are not all 1, so copying (and rescaling) them shows."""
    t = tiny_llama(TinyLlamaParams(**TEACHER))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in t.model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return t


def subcloned(teacher, vocab: int = 64, **params) -> LlamaStudent:
    student = llama(LlamaParams(init="subclone", **params), BuildContext(vocab_size=vocab, max_seq_len=S))
    student.init_weights(teacher)
    return student.eval()


def inputs(vocab: int, soft: bool, seed: int = 1) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([S, 3, 6, 1])
    if soft:  # noise rows, zero at padding
        rows = torch.empty(len(lengths), S, vocab).uniform_(-3, 3, generator=g)
        return Inputs(lengths, soft=rows * Inputs(lengths, ids=torch.zeros(4, S, dtype=torch.long)).mask()[..., None])
    return Inputs(lengths, ids=torch.randint(0, vocab, (len(lengths), S), generator=g))


def assert_same_as_teacher(student, teacher, vocab: int, atol: float) -> None:
    for soft in (False, True):
        batch = inputs(vocab, soft)
        mask = batch.mask()
        with torch.no_grad():
            mine = student(batch, positions="all")[mask]
            theirs = teacher.logits(batch, positions="all")[mask]
            last = student(batch, positions="last")
        assert (mine - theirs).abs().max() <= atol, ("soft" if soft else "ids", (mine - theirs).abs().max())
        assert (last - teacher.logits(batch)).abs().max() <= atol


# --- the function it starts from ------------------------------------------------------------------


def test_keeping_everything_gives_back_the_tiny_teacher(teacher):
    student = subcloned(teacher, **FULL)
    assert_same_as_teacher(student, teacher, 64, atol=1e-5)
    assert student.init_source.startswith("subclone of teacher 'tiny-llama': blocks 0, 1 of 2, 32 of 32 residual dims")


@pytest.mark.real_teacher
def test_keeping_everything_gives_back_smollm2(smollm2_teacher):
    config = smollm2_teacher.model.config
    assert config.tie_word_embeddings  # the student's head and embedding start equal, as separate weights
    student = subcloned(smollm2_teacher, vocab=smollm2_teacher.vocab_size, hidden_size=576, layers=30, heads=9,
                        kv_heads=3, intermediate_size=1536, rope_theta=100000.0, rms_norm_eps=1e-5)
    assert_same_as_teacher(student, smollm2_teacher, smollm2_teacher.vocab_size, atol=1e-3)
    assert torch.equal(student.embed.weight.T, student.body.lm_head.weight)
    assert "head = embedding (tied in the teacher)" in student.init_source


@pytest.mark.real_teacher
def test_a_narrow_smollm2_subclone_keeps_whole_heads_per_kv_group(smollm2_teacher):
    student = subcloned(smollm2_teacher, vocab=smollm2_teacher.vocab_size, hidden_size=192, layers=2, heads=3,
                        kv_heads=1, intermediate_size=512, rope_theta=100000.0, rms_norm_eps=1e-5)
    sel = subclone.select(smollm2_teacher.model, student.body.model.config)
    assert sel.blocks == [0, 29]
    for kv, heads in zip(sel.kv_heads, sel.heads):  # one teacher KV head and three of the query heads it serves
        assert len(kv) == 1 and (heads // 3).tolist() == [kv.item()] * 3
    with torch.no_grad():
        logits = student(inputs(smollm2_teacher.vocab_size, soft=False))
    assert torch.isfinite(logits).all()


# --- what a narrower subclone keeps ---------------------------------------------------------------


NARROW = {"hidden_size": 16, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate_size": 24}


def test_a_narrower_subclone_is_a_consistent_cut_of_the_teacher(teacher):
    student = subcloned(teacher, **NARROW)
    t, hd = teacher.model, 8
    sel = subclone.select(t, student.body.model.config)
    dims = sel.dims
    assert len(dims) == 16 and torch.equal(dims, dims.sort().values) and sel.blocks == [0]
    (kv,), (heads,), (neurons,) = sel.kv_heads, sel.heads, sel.neurons
    assert len(kv) == 1 and (heads // 2).tolist() == [kv.item()] * 2  # both query heads share the kept KV head
    assert len(neurons) == 24
    rows = subclone._rows(heads, hd)
    mine, theirs = student.body.model.layers[0], t.model.layers[0]
    # one index set for the residual stream: every read and write uses the same dims
    assert torch.equal(student.embed.weight, t.model.embed_tokens.weight[:, dims].T)
    assert torch.equal(student.embed.bias, torch.zeros(16))
    assert torch.equal(student.body.lm_head.weight, t.lm_head.weight[:, dims])
    assert torch.equal(mine.self_attn.q_proj.weight, theirs.self_attn.q_proj.weight[rows][:, dims])
    assert torch.equal(mine.self_attn.k_proj.weight, theirs.self_attn.k_proj.weight[subclone._rows(kv, hd)][:, dims])
    assert torch.equal(mine.self_attn.o_proj.weight, theirs.self_attn.o_proj.weight[dims][:, rows])
    assert torch.equal(mine.mlp.down_proj.weight, theirs.mlp.down_proj.weight[dims][:, neurons])
    assert torch.equal(mine.input_layernorm.weight, theirs.input_layernorm.weight[dims] * sel.norm_scale)
    assert torch.equal(student.body.model.norm.weight, t.model.norm.weight[dims] * sel.norm_scale)
    assert student.body.model.layers[0].self_attn.q_proj.weight.shape == (16, 16)
    torch.manual_seed(123)
    again = subcloned(teacher, **NARROW).state_dict()  # deterministic: the same cut whatever the RNG state
    for k, v in student.state_dict().items():
        if "embed_tokens" not in k:  # LlamaModel's own token table: unused (vocab 1), left random
            assert torch.equal(v, again[k]), k


def test_blocks_are_evenly_spaced_with_the_first_and_last():
    assert subclone.evenly_spaced(2, 30) == [0, 29]
    assert subclone.evenly_spaced(4, 30) == [0, 10, 19, 29]
    assert subclone.evenly_spaced(1, 30) == [0]
    assert subclone.evenly_spaced(5, 5) == [0, 1, 2, 3, 4]


def test_the_ranking_keeps_what_the_teacher_uses_most(teacher):
    t = copy.deepcopy(teacher)
    with torch.no_grad():
        t.model.model.embed_tokens.weight[:, 29] *= 50  # a dimension the embedding writes loudly
        t.model.model.layers[0].mlp.down_proj.weight[:, :40] = 0  # neurons that write nothing
        t.model.model.layers[0].self_attn.o_proj.weight[:, 16:32] *= 10  # query heads 2 and 3 (KV head 1)
    sel = subclone.select(t.model, subcloned(t, **NARROW).body.model.config)
    assert 29 in sel.dims.tolist()
    assert sel.neurons[0].min() >= 40
    assert sel.kv_heads[0].tolist() == [1] and sel.heads[0].tolist() == [2, 3]


# --- refused, with the key named ------------------------------------------------------------------


@pytest.mark.parametrize("change, key, words", [
    ({"hidden_size": 20, "heads": 2}, "student.hidden_size", "not a multiple of the teacher's head_dim (8)"),
    ({"hidden_size": 64, "heads": 8}, "student.hidden_size", "wider than the teacher's 32"),
    ({"hidden_size": 16, "heads": 4}, "student.heads", "use heads = 2"),
    ({"layers": 3}, "student.layers", "more than the teacher's 2"),
    ({"kv_heads": None, "heads": 4}, "student.kv_heads", "more than the teacher's 2"),
    ({"hidden_size": 24, "heads": 3, "kv_heads": 1}, "student.kv_heads", "each serve 3 query heads"),
    ({"intermediate_size": 65}, "student.intermediate_size", "more than the teacher's 64"),
    ({"rope_theta": 500.0}, "student.rope_theta", "set rope_theta = 10000"),
    ({"rms_norm_eps": 1e-5}, "student.rms_norm_eps", "set rms_norm_eps = 1e-06"),
])
def test_a_student_that_does_not_fit_is_refused_naming_the_key(tiny_spec, write_spec, change, key, words):
    tiny_spec["student"] = {"name": "llama", "init": "subclone", **FULL, **change}
    if change.get("kv_heads", 0) is None:
        del tiny_spec["student"]["kv_heads"]
    path = write_spec(tiny_spec)
    code, output = kd_in_process("validate", path)
    assert code == 1 and "Traceback" not in output
    assert f"{path}: {key}: " in " ".join(output.split()) and words in " ".join(output.split()), output


def test_kaiming_on_a_subclone_is_refused(tiny_spec, write_spec):
    tiny_spec["student"] = {"name": "llama", "init": "subclone", **FULL}
    tiny_spec["phases"][0]["init"] = "kaiming"
    path = write_spec(tiny_spec)
    code, output = kd_in_process("validate", path)
    assert code == 1 and f"{path}: phases[0].init: 'kaiming' would wipe" in " ".join(output.split()), output


def test_a_teacher_that_is_not_a_llama_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    from kd_plugins.teachers import ByteTokenizer, HFTeacher

    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4)
    gpt2 = HFTeacher("hf-causal-lm", config, lambda: GPT2LMHeadModel(config), lambda: ByteTokenizer(64), {},
                     SimpleNamespace(device="cpu", dtype="float32"))
    student = llama(LlamaParams(init="subclone", **NARROW), BuildContext(vocab_size=64, max_seq_len=S))
    with pytest.raises(ParamError, match="init: 'subclone' needs a Llama-architecture teacher; teacher "
                                      "'hf-causal-lm' is a 'gpt2' model"):
        student.init_weights(gpt2)


def test_validate_shows_the_parameter_count_and_where_the_weights_come_from(tiny_spec, write_spec):
    tiny_spec["student"] = {"name": "llama", "init": "subclone", **NARROW}
    code, output = kd_in_process("validate", write_spec(tiny_spec))
    text = " ".join(output.split())
    student = llama(LlamaParams(init="subclone", **NARROW), BuildContext(vocab_size=64, max_seq_len=6))
    count = sum(p.numel() for p in student.parameters())
    assert code == 0, output
    assert f"has {count:,} parameters" in text
    assert "initial weights: subclone of teacher 'tiny-llama': blocks 0 of 2, 16 of 32 residual dims" in text
    tiny_spec["student"] = {"name": "llama", **NARROW}
    code, output = kd_in_process("validate", write_spec(tiny_spec, "random.toml"))
    assert code == 0 and "initial weights: random (seeded by phases[0].seed)" in " ".join(output.split())


# --- reverting --------------------------------------------------------------------------------------


def test_the_reverted_subclone_is_the_same_function_and_a_plain_transformers_llama(teacher, tmp_path):
    from transformers import AutoModelForCausalLM

    from kdcore.run.artifact import save_student

    student = subcloned(teacher, **NARROW)
    batch = inputs(64, soft=False)
    ids, lengths = batch.ids, batch.lengths
    with torch.no_grad():
        float_logits = student(Inputs(lengths, soft=batch.as_soft(64)), positions="all")
    save_student(student.revert(), tmp_path / "reverted", student={"name": "llama"}, vocab_size=64, max_seq_len=S)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "reverted").eval()  # plain transformers
    mask = batch.mask()
    with torch.no_grad():
        assert (hf(input_ids=ids, attention_mask=mask.long()).logits - float_logits)[mask].abs().max() <= 1e-5


# --- training, resuming and evaluating from a subclone ----------------------------------------------


@pytest.fixture
def subclone_spec(tiny_spec, write_spec):
    def make(name: str, **phase) -> Path:
        data = copy.deepcopy(tiny_spec)
        data.update(name=name, student={"name": "llama", "init": "subclone", **NARROW})
        data["phases"][0].update(phase)
        return write_spec(data, f"{name}.toml")

    return make


def test_training_starts_from_the_subclone(subclone_spec):
    path = subclone_spec("still", optimizer="sgd", lr=1e-30, max_steps=1)  # the weights stay where they start
    spec = load_spec(path)
    generate(spec, "noise")
    train(spec)
    trained = load_file(str(spec.run_path / "student" / "float_student.safetensors"))
    plain = tiny_llama(TinyLlamaParams(**TEACHER))  # the spec's teacher, norms as built
    expected = subcloned(plain, **NARROW).state_dict()
    for k, v in expected.items():
        if "embed_tokens" not in k:  # a zero bias moves by lr * gradient ~ 1e-30 in the one step
            torch.testing.assert_close(trained[k], v, rtol=0, atol=1e-20, msg=k)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_subclone_run_resumes_exactly(subclone_spec, monkeypatch):
    from test_train import _kill_when, final_weights, records, same

    monkeypatch.setenv("KD_DEVICE", "cpu")  # the killed run and the reference on the same device
    ref, path = (subclone_spec(n, epochs=3, checkpoint_every=2) for n in ("ref", "killed"))
    generate(load_spec(ref), "noise")
    run = load_spec(path).run_path
    env = {**os.environ, "KD_STEP_DELAY": "0.25", "KD_DEVICE": "cpu"}
    killed = _kill_when(path, run, lambda s: s["phase_step"] >= 4, env)
    assert 0 < killed["phase_step"] < 15
    done = subprocess.run([sys.executable, "-m", "kdcore", "train", str(path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    train(load_spec(ref))
    assert same(final_weights(ref), final_weights(path))  # resumed from the checkpoint, not re-cut
    assert [r["loss"] for r in records(path)] == [r["loss"] for r in records(ref)]


@pytest.mark.slow
def test_the_untrained_baseline_is_the_subclone(tiny_spec, write_spec, tmp_path):
    tiny_spec["student"] = {"name": "llama", "init": "subclone", **FULL}  # all of the teacher: agrees everywhere
    tiny_spec["phases"][0].update(epochs=1, max_steps=1)
    result = subprocess.run([sys.executable, "-m", "kdcore", "run", str(write_spec(tiny_spec))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "runs" / "tiny" / "eval" / "report.json").read_text())
    untrained = report["results"]["untrained"]
    assert untrained["top1_agreement"] == 1.0 and untrained["kl_teacher_student"] < 1e-6
    assert report["untrained_init"].startswith("subclone of teacher 'tiny-llama'")
