"""Distillation losses: the student's logits against the teacher's targets, dense or top-k.

Every loss is called as `loss(student_logits, targets, mask) -> scalar`. It keeps the valid
positions only (all of them, or those where `mask` is True), computes one value per position in
float32 and averages those values, so padding never contributes. Targets are detached: gradients
reach the student logits only.

Top-k targets keep the k largest teacher logits and the logsumexp over all V, so the teacher's kept
probabilities are exact. How each loss uses them:
  mse         squared error over the kept entries only (student logits gathered at the indices).
  ce-argmax   exact: the teacher's argmax is always kept.
  sld-cosine  cosine over the kept entries only; see `SLDCosine`.
  kl, jsd, skew-kl
              distributions over k + 1 buckets: the kept tokens plus one "tail" bucket holding the
              rest of the mass, for teacher and student alike. Exact when k == V (no tail bucket).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdcore.api import TAIL_FLOOR, BuildContext, ParamError, Params, Targets, bucket_log_probs, valid_rows  # noqa: F401

def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row; buckets with p = 0 add 0 even where log p is -inf (clamped to the
    smallest finite value, which p = 0 then multiplies: one pass, where a mask took two)."""
    return (log_p.exp() * (log_p.clamp_min(torch.finfo(log_p.dtype).min) - log_q)).sum(-1)


def shuffle_partner(n: int, device) -> torch.Tensor:
    """A random permutation of n rows with no fixed point (one random cycle), from the global RNG.

    A row paired with itself would give a zero difference vector and no defined cosine.
    """
    order = torch.randperm(n)
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(-1)
    return partner.to(device)


def values_at(indices: torch.Tensor, source_indices: torch.Tensor, source_values: torch.Tensor, fill):
    """Per row, the source's value at each of `indices`, or `fill` (N, 1) where the source lacks it."""
    sorted_indices, order = source_indices.sort(-1)
    sorted_values = source_values.gather(-1, order)
    pos = torch.searchsorted(sorted_indices, indices).clamp_max(sorted_indices.shape[-1] - 1)
    found = sorted_indices.gather(-1, pos) == indices
    return torch.where(found, sorted_values.gather(-1, pos), fill)


# --- losses ---------------------------------------------------------------------------------------


class MSEParams(Params):
    """Mean squared error on logits (the original's default loss)."""


class MSE:
    """Mean squared error on logits; with top-k targets, over the kept entries only."""

    def __init__(self, params: MSEParams, ctx: BuildContext | None = None):
        self.params = params

    def __call__(self, student_logits, targets: Targets, mask=None) -> torch.Tensor:
        student, targets = valid_rows(student_logits, targets, mask)
        if targets.is_topk:
            return F.mse_loss(student.gather(-1, targets.indices), targets.values)
        return F.mse_loss(student, targets.logits)


class CEArgmaxParams(Params):
    """Cross-entropy against the teacher's argmax token (the original's --CE)."""


class CEArgmax:
    """Cross-entropy of the student against the teacher's argmax token (the original's --CE)."""

    def __init__(self, params: CEArgmaxParams, ctx: BuildContext | None = None):
        self.params = params

    def __call__(self, student_logits, targets: Targets, mask=None) -> torch.Tensor:
        student, targets = valid_rows(student_logits, targets, mask)
        return F.cross_entropy(student, targets.argmax())


class SLDCosineParams(Params):
    """Shuffled-label-difference cosine distance (the original's --SLD); shuffles with the global RNG."""


