"""Samplers: each a pure function of (dataset seed, sample index), whatever the batch asking for it."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kd_plugins.samplers import TeacherGenerated, TeacherGeneratedParams, nucleus
from kdcore.stages.builder import Builder
from kdcore.api import BuildContext, Inputs, sample_seed
from kdcore.problems import KDError
from kdcore.config.load import parse_spec
from kdcore.stages.generate import GenerateStage

# one configuration per registered sampler (a new sampler must be added here: see the test below)
CONFIGS = {
    "uniform": {"name": "uniform", "low": -10.0, "high": 10.0},
    "random-ids": {"name": "random-ids"},
    "zipf-ids": {"name": "zipf-ids", "low": 3},
    "teacher-unigram-ids": {"name": "teacher-unigram-ids", "low": 3},
    "length-mix": {"name": "length-mix", "full_fraction": 0.5, "min_len": 2, "sampler": {"name": "uniform"}},
    "gaussian": {"name": "gaussian", "mean": 0.5, "std": 2.0},
    "soft-ids": {"name": "soft-ids", "scale": 4.0},
    "k-hot": {"name": "k-hot", "k": 3},
    "norm-matched": {"name": "norm-matched"},
    "teacher-generated": {"name": "teacher-generated", "group": 4, "prefix": 2},
    "mix": {"name": "mix", "samplers": [{"name": "uniform"}, {"name": "random-ids"}], "weights": [1, 1]},
    "text-windows": {"name": "text-windows"},
}


def build(tiny_spec, sampler: dict, max_seq_len: int = 6, teacher: dict | None = None):
    data = copy.deepcopy(tiny_spec)
    ds = data["datasets"]["noise"]
    ds["sampler"], ds["max_seq_len"] = sampler, max_seq_len
    if teacher:
        data["teacher"].update(teacher)
    spec = parse_spec(data)
    builder = Builder(spec)
    return builder.sampler("noise"), builder


def rows(x: Inputs) -> torch.Tensor:
    return x.ids if x.ids is not None else x.soft


def test_every_registered_sampler_is_covered(tiny_spec):
    registry = parse_spec(tiny_spec).registry
    assert set(registry.names("sampler")) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pure_function_of_seed_and_index(tiny_spec, name):
    make = lambda: build(tiny_spec, CONFIGS[name])[0]  # noqa: E731 - a fresh instance: no cache shared
    a, b, c = make(), make(), make()
    batch = a.sample([3, 4, 5], seed=7)
    alone = b.sample([4], seed=7)
    shuffled = c.sample([9, 5, 0, 4], seed=7)
    assert batch.batch_size == 3 and batch.seq_len == 6
    assert (batch.ids is None) == (a.produces == "soft")
    assert torch.equal(rows(batch)[1], rows(alone)[0])
    assert torch.equal(rows(batch)[1], rows(shuffled)[3])
    assert torch.equal(rows(batch)[2], rows(shuffled)[1])
    assert torch.equal(batch.lengths[1:2], alone.lengths)
    assert torch.equal(rows(a.sample([4], seed=7))[0], rows(alone)[0])  # repeatable on the same instance
    other = a.sample([3, 4, 5], seed=8)
    assert not torch.equal(rows(batch), rows(other))
    assert not torch.equal(rows(batch)[0], rows(batch)[1])  # indices differ
    assert ((batch.lengths >= 1) & (batch.lengths <= 6)).all()
    if batch.ids is not None:
        assert batch.ids.dtype == torch.int64 and ((batch.ids >= 0) & (batch.ids < 64)).all()


def test_uniform_range_and_gaussian_moments(tiny_spec):
    u, _ = build(tiny_spec, {"name": "uniform", "low": -2.0, "high": 3.0})
    x = u.sample(range(50), 0).soft
    assert x.min() >= -2 and x.max() <= 3 and abs(x.mean().item() - 0.5) < 0.05
    gs, _ = build(tiny_spec, CONFIGS["gaussian"])
    x = gs.sample(range(50), 0).soft
    assert abs(x.mean().item() - 0.5) < 0.05 and abs(x.std().item() - 2.0) < 0.05


def test_sparse_rows_on_the_simplex(tiny_spec):
    k, _ = build(tiny_spec, CONFIGS["k-hot"])
    x = k.sample(range(10), 0).soft
    assert torch.allclose(x.sum(-1), torch.ones(10, 6))
    assert ((x > 0).sum(-1) == 3).all()
    s, _ = build(tiny_spec, CONFIGS["soft-ids"])
    x = s.sample(range(10), 0).soft
    assert (x >= 0).all() and torch.allclose(x.sum(-1), torch.ones(10, 6), atol=1e-5)


@pytest.mark.parametrize("inner", ["uniform", "random-ids"])
def test_length_mix(tiny_spec, inner):
    S = 8
    mix, _ = build(tiny_spec, {"name": "length-mix", "full_fraction": 0.3, "min_len": 3, "sampler": {"name": inner}}, S)
    lengths = mix.lengths(range(4000), 5)
    assert abs((lengths == S).float().mean().item() - 0.3) < 0.03
    assert lengths.min() == 3 and lengths.max() == S
    short = lengths[lengths < S]
    counts = torch.bincount(short, minlength=S)[3:S].float()  # uniform over [min_len, S-1]
    assert (counts / counts.sum() - 1 / len(counts)).abs().max() < 0.04
    x = mix.sample(range(200), 5)
    assert torch.equal(x.lengths, lengths[:200])
    pad = ~x.mask()
    assert pad.any()
    if inner == "uniform":
        assert (x.soft[pad] == 0).all() and (x.soft[~pad] != 0).all()
    else:
        assert (x.ids[pad] == 0).all()
    # the valid part is the inner sampler's sample
    inner_x = mix.inner.sample(range(200), 5)
    keep = x.mask()
    assert torch.equal(rows(x)[keep], rows(inner_x)[keep])


def test_length_mix_edges(tiny_spec):
    full, _ = build(tiny_spec, {"name": "length-mix", "full_fraction": 0.0, "min_len": 6, "sampler": {"name": "uniform"}})
    assert (full.lengths(range(50), 0) == 6).all()  # min_len == S: nothing shorter is allowed
    all_full, _ = build(tiny_spec, {"name": "length-mix", "full_fraction": 1.0, "sampler": {"name": "uniform"}})
    assert (all_full.lengths(range(50), 0) == 6).all()


def test_mix_weights_and_determinism(tiny_spec):
    cfg = {"name": "mix", "samplers": [{"name": "uniform"}, {"name": "random-ids"}], "weights": [0.8, 0.2]}
    mix, _ = build(tiny_spec, cfg)
    x = mix.sample(range(1000), 3)
    assert mix.produces == "soft"
    onehot = ((x.soft == 1).sum(-1) == 1).all(-1) & ((x.soft == 0).sum(-1) == 63).all(-1)
    assert abs(onehot.float().mean().item() - 0.2) < 0.04
    picks = torch.tensor([mix.choice(3, i) for i in range(1000)])
    assert torch.equal(picks == 1, onehot)
    again, _ = build(tiny_spec, cfg)
    assert torch.equal(again.sample(range(1000), 3).soft, x.soft)
    ids_only, _ = build(tiny_spec, {"name": "mix", "samplers": [{"name": "random-ids"}, {"name": "random-ids", "low": 5, "high": 9}]})
    assert ids_only.produces == "ids" and ids_only.sample([0, 1, 2], 0).ids is not None


# --- samplers that read the teacher ----------------------------------------------------------------


def greedy(teacher, prefix: torch.Tensor, S: int) -> torch.Tensor:
    """Greedy continuation by full forwards (no KV cache): an independent reference."""
    ids = prefix.clone()
    while ids.shape[1] < S:
        x = Inputs(lengths=torch.full((ids.shape[0],), ids.shape[1]), ids=ids)
        ids = torch.cat([ids, teacher.logits(x, "last").argmax(-1, keepdim=True)], 1)
    return ids


@pytest.mark.parametrize("setting", [{"top_k": 1}, {"temperature": 1e-4}, {"top_p": 1e-6}])
def test_teacher_generated_settings_reach_greedy(tiny_spec, setting):
    gen, builder = build(tiny_spec, {"name": "teacher-generated", "group": 4, "prefix": 2, **setting}, 10)
    x = gen.sample(range(6), 1)
    assert torch.equal(x.ids, greedy(builder.teacher, x.ids[:, :2], 10))


def test_teacher_generated_top_k_and_batching(tiny_spec):
    cfg = {"name": "teacher-generated", "group": 4, "prefix": 1, "top_k": 3, "temperature": 2.0}
    gen, builder = build(tiny_spec, cfg, 8)
    x = gen.sample(range(8), 2)
    assert ((x.ids >= 0) & (x.ids < 64)).all() and (x.lengths == 8).all()
    logits = builder.teacher.logits(x, "all")
    top3 = logits[:, :-1].topk(3, -1).indices
    assert (top3 == x.ids[:, 1:, None]).any(-1).all()  # every generated token is among the teacher's top 3
    # not greedy: the sampling is real
    assert not torch.equal(x.ids, greedy(builder.teacher, x.ids[:, :1], 8))
    # any batching, any order, fresh instance or cached: the same rows
    fresh, _ = build(tiny_spec, cfg, 8)
    assert torch.equal(fresh.sample([6], 2).ids[0], x.ids[6])
    assert torch.equal(fresh.sample([7, 1, 4], 2).ids, x.ids[[7, 1, 4]])
    assert not torch.equal(fresh.sample(range(8), 3).ids, x.ids)


def filtered(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution a draw must follow, written out plainly: softmax at the temperature, the top_k
    most probable tokens, then the fewest most probable ones whose mass reaches top_p."""
    probs = torch.softmax(logits.double() / temperature, -1)
    order = probs.argsort(descending=True).tolist()
    keep = order[:top_k] if top_k else order
    if top_p < 1:
        kept_probs = probs[keep] / probs[keep].sum()
        mass, n = 0.0, 0
        while mass < top_p:
            mass, n = mass + kept_probs[n].item(), n + 1
        keep = keep[:n]
    out = torch.zeros_like(probs)
    out[keep] = probs[keep]
    return out / out.sum()


