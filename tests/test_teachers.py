"""Teacher adapters: float vocab rows in (`x @ E`), the same logits as token ids for one-hot rows.

Every adapter is checked against token ids (one-hot rows vs ids, float32, <= 1e-5), positions
"last" and "all"; file formats (a saved HF directory, a Meta checkpoint in one and two shards) are
checked against the same weights loaded directly as a transformers model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdcore.api import BuildContext, Inputs
from kd_plugins.teachers import (
    HFParams, MetaLlamaParams, SentencePieceTokenizer, TinyLlamaParams, hf_causal_lm, meta_llama, tiny_llama,
)

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-5
TINY = dict(vocab_size=64, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64)


def ctx(base: Path = Path(".")) -> BuildContext:
    return BuildContext(vocab_size=0, max_seq_len=0, base_dir=base)


def id_batch(vocab: int, lengths=(7, 3, 5, 1), seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    lengths = torch.tensor(lengths)
    ids = torch.randint(0, vocab, (len(lengths), S), generator=g)
    ids = ids * (torch.arange(S)[None] < lengths[:, None])
    return Inputs(lengths=lengths, ids=ids)


def one_hot(inputs: Inputs, vocab: int) -> Inputs:
    return Inputs(lengths=inputs.lengths, soft=inputs.as_soft(vocab))


def assert_onehot_equals_ids(teacher, inputs: Inputs) -> None:
    soft = one_hot(inputs, teacher.vocab_size)
    mask = inputs.mask()
    for positions in ("last", "all"):
        a = teacher.logits(inputs, positions)
        b = teacher.logits(soft, positions)
        assert a.dtype == torch.float32 and b.dtype == torch.float32
        if positions == "last":
            assert a.shape == (inputs.batch_size, teacher.vocab_size)
        else:
            assert a.shape == (inputs.batch_size, inputs.seq_len, teacher.vocab_size)
            a, b = a[mask], b[mask]
        assert (a - b).abs().max().item() <= TOL, positions


def reference_logits(model, inputs: Inputs) -> list[torch.Tensor]:
    """Per-sample (L, V) logits of a plain transformers model on token ids, no padding involved."""
    with torch.inference_mode():
        return [model(input_ids=inputs.ids[i : i + 1, : int(n)]).logits[0].float()
                for i, n in enumerate(inputs.lengths)]


def assert_matches_reference(teacher, model, inputs: Inputs, tol: float = TOL) -> None:
    ref = reference_logits(model, inputs)
    for x in (inputs, one_hot(inputs, teacher.vocab_size)):
        last = teacher.logits(x, "last")
        full = teacher.logits(x, "all")
        for i, n in enumerate(inputs.lengths.tolist()):
            assert (last[i] - ref[i][-1]).abs().max().item() <= tol
            assert (full[i, :n] - ref[i]).abs().max().item() <= tol


def hf_tiny_model(vocab: int = 64, seed: int = 0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, **kw)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms, so a wrong norm mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


# --- tiny-llama -----------------------------------------------------------------------------------


def test_tiny_llama_onehot_equals_ids():
    teacher = tiny_llama(TinyLlamaParams(**TINY))
    assert teacher.embedding_weight().shape == (64, 32)
    assert_onehot_equals_ids(teacher, id_batch(64))


def test_tiny_llama_fingerprint_stable_and_weight_sensitive():
    a = tiny_llama(TinyLlamaParams(**TINY))
    b = tiny_llama(TinyLlamaParams(**TINY))
    c = tiny_llama(TinyLlamaParams(**TINY, seed=1))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    x = id_batch(64)
    assert torch.equal(a.logits(x), b.logits(x))  # same seed, same weights


@pytest.mark.parametrize("positions", ["last", "all"])
def test_batched_equals_per_sample_tiny(positions):
    teacher = tiny_llama(TinyLlamaParams(**TINY))
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([6, 2, 4, 1, 6, 3])
    soft = torch.rand(6, 6, 64, generator=g) * 20 - 10
    soft = soft * (torch.arange(6)[None] < lengths[:, None])[..., None]
    batch = teacher.logits(Inputs(lengths=lengths, soft=soft), positions)
    for i, n in enumerate(lengths.tolist()):
        one = teacher.logits(Inputs(lengths=lengths[i : i + 1], soft=soft[i : i + 1, :n]), positions)[0]
        got = batch[i] if positions == "last" else batch[i, :n]
        assert (got - one).abs().max().item() <= 1e-4


# --- hf-causal-lm -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = hf_tiny_model(seed=1)
    path = tmp_path_factory.mktemp("hf") / "model"
    model.save_pretrained(path)
    return path, model


def test_hf_causal_lm_matches_transformers(hf_dir):
    path, model = hf_dir
    teacher = hf_causal_lm(HFParams(path=str(path)), ctx())
    assert teacher.name == "hf-causal-lm" and teacher.vocab_size == 64
    x = id_batch(64)
    assert_onehot_equals_ids(teacher, x)
    assert_matches_reference(teacher, model, x)


def test_hf_causal_lm_relative_path_and_fingerprint(hf_dir):
    path, _ = hf_dir
    a = hf_causal_lm(HFParams(path=path.name), ctx(path.parent))  # relative to the spec's folder
    b = hf_causal_lm(HFParams(path=str(path)), ctx())
    assert a.fingerprint() == b.fingerprint()
    other = path.parent / "other"
    hf_tiny_model(seed=2).save_pretrained(other)
    c = hf_causal_lm(HFParams(path=str(other)), ctx())
    assert c.fingerprint() != b.fingerprint()


def test_hf_causal_lm_missing_path_is_clear(tmp_path):
    from kdcore.problems import KDError

    with pytest.raises(KDError, match="does not exist"):
        hf_causal_lm(HFParams(path=str(tmp_path / "nope")), ctx())


# --- meta-llama -----------------------------------------------------------------------------------

META_VOCAB = 200


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    import sentencepiece

    out = tmp_path_factory.mktemp("spm")
    sentencepiece.SentencePieceTrainer.train(
        input=str(REPO / "kdcore" / "texts" / "reference.txt"), model_prefix=str(out / "tok"),
        vocab_size=META_VOCAB, model_type="bpe", minloglevel=2, character_coverage=1.0,
        user_defined_symbols=["[INST]", "[/INST]"],  # Llama-2 covers them through byte fallback
    )
    return out / "tok.model"


def to_meta_state(model) -> dict[str, torch.Tensor]:
    """A transformers Llama's weights under Meta's names, q/k back in Meta's interleaved rotary layout."""
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def permute_back(w: torch.Tensor, heads: int) -> torch.Tensor:  # HF halves -> Meta interleaved
        return w.view(heads, 2, head_dim // 2, w.shape[1]).transpose(1, 2).reshape(heads * head_dim, w.shape[1])

    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    for i in range(cfg.num_hidden_layers):
        h, m = f"model.layers.{i}.", f"layers.{i}."
        out[m + "attention.wq.weight"] = permute_back(sd[h + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        out[m + "attention.wk.weight"] = permute_back(sd[h + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        out[m + "attention.wv.weight"] = sd[h + "self_attn.v_proj.weight"]
        out[m + "attention.wo.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[m + "feed_forward.w1.weight"] = sd[h + "mlp.gate_proj.weight"]
        out[m + "feed_forward.w2.weight"] = sd[h + "mlp.down_proj.weight"]
        out[m + "feed_forward.w3.weight"] = sd[h + "mlp.up_proj.weight"]
        out[m + "attention_norm.weight"] = sd[h + "input_layernorm.weight"]
        out[m + "ffn_norm.weight"] = sd[h + "post_attention_layernorm.weight"]
    return out


# Meta's model-parallel split axes (norms are replicated in every shard)
SPLIT = {"tok_embeddings": 1, "output": 0, "wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w2": 1, "w3": 0}


def write_meta(folder: Path, model, tokenizer: Path, shards: int = 1) -> Path:
    import shutil

    folder.mkdir(parents=True)
    cfg = model.config
    state = to_meta_state(model)
    for s in range(shards):
        part = {}
        for key, w in state.items():
            kind = key.split(".")[-2]
            part[key] = w.clone() if w.dim() == 1 else w.chunk(shards, dim=SPLIT[kind])[s].clone()
        torch.save(part, folder / f"consolidated.{s:02d}.pth")
    (folder / "params.json").write_text(json.dumps({
        "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
        # Meta's width rule gives the model's 64: 2/3 * 4 * 32 = 85, * 0.75 = 63, up to a multiple of 32
        "n_kv_heads": cfg.num_key_value_heads, "multiple_of": 32, "ffn_dim_multiplier": 0.75, "norm_eps": cfg.rms_norm_eps,
        "vocab_size": -1,
    }))
    shutil.copy(tokenizer, folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def meta_model():
    return hf_tiny_model(vocab=META_VOCAB, seed=5)


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_llama_matches_transformers(tmp_path, spm_model, meta_model, shards):
    folder = write_meta(tmp_path / "llama", meta_model, spm_model, shards)
    assert len(list(folder.glob("consolidated.*.pth"))) == shards
    teacher = meta_llama(MetaLlamaParams(path=str(folder), max_seq_len=64), ctx())
    assert teacher.name == "meta-llama" and teacher.vocab_size == META_VOCAB
    x = id_batch(META_VOCAB, seed=shards)
    assert_onehot_equals_ids(teacher, x)
    assert_matches_reference(teacher, meta_model, x)


def test_meta_llama_fingerprint_and_tokenizer(tmp_path, spm_model, meta_model):
    folder = write_meta(tmp_path / "llama", meta_model, spm_model)
    a = meta_llama(MetaLlamaParams(path=str(folder), max_seq_len=64), ctx())
    b = meta_llama(MetaLlamaParams(path=str(folder), max_seq_len=64), ctx())
    assert a.fingerprint() == b.fingerprint()
    other = write_meta(tmp_path / "other", hf_tiny_model(vocab=META_VOCAB, seed=6), spm_model)
    assert meta_llama(MetaLlamaParams(path=str(other), max_seq_len=64), ctx()).fingerprint() != a.fingerprint()

    tok = a.tokenizer()
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == META_VOCAB
    text = "The cat sat on the mat."
    ids = tok.encode(text)
    assert ids and all(0 <= i < META_VOCAB for i in ids)
    assert tok.decode(ids) == text
    chat = tok.chat("  Hello there ")
    assert chat[0] == tok.sp.bos_id() and chat[1:] == tok.encode("[INST] Hello there [/INST]")
    assert tok.decode(chat[1:]) == "[INST] Hello there [/INST]"


def test_meta_llama_missing_files_are_clear(tmp_path):
    from kdcore.problems import KDError

    with pytest.raises(KDError, match="params.json"):
        meta_llama(MetaLlamaParams(path=str(tmp_path)), ctx())
    with pytest.raises(KDError, match="^path: .*nowhere does not exist"):
        meta_llama(MetaLlamaParams(path=str(tmp_path / "nowhere")), ctx())


# --- smollm2 (the real teacher) ---------------------------------------------------------------------


@pytest.mark.real_teacher
def test_smollm2_onehot_equals_ids(smollm2_teacher):
    t = smollm2_teacher
    assert t.vocab_size == 49152 and t.name == "smollm2"
    tok = t.tokenizer()
    texts = ["The capital of France is", "Once upon a time", "Hi"]
    encoded = [tok.encode(s) for s in texts]
    S = max(map(len, encoded))
    ids = torch.zeros(len(texts), S, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
    x = Inputs(lengths=torch.tensor([len(e) for e in encoded]), ids=ids)
    assert_onehot_equals_ids(t, x)
    assert tok.decode(encoded[0]) == texts[0]
    # a pre-trained model, not noise: "Paris" is a likely continuation
    paris = tok.encode(" Paris")[0]
    assert paris in t.logits(x)[0].topk(10).indices.tolist()


@pytest.mark.real_teacher
@pytest.mark.parametrize("noise", ["one-hot", "soft-ids", "uniform"])
def test_smollm2_batched_equals_per_sample(smollm2_teacher, noise):
    """Each sample alone gives the logits it gets in a padded batch, within 1e-4 (the issue's bound),
    even for the original's dense uniform[-10, 10] rows, whose embeddings reach ~300."""
    t = smollm2_teacher
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 2, 4, 1, 5])
    S, V = 5, t.vocab_size
    if noise == "one-hot":
        soft = torch.nn.functional.one_hot(torch.randint(0, V, (5, S), generator=g), V).float()
    elif noise == "soft-ids":
        soft = torch.softmax(torch.randn(5, S, V, generator=g) * 8, -1)
    else:
        soft = torch.rand(5, S, V, generator=g) * 20 - 10
    soft = soft * (torch.arange(S)[None] < lengths[:, None])[..., None]
    x = Inputs(lengths=lengths, soft=soft)
    last, full = t.logits(x, "last"), t.logits(x, "all")
    assert full.shape == (5, S, V) and last.shape == (5, V)
    for i, n in enumerate(lengths.tolist()):
        one = Inputs(lengths=lengths[i : i + 1], soft=soft[i : i + 1, :n])
        assert (t.logits(one, "last")[0] - last[i]).abs().max().item() <= 1e-4
        assert (t.logits(one, "all")[0] - full[i, :n]).abs().max().item() <= 1e-4


@pytest.mark.real_teacher
def test_padding_to_the_alignment_changes_no_logit(smollm2_teacher):
    """The teacher pads S to a multiple of ALIGN: the valid positions' logits equal the unpadded
    model's own forward (within float32 noise; a leak of padding into them would be O(1))."""
    from kd_plugins.teachers import ALIGN

    t = smollm2_teacher
    ids = torch.randint(0, t.vocab_size, (2, ALIGN + 3), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = t.model(input_ids=ids).logits
    got = t.logits(Inputs(torch.tensor([ALIGN + 3, ALIGN + 3]), ids=ids), "all")
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-3


def test_hf_causal_lm_beyond_llama_uses_the_models_own_forward(tmp_path):
    """A non-Llama architecture (GPT-2 here) goes through its own forward: the same logits as
    transformers gives for the ids, and one-hot rows equal ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "gpt2")
    teacher = hf_causal_lm(HFParams(path=str(tmp_path / "gpt2")), BuildContext(0, 0, base_dir=tmp_path))
    ids = torch.randint(0, 64, (3, 7))
    inputs = Inputs(torch.full((3,), 7), ids=ids)
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
    assert torch.allclose(teacher.logits(inputs, "all"), expected, atol=1e-5)
    assert torch.allclose(teacher.logits(inputs, "last"), expected[:, -1], atol=1e-5)
    soft = Inputs(inputs.lengths, soft=inputs.as_soft(64))
    assert (teacher.logits(soft, "all") - teacher.logits(inputs, "all")).abs().max() <= 1e-5


@pytest.mark.real_teacher
def test_a_gguf_teacher_is_converted_once_keyed_by_its_fingerprint(smollm2_teacher, tmp_path, monkeypatch):
    """hf-causal-lm on a .gguf reuses the float32 conversion that smollm2 made of the same file: no
    second de-quantisation. The cache key is the file's fingerprint: a copy shares it, a changed
    byte does not."""
    from kd_plugins import teachers

    smollm2_teacher.model  # noqa: B018 (the session's teacher: converted by now)

    def convert_again(*args):
        raise AssertionError("the GGUF file was de-quantised again")

    monkeypatch.setattr(teachers, "_convert_gguf", convert_again)
    teacher = hf_causal_lm(HFParams(path=str(teachers.smollm2_gguf())), ctx())
    assert teacher.vocab_size == smollm2_teacher.vocab_size and not teacher.loaded  # config first, no weights
    ids = id_batch(teacher.vocab_size)
    assert torch.equal(teacher.logits(ids), smollm2_teacher.logits(ids))

    data = bytearray(torch.randint(0, 256, (3 << 20,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    a.write_bytes(data), b.write_bytes(data)
    data[len(data) // 3] ^= 1
    c.write_bytes(data)
    assert teachers.file_fingerprint(a) == teachers.file_fingerprint(b) != teachers.file_fingerprint(c)


COLD_TEACHER = """
import sys, torch
from kd_plugins.teachers import SmolLM2Params, smollm2
from kdcore.api import Inputs

teacher = smollm2(SmolLM2Params())
ids = torch.tensor([[1, 2, 3, 4]])
logits = teacher.logits(Inputs(lengths=torch.tensor([4]), ids=ids))
print(teacher.fingerprint(), tuple(logits.shape))
"""


@pytest.mark.real_teacher
@pytest.mark.slow
def test_smollm2_converts_into_empty_caches_in_a_fresh_process(tmp_path, smollm2_teacher):
    """The path a fresh machine takes (`make run` on a new clone): a new process, every cache it or
    its dependencies read pointed at an empty folder, converts the GGUF file and runs the teacher.
    Its conversion equals the session's (the same fingerprint)."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    caches = {"HOME": home, "KD_CACHE": home / "kd", "HF_HOME": home / "hf", "XDG_CACHE_HOME": home / "xdg",
              "TMPDIR": home / "tmp", "MPLCONFIGDIR": home / "mpl"}
    for folder in caches.values():
        folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: str(v) for k, v in caches.items()}, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", COLD_TEACHER], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    converted = list((home / "kd").glob("gguf-*"))
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file(), proc.stdout
    fingerprint, shape = proc.stdout.split()[0], proc.stdout.strip().split(" ", 1)[1]
    assert fingerprint == smollm2_teacher.fingerprint()
    assert shape == f"(1, {smollm2_teacher.vocab_size})"