class SLDCosine:
    """Shuffled-label-difference cosine (the original's --SLD): 1 - cos(s - t', t - t'), averaged.

    t' is the target of another valid position of the batch: the rows are shuffled by a random
    permutation with no fixed point, drawn from torch's global RNG (the trainer seeds it). With a
    single valid position there is nothing to contrast and the loss is 0.
    Top-k: vectors over the row's own kept indices; the partner's logit at an index it did not keep is
    unknown and is taken as its smallest kept value (an upper bound on any logit it dropped).
    """

    def __init__(self, params: SLDCosineParams, ctx: BuildContext | None = None):
        self.params = params

    def __call__(self, student_logits, targets: Targets, mask=None) -> torch.Tensor:
        student, targets = valid_rows(student_logits, targets, mask)
        n = student.shape[0]
        if n < 2:
            return student.sum() * 0.0
        partner = shuffle_partner(n, student.device)
        if targets.is_topk:
            student = student.gather(-1, targets.indices)
            teacher = targets.values
            smallest = teacher.min(-1, keepdim=True).values
            shuffled = values_at(targets.indices, targets.indices[partner], teacher[partner], smallest[partner])
        else:
            teacher = targets.logits
            shuffled = teacher[partner]
        cos = F.cosine_similarity(student - shuffled, teacher - shuffled, dim=-1)
        return (1.0 - cos).mean()


class KLParams(Params):
    """KL divergence between teacher and student distributions, times T^2 (Hinton et al.)."""

    temperature: float = Field(1.0, gt=0, description="softens both distributions; dense targets only if != 1")
    direction: Literal["forward", "reverse"] = Field(
        "forward", description="forward: KL(teacher || student); reverse: KL(student || teacher)"
    )


class KL:
    """KL divergence, forward KL(teacher || student) or reverse, scaled by T^2; top-k adds a tail bucket."""

    def __init__(self, params: KLParams, ctx: BuildContext | None = None):
        if ctx is not None and ctx.logits == "topk" and params.temperature != 1.0:
            raise ParamError("temperature", "must be 1 with top-k targets (the tempered tail mass is not "
                             "recoverable from k values); use logits = 'dense' to distil at a temperature")
        self.params = params

    def __call__(self, student_logits, targets: Targets, mask=None) -> torch.Tensor:
        student, targets = valid_rows(student_logits, targets, mask)
        t = self.params.temperature
        log_p, log_q = bucket_log_probs(student, targets, t)
        if self.params.direction == "reverse":
            log_p, log_q = log_q, log_p
        return kl_rows(log_p, log_q).mean() * t * t


class JSDParams(Params):
    """Jensen-Shannon divergence between teacher and student distributions."""


class JSD:
    """Jensen-Shannon divergence (natural log, at most log 2); top-k adds a tail bucket."""

    def __init__(self, params: JSDParams, ctx: BuildContext | None = None):
        self.params = params

    def __call__(self, student_logits, targets: Targets, mask=None) -> torch.Tensor:
        student, targets = valid_rows(student_logits, targets, mask)
        log_p, log_q = bucket_log_probs(student, targets)
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        return (0.5 * kl_rows(log_p, log_m) + 0.5 * kl_rows(log_q, log_m)).mean()


class SkewKLParams(Params):
    """Skew KL: KL(teacher || alpha * teacher + (1 - alpha) * student)."""

    alpha: float = Field(0.1, gt=0, lt=1, description="teacher's share of the mixture")


class SkewKL:
    """Skew KL, KL(p || alpha p + (1 - alpha) q): bounded by -log(alpha); top-k adds a tail bucket."""

    def __init__(self, params: SkewKLParams, ctx: BuildContext | None = None):
        self.params = params

    def __call__(self, student_logits, targets: Targets, mask=None) -> torch.Tensor:
        student, targets = valid_rows(student_logits, targets, mask)
        log_p, log_q = bucket_log_probs(student, targets)
        a = self.params.alpha
        log_mix = torch.logaddexp(log_p + math.log(a), log_q + math.log(1.0 - a))
        return kl_rows(log_p, log_mix).mean()


def register_all(register) -> None:
    register("mse", MSE, MSEParams)
    register("ce-argmax", CEArgmax, CEArgmaxParams)
    register("sld-cosine", SLDCosine, SLDCosineParams)
    register("kl", KL, KLParams)
    register("jsd", JSD, JSDParams)
    register("skew-kl", SkewKL, SkewKLParams)