@pytest.mark.parametrize("setting", [{}, {"temperature": 2.0}, {"temperature": 0.5}, {"top_k": 3},
                                     {"top_p": 0.6}, {"top_k": 5, "top_p": 0.7, "temperature": 1.5}])
def test_teacher_generated_draw_follows_the_filtered_distribution(tiny_spec, setting):
    gen, _ = build(tiny_spec, {"name": "teacher-generated", **setting})
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, 0.2])
    n = 200_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = torch.bincount(gen.draw(logits.expand(n, -1), u), minlength=8).double() / n
    want = filtered(logits, **setting)
    assert (got - want).abs().max() < 0.005, (got, want)
    assert (got[want == 0] == 0).all()  # a token cut off is never drawn
    # the two ends of [0, 1): the first and the last token of positive probability, never a cut one
    ends = gen.draw(logits.expand(2, -1), torch.tensor([0.0, 1 - 2**-53], dtype=torch.float64))
    kept = (want > 0).nonzero()[:, 0]
    assert ends.tolist() == [kept.min().item(), kept.max().item()]


def test_nucleus_looks_past_the_first_top_k():
    # a flat distribution over 3000 tokens: the top 256 hold less than top_p, so the search widens
    probs = torch.softmax(torch.randn(3, 3000, generator=torch.Generator().manual_seed(1)) * 0.3, -1)
    got = nucleus(probs, 0.9)
    for row, kept in zip(probs, got):
        want = filtered(row.log(), top_p=0.9)
        assert ((kept > 0) == (want > 0)).all() and (kept > 0).sum() > 256
        assert torch.equal(kept[kept > 0], row[kept > 0])  # the kept probabilities are untouched


