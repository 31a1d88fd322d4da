"""The built-in losses against values worked out by hand, in float64 Python loops over tiny examples."""

import math

import pydantic
import pytest
import torch

from kd_plugins import losses
from kdcore.api import Targets

STUDENT = [[1.0, 2.0, 0.5, -1.0, 0.0], [0.3, -0.2, 1.5, 2.0, -1.0]]
TEACHER = [[2.0, 1.0, 0.0, -0.5, 0.5], [1.2, 0.0, 2.5, 1.0, -2.0]]  # no ties: top-k is unambiguous

PARAMS = {
    "mse": losses.MSEParams,
    "ce-argmax": losses.CEArgmaxParams,
    "sld-cosine": losses.SLDCosineParams,
    "kl": losses.KLParams,
    "jsd": losses.JSDParams,
    "skew-kl": losses.SkewKLParams,
}
DIVERGENCES = [("kl", {}), ("kl", {"direction": "reverse"}), ("jsd", {}), ("skew-kl", {})]


def make(name, **params):
    registered = {}
    losses.register_all(lambda n, cls, model: registered.__setitem__(n, (cls, model)))
    cls, model = registered[name]
    return cls(model(**params), None)


def student_tensor(rows=STUDENT):
    return torch.tensor(rows, dtype=torch.float32, requires_grad=True)


def dense(rows=TEACHER):
    return Targets(logits=torch.tensor(rows, dtype=torch.float32))


# --- hand computations (plain Python, float64) ----------------------------------------------------


def softmax(row, temperature=1.0):
    exps = [math.exp(x / temperature) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def jsd(p, q):
    m = [(pi + qi) / 2 for pi, qi in zip(p, q)]
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def skew_kl(p, q, alpha):
    return kl(p, [alpha * pi + (1 - alpha) * qi for pi, qi in zip(p, q)])


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def mean(values):
    return sum(values) / len(values)


def hand_dense(name, **params):
    """The loss over the STUDENT/TEACHER rows, from the definitions."""
    pairs = list(zip(STUDENT, TEACHER))
    if name == "mse":
        return mean([(x - y) ** 2 for s, t in pairs for x, y in zip(s, t)])
    if name == "ce-argmax":
        return mean([-math.log(softmax(s)[t.index(max(t))]) for s, t in pairs])
    if name == "sld-cosine":  # two rows: the only shuffle without a fixed point swaps them
        shuffled = [TEACHER[1], TEACHER[0]]
        return mean(
            [
                1 - cosine([x - z for x, z in zip(s, u)], [y - z for y, z in zip(t, u)])
                for (s, t), u in zip(pairs, shuffled)
            ]
        )
    if name == "kl":
        temp = params.get("temperature", 1.0)
        p_q = [(softmax(t, temp), softmax(s, temp)) for s, t in pairs]
        if params.get("direction") == "reverse":
            return mean([kl(q, p) for p, q in p_q]) * temp**2
        return mean([kl(p, q) for p, q in p_q]) * temp**2
    if name == "jsd":
        return mean([jsd(softmax(t), softmax(s)) for s, t in pairs])
    if name == "skew-kl":
        return mean([skew_kl(softmax(t), softmax(s), params.get("alpha", 0.1)) for s, t in pairs])
    raise KeyError(name)


def buckets(probs, kept):
    """The kept tokens' probabilities, then the rest of the mass as one tail bucket."""
    kept_probs = [probs[i] for i in kept]
    return kept_probs + [1 - sum(kept_probs)]


# --- dense targets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params",
    [
        ("mse", {}),
        ("ce-argmax", {}),
        ("sld-cosine", {}),
        ("kl", {}),
        ("kl", {"temperature": 2.0}),
        ("kl", {"direction": "reverse"}),
        ("kl", {"direction": "reverse", "temperature": 0.5}),
        ("jsd", {}),
        ("skew-kl", {}),
        ("skew-kl", {"alpha": 0.7}),
    ],
)
def test_dense_matches_hand_value(name, params):
    value = make(name, **params)(student_tensor(), dense(), None)
    assert value.shape == ()
    assert value.item() == pytest.approx(hand_dense(name, **params), rel=1e-5, abs=1e-6)


def test_kl_directions_differ_and_match_hand_values():
    forward = make("kl")(student_tensor(), dense(), None).item()
    reverse = make("kl", direction="reverse")(student_tensor(), dense(), None).item()
    assert forward == pytest.approx(hand_dense("kl"), rel=1e-5)
    assert reverse == pytest.approx(hand_dense("kl", direction="reverse"), rel=1e-5)
    assert abs(forward - reverse) > 1e-2


