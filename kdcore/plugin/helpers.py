"""Helpers a plugin needs, public through `kdcore.api`: the base of float-row samplers (drawn in
place, spread over threads), and the two steps every distillation loss takes (the valid positions
as rows; teacher and student over the same buckets, top-k targets included)."""

from __future__ import annotations

from typing import Sequence

import torch

from kdcore.plugin.contracts import BuildContext
from kdcore.plugin.data import Inputs, Targets, generator
from kdcore.system.threads import spread


class SoftSampler:
    """Base for samplers of float vocab rows: subclasses draw one (S, V) row block per sample.

    Override `draw(g)` (return the block), or `fill(g, out)` to write it in place into the batch
    tensor: a dense (S, V) block is megabytes, and an allocation plus a copy per sample costs as much
    as drawing it.
    """

    produces = "soft"
    deterministic = "pure"

    def __init__(self, params, ctx: BuildContext):
        self.p, self.V, self.S = params, ctx.vocab_size, ctx.max_seq_len

    def draw(self, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def fill(self, g: torch.Generator, out: torch.Tensor) -> None:
        out.copy_(self.draw(g))

    def sample(self, indices: Sequence[int], seed: int) -> Inputs:
        rows = torch.empty(len(indices), self.S, self.V)
        spread(lambda r: self.fill(generator(seed, int(indices[r])), rows[r]), len(indices))
        return Inputs(lengths=torch.full((len(indices),), self.S, dtype=torch.long), soft=rows)


# Floor for the teacher's tail mass: float16 values can make the kept mass round to >= 1.
TAIL_FLOOR = 1e-10


def valid_rows(student_logits: torch.Tensor, targets: Targets, mask: torch.Tensor | None):
    """The N valid positions as rows: student logits (N, V) float32 and detached float32 targets."""
    lead = student_logits.shape[:-1]
    if targets.is_topk:
        if targets.values.shape[:-1] != lead or targets.logsumexp.shape != lead:
            raise ValueError(
                f"top-k targets {tuple(targets.values.shape)} do not match student logits "
                f"{tuple(student_logits.shape)}"
            )
    elif targets.logits.shape != student_logits.shape:
        raise ValueError(
            f"target logits {tuple(targets.logits.shape)} do not match student logits "
            f"{tuple(student_logits.shape)}"
        )
    if mask is None:
        rows = lambda t: t.reshape(-1, *t.shape[len(lead) :])  # noqa: E731
    elif student_logits.dim() == 3 and mask.shape == lead:
        rows = lambda t: t[mask.bool()]  # noqa: E731
    else:
        raise ValueError(
            f"mask {tuple(mask.shape)} needs (B, S, V) student logits with the same (B, S), "
            f"got {tuple(student_logits.shape)}"
        )
    floats = lambda t: None if t is None else rows(t).detach().float()  # noqa: E731
    indices = None if targets.indices is None else rows(targets.indices).long()
    target_rows = Targets(floats(targets.logits), floats(targets.values), indices, floats(targets.logsumexp))
    return rows(student_logits).float(), target_rows


def bucket_log_probs(student: torch.Tensor, targets: Targets, temperature: float = 1.0):
    """Log probabilities (teacher, student) over the same buckets, each (N, buckets).

    Dense: the V tokens, both softened by `temperature`. Top-k: the k kept tokens, then one tail
    bucket with the remaining mass when k < V. The student's tail is an exact logsumexp over its
    non-kept logits rather than 1 - sum(kept), which loses precision when the tail is small; it
    costs one (N, V) copy of the student logits.
    """
    if not targets.is_topk:
        if temperature != 1.0:  # (x / 1 is x: skip two passes over (N, V))
            return torch.log_softmax(targets.logits / temperature, -1), torch.log_softmax(student / temperature, -1)
        return torch.log_softmax(targets.logits, -1), torch.log_softmax(student, -1)
    if temperature != 1.0:
        # The tempered logsumexp over all V cannot be recovered from k values and the plain one.
        raise ValueError(
            f"temperature {temperature} needs dense targets: with top-k targets the tempered "
            "normaliser is unknown; use temperature = 1 or store dense logits"
        )
    student_lse = torch.logsumexp(student, -1, keepdim=True)
    log_p = targets.kept_log_probs()
    log_q = student.gather(-1, targets.indices) - student_lse
    if targets.indices.shape[-1] == student.shape[-1]:
        return log_p, log_q
    p_tail = -torch.expm1(torch.logsumexp(log_p, -1, keepdim=True))
    log_p_tail = p_tail.clamp_min(TAIL_FLOOR).log()
    tail_logits = student.scatter(-1, targets.indices, float("-inf"))
    log_q_tail = torch.logsumexp(tail_logits, -1, keepdim=True) - student_lse
    return torch.cat([log_p, log_p_tail], -1), torch.cat([log_q, log_q_tail], -1)
