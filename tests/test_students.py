"""Students: float rows and token ids agree, reverting and saving keep the function, params are strict."""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest
import torch

from kd_plugins import students
from kdcore.api import BuildContext, Inputs
from kdcore.problems import KDError

V, S = 64, 8
CTX = BuildContext(vocab_size=V, max_seq_len=S)


def registered() -> dict[str, tuple[type, type]]:
    table = {}
    students.register_all(lambda name, cls, params: table.setdefault(name, (cls, params)))
    return table


STUDENTS = registered()


def build(name: str, ctx: BuildContext = CTX, **params):
    torch.manual_seed(0)
    cls, params_model = STUDENTS[name]
    return cls(params_model(**params), ctx)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (B, S) with varied lengths; padding positions hold junk ids, which must be ignored."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([S, 1, 5, 3])
    return torch.randint(0, V, (len(lengths), S), generator=g), lengths


def test_registers_the_six_students_with_documented_classes():
    assert set(STUDENTS) == {"crossbaby", "crossbaby2", "double-cross", "learned-double-cross", "transformer-baby", "llama"}
    for cls, params_model in STUDENTS.values():
        assert cls.__doc__ and params_model.__doc__


def test_transformers_is_imported_only_when_a_llama_is_built():
    code = "import sys, kd_plugins.students; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_ids_soft_and_reverted_agree(name):
    student = build(name).eval()
    reverted = student.revert()
    ids, lengths = batch()
    by_ids = Inputs(lengths, ids=ids)
    by_soft = Inputs(lengths, soft=by_ids.as_soft(V))
    with torch.no_grad():
        for positions in student.positions:
            soft_logits = student(by_soft, positions=positions)
            shape = (len(lengths), V) if positions == "last" else (len(lengths), S, V)
            assert soft_logits.shape == shape
            assert (student(by_ids, positions=positions) - soft_logits).abs().max() <= 1e-5
            valid = by_ids.mask() if positions == "all" else slice(None)  # padding positions' logits mean nothing
            assert (reverted(ids, lengths, positions=positions) - soft_logits)[valid].abs().max() <= 1e-5


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_padding_rows_do_not_matter(name):
    student = build(name).eval()
    ids, lengths = batch()
    soft = Inputs(lengths, ids=ids).as_soft(V)
    noisy = soft + torch.rand(soft.shape) * ~Inputs(lengths, ids=ids).mask()[..., None]
    with torch.no_grad():
        assert torch.equal(student(Inputs(lengths, soft=soft)), student(Inputs(lengths, soft=noisy)))


def test_llama_last_is_all_at_the_last_valid_position():
    student = build("llama").eval()
    ids, lengths = batch()
    with torch.no_grad():
        every = student(Inputs(lengths, ids=ids), positions="all")
        last = student(Inputs(lengths, ids=ids), positions="last")
    torch.testing.assert_close(last, every[torch.arange(len(lengths)), lengths - 1])


@pytest.mark.parametrize("name", ["crossbaby", "crossbaby2", "transformer-baby"])
def test_fixed_length_students_refuse_all_positions_and_pad_short_input(name):
    student = build(name).eval()
    assert student.positions == ("last",)
    ids, lengths = batch()
    with pytest.raises(ValueError, match="positions"):
        student(Inputs(lengths, ids=ids), positions="all")
    short = lengths.clamp(max=5)
    with torch.no_grad():
        padded = student(Inputs(short, ids=ids))
        torch.testing.assert_close(student(Inputs(short, ids=ids[:, :5])), padded)
        torch.testing.assert_close(student.revert()(ids[:, :5], short), padded)
    with pytest.raises(ValueError, match="at most"):
        student(Inputs(lengths, ids=torch.zeros(len(lengths), S + 1, dtype=torch.long)))


def literal_interaction(e: torch.Tensor) -> torch.Tensor:
    """The original's (B, S, S, w) tensor, built the slow way."""
    return torch.einsum("bij,bkm->bikj", e, e)


