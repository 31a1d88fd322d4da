"""The evaluation metrics, each defined once: how it is computed (`Accumulator`, and the columns
derived from a row), its header and format in every table (`kd eval`, report.md, `kd compare`, `kd
study`), whether figures plot it and whether the metrics log records it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    fmt: str
    shown: bool = True  # a column of every table
    plotted: bool = False  # a panel of the bar charts
    derived: bool = False  # computed from a row's other results (`with_derived_columns`), not logged


METRICS = (
    Metric("top1_agreement", "top-1 agreement", "{:.3f}", plotted=True),
    Metric("top1_agreement_in_context", "top-1, 2+ token context", "{:.3f}", derived=True),
    Metric("top5_overlap", "top-5 overlap", "{:.3f}", plotted=True),
    Metric("kl_teacher_student", "KL(teacher‖student)", "{:.3f}", plotted=True),
    Metric("kl_in_context", "KL, 2+ token context", "{:.3f}", derived=True),
    Metric("perplexity", "perplexity", "{:.1f}"),
    Metric("ppl_vs_unigram", "ppl / unigram", "{:.2f}", derived=True),
    Metric("ppl_vs_unigram_in_context", "ppl / unigram, 2+ token context", "{:.2f}", derived=True),
    Metric("distinct_predicted", "distinct predicted", "{}", plotted=True),
    Metric("next_token_accuracy", "next-token accuracy", "{:.3f}", shown=False),
)
SHOWN = [m for m in METRICS if m.shown]
PLOTTED = [m.key for m in METRICS if m.plotted]
LOGGED = [m.key for m in METRICS if not m.derived]


class Accumulator:
    """Streams metrics of one predictor against the teacher over batches of positions; given each
    position's index in its window, also agreement, KL and the real token's NLL per index."""

    PER_POSITION = ("agreement", "kl", "nll")

    def __init__(self):
        self.n = 0
        self.sums = {"top1_agreement": 0.0, "top5_overlap": 0.0, "kl_teacher_student": 0.0, "nll": 0.0, "next_token_accuracy": 0.0}
        self.predicted: set[int] = set()
        self.at_position = torch.zeros(0, dtype=torch.float64)  # positions scored per index
        self.by_position = {k: torch.zeros(0, dtype=torch.float64) for k in self.PER_POSITION}  # sums per index

    def add(self, logits: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, position: torch.Tensor | None = None):
        """logits, teacher: (n, V) float; target: (n,) next tokens; position: (n,) index in window."""
        logq = torch.log_softmax(logits.float(), -1)
        logp = torch.log_softmax(teacher.float(), -1)
        s_top, t_top = logq.argmax(-1), logp.argmax(-1)
        agree = (s_top == t_top).float()
        s5, t5 = logq.topk(5, -1).indices, logp.topk(5, -1).indices
        overlap = (s5[:, :, None] == t5[:, None, :]).any(-1).float().mean(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        nll = -logq.gather(1, target[:, None]).squeeze(1)
        self.sums["top1_agreement"] += agree.sum().item()
        self.sums["top5_overlap"] += overlap.sum().item()
        self.sums["kl_teacher_student"] += kl.sum().item()
        self.sums["nll"] += nll.sum().item()
        self.sums["next_token_accuracy"] += (s_top == target).float().sum().item()
        self.predicted.update(s_top.tolist())
        self.n += len(target)
        if position is not None:
            self.at_position = _add_at(self.at_position, position, torch.ones_like(agree))
            for key, values in zip(self.PER_POSITION, (agree, kl, nll)):
                self.by_position[key] = _add_at(self.by_position[key], position, values)

    def result(self) -> dict:
        n = max(1, self.n)
        out = {k: v / n for k, v in self.sums.items() if k != "nll"}
        out["perplexity"] = math.exp(self.sums["nll"] / n)
        out["distinct_predicted"] = len(self.predicted)
        out["positions_scored"] = self.n
        if len(self.at_position):
            for key, sums in self.by_position.items():
                out[f"{key}_by_position"] = (sums / self.at_position).tolist()
        return out


def _add_at(sums: torch.Tensor, position: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`sums` (per window index, float64) with `values` added at their `position`s, grown to fit."""
    added = torch.bincount(position.cpu(), weights=values.detach().cpu().double())
    if len(added) > len(sums):
        sums = torch.cat([sums, sums.new_zeros(len(added) - len(sums))])
    sums[: len(added)] += added
    return sums


def with_derived_columns(rows: list[dict], unigram: dict) -> list[dict]:
    """Each row with the columns computed from its results: perplexity divided by `unigram`'s (the
    unigram model's results on the same text; below 1: a better language model), and, for a row
    scored at every position, top-1 agreement, KL and perplexity / unigram past a window's first
    position. There the context is one token, where a teacher may answer nearly the same whatever
    the token (SmolLM2 does), which a student learns from any data whose windows start at ordinary
    tokens. Windows are whole, so every position counts the same."""
    def past_first(by: list[float] | None) -> float | None:
        return sum(by[1:]) / len(by[1:]) if by and len(by) > 1 else None

    def derived(r: dict) -> dict:
        out = {"ppl_vs_unigram": r["perplexity"] / unigram["perplexity"]}
        in_context = {"top1_agreement_in_context": past_first(r.get("agreement_by_position")),
                      "kl_in_context": past_first(r.get("kl_by_position"))}
        nll, unigram_nll = past_first(r.get("nll_by_position")), past_first(unigram.get("nll_by_position"))
        if nll is not None and unigram_nll is not None:
            in_context["ppl_vs_unigram_in_context"] = math.exp(nll - unigram_nll)
        return {**out, **{k: v for k, v in in_context.items() if v is not None}}
    return [{**r, **derived(r)} for r in rows]


def teacher_row(teacher: dict) -> dict:
    """The teacher as a row: it agrees with itself."""
    return {"label": "teacher", "top1_agreement": 1.0, "top1_agreement_in_context": 1.0, "top5_overlap": 1.0,
            "kl_teacher_student": 0.0, "kl_in_context": 0.0,
            "perplexity": teacher["perplexity"], "distinct_predicted": teacher["distinct_predicted"],
            **({"nll_by_position": teacher["nll_by_position"]} if "nll_by_position" in teacher else {})}