def test_float16_targets_are_upcast():
    half = Targets(logits=torch.tensor(TEACHER, dtype=torch.float16))
    upcast = Targets(logits=half.logits.float())
    for name in PARAMS:
        torch.manual_seed(0)
        a = make(name)(student_tensor(), half, None)
        torch.manual_seed(0)
        b = make(name)(student_tensor(), upcast, None)
        assert a.dtype == torch.float32
        assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("name, params", [("mse", {})] + DIVERGENCES)
def test_zero_when_student_equals_teacher(name, params):
    loss = make(name, **params)
    assert loss(student_tensor(TEACHER), dense(), None).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(student_tensor(), dense(), None).item() > 1e-3
    topk = Targets.topk_of(torch.tensor(TEACHER), 3)
    assert loss(student_tensor(TEACHER), topk, None).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(student_tensor(), topk, None).item() > 1e-3


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("k", [None, 2, 5])
def test_gradients_reach_student_and_are_finite(name, k):
    student = student_tensor()
    teacher = torch.tensor(TEACHER, requires_grad=True)
    targets = Targets(logits=teacher) if k is None else Targets.topk_of(teacher, k)
    make(name)(student, targets, None).backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


# --- top-k targets --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, params", [("ce-argmax", {}), ("sld-cosine", {})] + DIVERGENCES)
def test_topk_with_all_tokens_equals_dense(name, params):
    loss = make(name, **params)
    torch.manual_seed(3)
    full = loss(student_tensor(), Targets.topk_of(torch.tensor(TEACHER), 5), None)
    torch.manual_seed(3)
    assert full.item() == pytest.approx(loss(student_tensor(), dense(), None).item(), rel=1e-5)


def test_topk_mse_is_over_kept_entries():
    targets = Targets.topk_of(torch.tensor(TEACHER), 2)
    kept = [[0, 1], [2, 0]]
    hand = mean([(STUDENT[r][i] - TEACHER[r][i]) ** 2 for r in range(2) for i in kept[r]])
    assert make("mse")(student_tensor(), targets, None).item() == pytest.approx(hand, rel=1e-6)
    full = Targets.topk_of(torch.tensor(TEACHER), 5)
    assert make("mse")(student_tensor(), full, None).item() == pytest.approx(hand_dense("mse"), rel=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_tail_bucket_matches_hand_values(k):
    targets = Targets.topk_of(torch.tensor(TEACHER), k)
    kept = [sorted(range(5), key=lambda i: -row[i])[:k] for row in TEACHER]
    p = [buckets(softmax(t), kept_row) for t, kept_row in zip(TEACHER, kept)]
    q = [buckets(softmax(s), kept_row) for s, kept_row in zip(STUDENT, kept)]
    expected = {
        "kl": mean([kl(a, b) for a, b in zip(p, q)]),
        "reverse": mean([kl(b, a) for a, b in zip(p, q)]),
        "jsd": mean([jsd(a, b) for a, b in zip(p, q)]),
        "skew-kl": mean([skew_kl(a, b, 0.1) for a, b in zip(p, q)]),
    }
    assert make("kl")(student_tensor(), targets, None).item() == pytest.approx(expected["kl"], rel=1e-5)
    reverse = make("kl", direction="reverse")(student_tensor(), targets, None).item()
    assert reverse == pytest.approx(expected["reverse"], rel=1e-5)
    assert make("jsd")(student_tensor(), targets, None).item() == pytest.approx(expected["jsd"], rel=1e-5)
    skew = make("skew-kl")(student_tensor(), targets, None).item()
    assert skew == pytest.approx(expected["skew-kl"], rel=1e-5)


def test_topk_ce_argmax_is_exact():
    targets = Targets.topk_of(torch.tensor(TEACHER), 1)
    assert make("ce-argmax")(student_tensor(), targets, None).item() == pytest.approx(
        hand_dense("ce-argmax"), rel=1e-6
    )


def test_topk_sld_uses_partner_values_or_its_smallest_kept():
    # Row 0 keeps {0: 2.0, 1: 1.0} and row 1 {2: 2.5, 0: 1.2}: they share index 0 only.
    targets = Targets.topk_of(torch.tensor(TEACHER), 2)
    kept = targets.indices.tolist()
    values = targets.values.tolist()
    partner_value = [dict(zip(kept[1], values[1])), dict(zip(kept[0], values[0]))]
    terms = []
    for r in range(2):
        shuffled = [partner_value[r].get(i, min(partner_value[r].values())) for i in kept[r]]
        student = [STUDENT[r][i] for i in kept[r]]
        terms.append(
            1
            - cosine(
                [s - u for s, u in zip(student, shuffled)], [t - u for t, u in zip(values[r], shuffled)]
            )
        )
    assert make("sld-cosine")(student_tensor(), targets, None).item() == pytest.approx(mean(terms), rel=1e-5)


def test_topk_rejects_temperature():
    targets = Targets.topk_of(torch.tensor(TEACHER), 2)
    with pytest.raises(ValueError, match="temperature"):
        make("kl", temperature=2.0)(student_tensor(), targets, None)


# --- shuffling ------------------------------------------------------------------------------------


def test_sld_shuffle_has_no_fixed_point_and_follows_the_global_seed():
    for n in (2, 3, 7):
        torch.manual_seed(n)
        first = losses.shuffle_partner(n, "cpu")
        torch.manual_seed(n)
        assert torch.equal(first, losses.shuffle_partner(n, "cpu"))
        assert sorted(first.tolist()) == list(range(n))
        assert (first != torch.arange(n)).all()
    student = student_tensor()
    one = make("sld-cosine")(student[:1], Targets(logits=torch.tensor(TEACHER[:1])), None)
    assert one.item() == 0.0


# --- positions "all" and masking ------------------------------------------------------------------


def sequences(garbage: float):
    """(2, 3, 5) student logits and teacher logits; sample 0 has 3 valid positions, sample 1 has 1."""
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 5, generator=gen)
    teacher = torch.randn(2, 3, 5, generator=gen)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    student[~mask] = garbage
    teacher[~mask] = -garbage
    return student.requires_grad_(), teacher, mask


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("k", [None, 2])
def test_padding_does_not_change_the_loss(name, k):
    loss = make(name)
    values, grads = [], []
    for garbage in (0.0, 1e4, float("nan")):
        student, teacher, mask = sequences(garbage)
        targets = Targets(logits=teacher) if k is None else Targets.topk_of(teacher, k)
        torch.manual_seed(0)
        value = loss(student, targets, mask)
        value.backward()
        values.append(value.item())
        grads.append(student.grad)
    for value, grad in zip(values[1:], grads[1:]):  # 1e4 and NaN padding vs zeros
        assert value == pytest.approx(values[0], rel=1e-6)
        assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
        assert torch.allclose(grad, grads[0])

    # the same as the valid positions given as (N, V) rows
    student, teacher, mask = sequences(1e4)
    rows = Targets(logits=teacher[mask]) if k is None else Targets.topk_of(teacher[mask], k)
    torch.manual_seed(0)
    assert loss(student[mask], rows, None).item() == pytest.approx(values[1], rel=1e-6)