def test_teacher_generated_logits_are_the_teachers(tiny_spec):
    gen, builder = build(tiny_spec, {"name": "teacher-generated", "group": 4, "prefix": 2, "top_p": 0.9}, 10)
    x = gen.sample([5, 0, 3, 4, 1], 1)
    assert x.logits.shape == (5, 10, 64) and x.logits.dtype == torch.float32 and x.has_logits is None
    full = builder.teacher.logits(Inputs(x.lengths, ids=x.ids), "all")
    torch.testing.assert_close(x.logits, full, atol=1e-5, rtol=1e-5)
    # each drawn token is one the teacher's distribution at the previous position allows
    assert (full[:, 1:-1].gather(-1, x.ids[:, 2:, None]) > -math.inf).all()


@pytest.mark.parametrize("setting", [{"top_p": 0.9}, {"top_k": 1}])
def test_teacher_generated_burn_in_stores_the_end_of_a_longer_decode(tiny_spec, setting):
    """With burn_in, a window is the last max_seq_len tokens of the decode burn_in tokens longer (the
    same draws), and its targets are the teacher's on the window alone, whatever the teacher batch."""
    tiny_spec["datasets"]["noise"]["batch_size"] = 3  # the window's forward in batches of 3: 8 rows straddle them
    gen, builder = build(tiny_spec, {"name": "teacher-generated", "group": 8, "burn_in": 4, **setting}, 6)
    longer, _ = build(tiny_spec, {"name": "teacher-generated", "group": 8, **setting}, 10)
    x, full = gen.sample(range(8), 1), longer.sample(range(8), 1)
    assert torch.equal(x.ids, full.ids[:, 4:]) and (x.lengths == 6).all()
    alone = builder.teacher.logits(Inputs(x.lengths, ids=x.ids), "all")
    torch.testing.assert_close(x.logits, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(x.logits, full.logits[:, 4:], atol=1e-3)  # not the decode's: those saw the burn-in
    assert torch.equal(gen.sample([5, 2], 1).ids, x.ids[[5, 2]])


@pytest.mark.parametrize("prefix", [5, 10])  # into the burn-in; all of it random (no step decoded)
def test_teacher_generated_prefix_may_reach_into_the_burn_in(tiny_spec, prefix):
    gen, _ = build(tiny_spec, {"name": "teacher-generated", "group": 4, "prefix": prefix, "burn_in": 4}, 6)
    longer, _ = build(tiny_spec, {"name": "teacher-generated", "group": 4, "prefix": prefix}, 10)
    x, full = gen.sample(range(4), 0), longer.sample(range(4), 0)
    assert x.ids.shape == (4, 6) and torch.equal(x.ids, full.ids[:, 4:])  # the window holds the prefix's last tokens
    with pytest.raises(KDError) as e:
        build(tiny_spec, {"name": "teacher-generated", "prefix": 11, "burn_in": 4}, 6)
    assert "datasets.noise.sampler.prefix: 11 is longer than max_seq_len 6 + burn_in 4" in str(e.value)


def test_teacher_generated_burn_in_must_fit_the_teachers_positions(tiny_spec):
    gen, builder = build(tiny_spec, {"name": "teacher-generated", "burn_in": 2}, 6)
    limit = builder.teacher.max_positions
    with pytest.raises(KDError) as e:
        build(tiny_spec, {"name": "teacher-generated", "burn_in": limit - 5}, 6)
    assert (f"datasets.noise.sampler.burn_in: max_seq_len 6 + burn_in {limit - 5} is longer than the teacher's "
            f"{limit} positions") in str(e.value)


def test_a_parameter_added_later_leaves_no_trace_at_its_default(tiny_spec):
    """burn_in came after stores of teacher-generated were made: at 0 the resolved spec (the dataset's
    identity) is what it was before, so those stores are not refused for a key they could not have."""
    identity = lambda sampler: GenerateStage(parse_spec({**tiny_spec, "datasets": {"noise": {  # noqa: E731
        **tiny_spec["datasets"]["noise"], "sampler": sampler}}}), "noise").identity()
    before = identity({"name": "teacher-generated"})
    assert "burn_in" not in before["dataset"]["sampler"] and "top_p" in before["dataset"]["sampler"]
    assert identity({"name": "teacher-generated", "burn_in": 0}) == before
    assert identity({"name": "teacher-generated", "burn_in": 3})["dataset"]["sampler"]["burn_in"] == 3


@pytest.mark.parametrize("other", [{"name": "random-ids"}, {"name": "uniform"}])
def test_a_mix_with_teacher_generated_brings_every_rows_logits(tiny_spec, monkeypatch, other):
    """The mix's other rows go through the teacher a group at a time, in full batches; generation
    then runs no forward of its own (the rows it would have forwarded came with their logits)."""
    spec = {"name": "mix", "weights": [0.6, 0.4], "samplers": [{"name": "teacher-generated", "group": 8}, other]}
    tiny_spec["datasets"]["noise"]["inputs"] = "dense"  # float rows with teacher-generated ids: stored, not redrawn
    mix, builder = build(tiny_spec, spec, 10)
    teacher, sizes = builder.teacher, []
    forward = type(teacher.inner).logits
    monkeypatch.setattr(type(teacher.inner), "logits", lambda self, x, positions: sizes.append(x.batch_size) or forward(self, x, positions))
    x = mix.sample([9, 2, 3, 12, 4], 1)  # two groups, out of order
    assert x.logit_rows().all()
    assert sizes and max(sizes) > 2  # the group's other rows together, not the batch's few
    full = forward(teacher, Inputs(x.lengths, x.ids, x.soft), "all")
    torch.testing.assert_close(x.logits, full, atol=1e-5, rtol=1e-5)
    alone = [mix.sample([i], 1) for i in [9, 2, 3, 12, 4]]  # the same rows, asked for one at a time
    assert all(torch.equal(rows(a)[0], rows(x)[r]) for r, a in enumerate(alone))
    torch.testing.assert_close(torch.cat([a.logits for a in alone]), x.logits, atol=1e-6, rtol=0)


def test_a_mix_refuses_groups_that_do_not_divide_each_other(tiny_spec):
    spec = {"name": "mix", "samplers": [{"name": "teacher-generated", "group": 6}, {"name": "teacher-generated", "group": 4}]}
    with pytest.raises(KDError) as e:
        build(tiny_spec, spec, 10)
    assert "datasets.noise.sampler.samplers: the children's groups must divide the largest one (got [4, 6])" in str(e.value)


def test_a_nested_mix_keeps_the_logits_its_decode_brought(tiny_spec, monkeypatch):
    inner = {"name": "mix", "samplers": [{"name": "teacher-generated", "group": 4}, {"name": "random-ids"}]}
    mix, builder = build(tiny_spec, {"name": "mix", "samplers": [inner, {"name": "random-ids"}]}, 8)
    teacher, forwarded = builder.teacher, []
    forward = type(teacher.inner).logits
    monkeypatch.setattr(type(teacher.inner), "logits", lambda self, x, p: forwarded.append(x.ids.clone()) or forward(self, x, p))
    x = mix.sample(range(8), 3)
    assert x.logit_rows().all()
    torch.testing.assert_close(x.logits, forward(teacher, Inputs(x.lengths, x.ids), "all"), atol=1e-5, rtol=1e-5)
    outer = mix.inner
    inner, inner_seed = outer.children[0].inner, sample_seed(3, 0, salt=3)
    # the inner mix's random-ids rows of each group it was asked for random rows of, and the outer's
    spans = {i // 4 for i in range(8) if outer.choice(3, i) == 0 and inner.choice(inner_seed, i) == 1}
    random_rows = sum(outer.choice(3, i) == 1 for i in range(8)) + \
        sum(inner.choice(inner_seed, i) == 1 for g in spans for i in range(4 * g, 4 * g + 4))
    assert sum(len(f) for f in forwarded) == random_rows  # the random-ids rows only: no decoded row again


@pytest.mark.real_teacher
def test_teacher_generated_logits_on_smollm2(smollm2_teacher):
    ctx = BuildContext(vocab_size=smollm2_teacher.vocab_size, max_seq_len=12, teacher=lambda: smollm2_teacher)
    gen = TeacherGenerated(TeacherGeneratedParams(group=4, prefix=2, top_p=0.95), ctx)
    x = gen.sample(range(4), 0)
    full = smollm2_teacher.logits(Inputs(x.lengths, ids=x.ids), "all")
    assert x.logits.shape == full.shape == (4, 12, 49152)
    # measured here: 5e-5 apart at most (logits up to 33), float16 storage rounds by 1.6e-2 there
    torch.testing.assert_close(x.logits, full, atol=5e-4, rtol=0)
    torch.testing.assert_close(torch.log_softmax(x.logits, -1), torch.log_softmax(full, -1), atol=5e-4, rtol=0)


def test_norm_matched_scale(tiny_spec):
    nm, builder = build(tiny_spec, {"name": "norm-matched"}, 6, teacher={"vocab_size": 256, "hidden_size": 64})
    E = builder.teacher.embedding_weight().detach().float()
    x = nm.sample(range(20), 0).soft
    got = (x @ E).norm(dim=-1).mean().item()
    want = E.norm(dim=1).mean().item()
    assert abs(got / want - 1) < 0.05
    double, _ = build(tiny_spec, {"name": "norm-matched", "ratio": 2.0}, 6, teacher={"vocab_size": 256, "hidden_size": 64})
    assert abs((double.sample(range(20), 0).soft @ E).norm(dim=-1).mean().item() / want - 2) < 0.1


def test_text_windows_are_real_text(tiny_spec):
    tw, builder = build(tiny_spec, {"name": "text-windows"}, 12, teacher={"vocab_size": 256})
    from kdcore.texts import read_text

    text = read_text("builtin:reference.txt", builder.spec.base_dir)
    tokens = bytes(builder.teacher.tokenizer().encode(text))
    x = tw.sample(range(30), 0)
    starts = set()
    for row in x.ids.tolist():
        window = bytes(row)
        assert window in tokens
        starts.add(tokens.find(window))
    assert len(starts) > 20  # windows from all over the text


def test_zipf_ids_follow_the_law_over_the_id_order(tiny_spec):
    """p(id) ~ (id - low + shift)^-exponent: in 20,000 draws over a vocabulary of 64, each id's share
    is within sampling error of the law's; ids below `low` are never drawn."""
    law = {"name": "zipf-ids", "exponent": 1.5, "shift": 2.0, "low": 4}
    sampler, _ = build(tiny_spec, law, max_seq_len=16)
    ids = sampler.sample(list(range(1250)), seed=0).ids.flatten()
    assert int(ids.min()) >= 4 and int(ids.max()) < 64
    ranks = torch.arange(60, dtype=torch.float64)
    expected = (ranks + 2.0) ** -1.5
    expected /= expected.sum()
    share = torch.bincount(ids - 4, minlength=60).double() / len(ids)
    error = (expected * (1 - expected) / len(ids)).sqrt()
    assert torch.all((share - expected).abs() <= 5 * error + 1e-4)
    assert share[0] > 3 * share[5] > 0  # the head: common pieces are common


def bos_distribution(teacher, bos: int, temperature: float, low: int) -> torch.Tensor:
    """The teacher's next-token probabilities after [bos], computed here from its own forward over
    "all" positions: softmax(logits / temperature), ids below low zeroed and the rest renormalised."""
    logits = teacher.logits(Inputs(torch.tensor([1]), ids=torch.tensor([[bos]])), "all")[0, 0].double()
    p = torch.softmax(logits / temperature, -1)
    p[:low] = 0
    return p / p.sum()


def entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def test_teacher_unigram_ids_follow_the_teachers_distribution_after_bos(tiny_spec):
    """In 20,000 draws over a vocabulary of 64, each id's share is within sampling error of the
    teacher's softmax after its BOS token; ids below `low` are never drawn; a higher temperature
    flattens the draws; a sample is a pure function of (seed, index). The tiny random teacher's
    logits are nearly flat: temperature 0.1 sharpens them tenfold, so the law is far from uniform."""
    cfg = {"name": "teacher-unigram-ids", "low": 4, "temperature": 0.1}
    sampler, builder = build(tiny_spec, cfg, max_seq_len=16)
    teacher = builder.teacher
    assert teacher.bos_id == 1  # LlamaConfig's BOS id: the tiny teacher has one
    expected = bos_distribution(teacher, 1, 0.1, 4)
    assert expected.max() > 10 * expected[4:].min()  # far from flat: a real test
    ids = sampler.sample(list(range(1250)), seed=0).ids.flatten()
    assert int(ids.min()) >= 4 and int(ids.max()) < 64
    share = torch.bincount(ids, minlength=64).double() / len(ids)
    error = (expected * (1 - expected) / len(ids)).sqrt()
    assert torch.all((share - expected).abs() <= 5 * error + 1e-4)
    uniform = torch.full((60,), 1 / 60, dtype=torch.float64)  # what a wrong sampler (random ids) would give
    assert (share[4:] - uniform).abs().max() > 10 * error.max()
    torch.testing.assert_close(sampler.probs, expected, rtol=1e-6, atol=1e-9)

    hot, _ = build(tiny_spec, {**cfg, "temperature": 0.3}, max_seq_len=16)
    flat = torch.bincount(hot.sample(list(range(1250)), seed=0).ids.flatten(), minlength=64).double()
    assert entropy(flat / flat.sum()) > entropy(share) + 0.2
    torch.testing.assert_close(hot.probs, bos_distribution(teacher, 1, 0.3, 4), rtol=1e-6, atol=1e-9)

    again, _ = build(tiny_spec, cfg, max_seq_len=16)  # another instance, one sample alone
    assert torch.equal(again.sample([7], seed=3).ids[0], sampler.sample([5, 7], seed=3).ids[1])
    assert not torch.equal(sampler.sample([7], seed=3).ids, sampler.sample([8], seed=3).ids)


def test_teacher_unigram_ids_start_from_the_named_token_and_refuse_what_does_not_fit(tiny_spec, monkeypatch):
    other, builder = build(tiny_spec, {"name": "teacher-unigram-ids", "bos": 9})
    torch.testing.assert_close(other.probs, bos_distribution(builder.teacher, 9, 1.0, 0), rtol=1e-6, atol=1e-9)
    with pytest.raises(KDError) as e:
        build(tiny_spec, {"name": "teacher-unigram-ids", "low": 64})
    assert "datasets.noise.sampler.low: 64 is past the teacher's vocabulary (64)" in str(e.value)
    with pytest.raises(KDError) as e:
        build(tiny_spec, {"name": "teacher-unigram-ids", "temperature": 0})
    assert "temperature" in str(e.value)
    from kd_plugins import teachers

    make_config = teachers.tiny_llama_config
    monkeypatch.setattr(teachers, "tiny_llama_config", lambda p: make_config(p).__class__(
        **{**make_config(p).to_dict(), "bos_token_id": None}))
    with pytest.raises(KDError) as e:
        build(tiny_spec, {"name": "teacher-unigram-ids"})
    assert "datasets.noise.sampler.bos: the teacher names no BOS token" in str(e.value)
    named, _ = build(tiny_spec, {"name": "teacher-unigram-ids", "bos": 1})  # named, it is used
    assert named.sample([0], seed=0).ids.shape == (1, 6)


def test_text_windows_read_every_window_once_before_any_repeats(tiny_spec):
    """A pass over the text holds each of its whole windows once; each of the next S - 1 passes
    starts at an offset none before it in the run took (its own order too), and every sample is a
    pure function of (seed, index)."""
    sampler, _ = build(tiny_spec, {"name": "text-windows", "text": "builtin:corpus_excerpt.txt"}, 12,
                       teacher={"vocab_size": 256})
    n, S = sampler.per_pass, 12
    assert n * S <= len(sampler.tokens) < (n + 2) * S
    first = [sampler.start(0, i) for i in range(n)]
    assert len(set(first)) == n and len({s % S for s in first}) == 1  # whole windows, one offset
    assert all(0 <= s and s + S <= len(sampler.tokens) for s in first)
    second = [sampler.start(0, n + i) for i in range(n)]
    assert len(set(second)) == n and second != first
    # a run of S passes takes every offset once: no start is read twice within it
    for run in (0, 1):
        offsets = [sampler.start(0, (run * S + c) * n) % S for c in range(S)]
        assert sorted(offsets) == list(range(S)), offsets
        starts = [sampler.start(0, (run * S) * n + i) for i in range(S * n)]
        assert len(set(starts)) == S * n
    x = sampler.sample([n + 5, 3], seed=0)
    assert torch.equal(x.ids[1], sampler.tokens[first[3] : first[3] + S])
    assert torch.equal(x.ids[0], sampler.tokens[second[5] : second[5] + S])