def test_crossbaby_matches_the_literal_interaction():
    student = build("crossbaby").eval()
    body = student.body
    ids, lengths = batch()
    x = student.embed(Inputs(lengths, ids=ids).as_soft(V))
    e = torch.relu(x)
    p = literal_interaction(e).reshape(len(lengths), S, -1)
    h = torch.relu(body.cross(p)).flatten(1)
    expected = body.out(torch.relu(body.mix(h)))
    with torch.no_grad():
        torch.testing.assert_close(student(Inputs(lengths, ids=ids)), expected, atol=1e-5, rtol=1e-5)


def test_crossbaby2_matches_the_literal_three_readings():
    student = build("crossbaby2").eval()
    body = student.body
    ids, lengths = batch()
    e = torch.relu(student.embed(Inputs(lengths, ids=ids).as_soft(V)))
    p = literal_interaction(e)  # [b, i, k, j]
    B, w = len(lengths), e.shape[-1]
    readings = [
        (body.rows_i, body.flat_i, p.reshape(B, S, S * w)),
        (body.rows_k, body.flat_k, p.transpose(1, 2).reshape(B, S, S * w)),
        (body.rows_j, body.flat_j, p.permute(0, 3, 1, 2).reshape(B, w, S * S)),
    ]
    reduced = [torch.relu(flat(torch.relu(rows(view)).flatten(1))) for rows, flat, view in readings]
    expected = body.out(torch.relu(body.up(torch.cat(reduced, -1))))
    with torch.no_grad():
        torch.testing.assert_close(student(Inputs(lengths, ids=ids)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_save_and_load_reverted_round_trip(name, tmp_path):
    from kdcore.run.artifact import load_student, save_student

    params = {"word_embed": 6} if "cross" in name else {}
    reverted = build(name, **params).revert().eval()
    save_student(reverted, tmp_path / "student", student={"name": name, **STUDENTS[name][1](**params).model_dump()},
                 vocab_size=V, max_seq_len=S)
    loaded = load_student(tmp_path / "student")
    assert type(loaded) is type(reverted)
    ids, lengths = batch()
    with torch.no_grad():
        for positions in reverted.positions:
            assert torch.equal(loaded(ids, lengths, positions=positions), reverted(ids, lengths, positions=positions))


def test_load_student_names_what_is_missing(tmp_path):
    from kdcore.run.artifact import load_student

    with pytest.raises(KDError, match="no saved student"):
        load_student(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(KDError, match="neither a transformers config"):
        load_student(tmp_path)


def test_crossbaby_parameter_count_at_the_original_size():
    vocab, seq, w = 32000, 512, 50
    student = build("crossbaby", BuildContext(vocab_size=vocab, max_seq_len=seq), word_embed=w)
    expected = (
        vocab * w + w  # word_embedding
        + 2 * (seq * w * w + w)  # the two Linear(S*w, w)
        + w * vocab + vocab  # output
    )
    assert sum(p.numel() for p in student.parameters()) == expected
    assert round(expected / 1e6, 2) == 5.79  # as reported by the original project


def test_vocab_size_must_match_the_teacher():
    assert build("crossbaby", vocab_size=V).embed.in_features == V
    with pytest.raises(KDError, match=f"^vocab_size: 100 does not match the teacher's vocabulary \\({V}\\)"):
        build("crossbaby", vocab_size=100)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_gradients_reach_embed_alike_from_soft_and_ids(name):
    student = build(name)
    ids, lengths = batch()
    grads = []
    for inputs in (Inputs(lengths, ids=ids), Inputs(lengths, soft=Inputs(lengths, ids=ids).as_soft(V))):
        student.zero_grad()
        student(inputs).square().mean().backward()
        grads.append(student.embed.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_params_forbid_unknown_keys(name):
    _, params_model = STUDENTS[name]
    params_model()  # the defaults are valid
    with pytest.raises(pydantic.ValidationError, match="extra"):
        params_model(word_embedding=3)


@pytest.mark.parametrize(
    "name, bad",
    [
        ("crossbaby", {"word_embed": 0}),
        ("crossbaby2", {"up_dim": -1}),
        ("transformer-baby", {"d_model": 63, "nhead": 2}),
        ("llama", {"hidden_size": 128, "heads": 3}),
        ("llama", {"heads": 4, "kv_heads": 3}),
    ],
)
def test_params_reject_impossible_shapes(name, bad):
    with pytest.raises(pydantic.ValidationError):
        STUDENTS[name][1](**bad)