@pytest.mark.parametrize("name", PARAMS)
def test_all_positions_without_mask(name):
    student, teacher, _ = sequences(0.0)
    loss = make(name)
    torch.manual_seed(0)
    value = loss(student, Targets(logits=teacher), None)
    torch.manual_seed(0)
    flat = loss(student.reshape(6, 5), Targets(logits=teacher.reshape(6, 5)), None)
    assert value.item() == pytest.approx(flat.item(), rel=1e-6)


def test_shape_mismatches_are_errors():
    with pytest.raises(ValueError, match="mask"):
        make("mse")(student_tensor(), dense(), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not match"):
        make("kl")(student_tensor(), Targets(logits=torch.zeros(2, 4)), None)
    with pytest.raises(ValueError, match="do not match"):
        make("kl")(student_tensor(), Targets.topk_of(torch.zeros(3, 5), 2), None)


# --- parameters -----------------------------------------------------------------------------------


def test_register_all_registers_every_loss():
    registered = []
    losses.register_all(lambda name, cls, model: registered.append((name, cls, model)))
    assert {name: model for name, _, model in registered} == PARAMS
    for _, cls, model in registered:
        assert model.__doc__ and cls.__doc__
        assert model.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("name", PARAMS)
def test_params_forbid_unknown_keys(name):
    PARAMS[name]()  # every parameter has a default
    with pytest.raises(pydantic.ValidationError):
        PARAMS[name](weight=1.0)


@pytest.mark.parametrize(
    "model, bad",
    [
        (losses.KLParams, {"temperature": 0.0}),
        (losses.KLParams, {"temperature": -1.0}),
        (losses.KLParams, {"direction": "sideways"}),
        (losses.SkewKLParams, {"alpha": 0.0}),
        (losses.SkewKLParams, {"alpha": 1.0}),
        (losses.SkewKLParams, {"alpha": 1.5}),
        (losses.SkewKLParams, {"alpha": -0.1}),
    ],
)
def test_params_reject_bad_values(model, bad):
    with pytest.raises(pydantic.ValidationError):
        model(**bad)


def test_kl_rows_zero_probability_buckets_add_zero_with_finite_gradients():
    """p = 0 (log p = -inf, e.g. a top-k tail with no mass) contributes 0, not nan, forward and backward."""
    from kd_plugins.losses import kl_rows

    student = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
    log_q = torch.log_softmax(student, -1)
    log_p = torch.log(torch.tensor([[0.25, 0.75, 0.0]]))
    value = kl_rows(log_p, log_q)
    q = log_q.exp().detach()
    expected = 0.25 * math.log(0.25 / q[0, 0]) + 0.75 * math.log(0.75 / q[0, 1])
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.sum().backward()
    assert torch.isfinite(student.grad).all()
