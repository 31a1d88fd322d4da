"""Noise samplers: what goes into the teacher instead of training text.

Every sampler is a pure function of (dataset seed, sample index): each row draws from its own
generator seeded by `sample_seed(seed, index)`, so a sample is the same whatever the batch size,
process count or resume point. Base samplers fill all S positions; `length-mix` shortens them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from pydantic import Field, model_validator

from kdcore.components import BuildContext, Inputs, ParamError, Params, generator, sample_seed
from kdcore.spec import SamplerRef
from kdcore.threads import spread


def _full(n: int, S: int) -> torch.Tensor:
    return torch.full((n,), S, dtype=torch.long)


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
        return Inputs(lengths=_full(len(indices), self.S), soft=rows)


# --- the original's noise -------------------------------------------------------------------------


class UniformParams(Params):
    """Uniform floats in [low, high] at every vocab entry (the original's negativeten_ten: -10, 10)."""

    low: float = -10.0
    high: float = 10.0

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ParamError("low", f"must be < high (got {self.low:g} >= {self.high:g})")
        return self


class Uniform(SoftSampler):
    def fill(self, g, out):  # the same values as torch.rand(S, V) * (high - low) + low, in place
        torch.rand(self.S, self.V, generator=g, out=out).mul_(self.p.high - self.p.low).add_(self.p.low)


class RandomIdsParams(Params):
    """Random token ids, fed as one-hot rows (the original's index pre-training data)."""

    low: int = Field(0, ge=0, description="smallest id")
    high: int | None = Field(None, gt=0, description="one past the largest id (default: the vocabulary)")


class RandomIds:
    produces = "ids"
    deterministic = "pure"

    def __init__(self, params: RandomIdsParams, ctx: BuildContext):
        self.S, self.low = ctx.max_seq_len, params.low
        self.high = params.high or ctx.vocab_size
        if self.high > ctx.vocab_size:
            raise ParamError("high", f"{self.high} is past the teacher's vocabulary ({ctx.vocab_size})")
        if self.low >= self.high:
            raise ParamError("low", f"must be < high (got {self.low} >= {self.high})")

    def sample(self, indices, seed):
        ids = torch.stack([torch.randint(self.low, self.high, (self.S,), generator=generator(seed, int(i))) for i in indices])
        return Inputs(lengths=_full(len(indices), self.S), ids=ids)


class LengthMixParams(Params):
    """A fraction of samples at full length, the rest uniform in [min_len, S-1] (the original's full_percent)."""

    full_fraction: float = Field(0.5, ge=0, le=1)
    min_len: int = Field(1, ge=1)
    sampler: SamplerRef


class LengthMix:
    deterministic = "pure"

    def __init__(self, params: LengthMixParams, ctx: BuildContext):
        self.p, self.S = params, ctx.max_seq_len
        if params.min_len > self.S:
            raise ParamError("min_len", f"{params.min_len} is longer than max_seq_len {self.S}")
        self.inner = ctx.build("sampler", params.sampler)
        self.produces = self.inner.produces
        self.deterministic = self.inner.deterministic
        self.runs_teacher = getattr(self.inner, "runs_teacher", False)

    def lengths(self, indices, seed) -> torch.Tensor:
        out = []
        for i in indices:
            g = generator(seed, int(i), salt=1)
            full = torch.rand((), generator=g).item() < self.p.full_fraction
            short = int(torch.randint(self.p.min_len, max(self.p.min_len, self.S - 1) + 1, (), generator=g))
            out.append(self.S if full or self.p.min_len >= self.S else min(short, self.S - 1))
        return torch.tensor(out, dtype=torch.long)

    def sample(self, indices, seed):
        full = self.inner.sample(indices, seed)
        lengths = torch.minimum(self.lengths(indices, seed), full.lengths)
        valid = torch.arange(self.S)[None, :] < lengths[:, None]
        if full.ids is not None:
            return Inputs(lengths=lengths, ids=full.ids * valid)
        return Inputs(lengths=lengths, soft=full.soft.mul_(valid[..., None]))  # zero rows pad, as the original


# --- beyond the original: noise closer to real inputs ---------------------------------------------


class GaussianParams(Params):
    """Gaussian floats N(mean, std^2) at every vocab entry."""

    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class Gaussian(SoftSampler):
    def fill(self, g, out):
        torch.randn(self.S, self.V, generator=g, out=out).mul_(self.p.std).add_(self.p.mean)


class SoftIdsParams(Params):
    """Rows on the simplex: softmax(N(0,1) * scale); large scale -> one-hot, small -> uniform."""

    scale: float = Field(8.0, gt=0, description="noise scale before the softmax (1/temperature)")


class SoftIds(SoftSampler):
    def draw(self, g):
        return torch.softmax(torch.randn(self.S, self.V, generator=g) * self.p.scale, dim=-1)


class KHotParams(Params):
    """k random tokens per position with equal weight 1/k: sparse rows on the simplex (k=1: one-hot)."""

    k: int = Field(4, ge=1)


class KHot(SoftSampler):
    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if params.k > self.V:  # topk would fail on the first sample, after the store is created
            raise ParamError("k", f"{params.k} tokens per position, past the teacher's vocabulary ({self.V})")

    def draw(self, g):
        scores = torch.rand(self.S, self.V, generator=g)
        rows = torch.zeros(self.S, self.V)
        return rows.scatter_(1, scores.topk(self.p.k, dim=1).indices, 1.0 / self.p.k)


class NormMatchedParams(Params):
    """Gaussian rows scaled so that x @ E has, on average, the norm of the teacher's token embeddings."""

    ratio: float = Field(1.0, gt=0, description="target norm as a multiple of the mean embedding norm")


class NormMatched(SoftSampler):
    deterministic = "device"  # the scale is computed from the teacher's weights

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        E = ctx.teacher().embedding_weight().detach().float().cpu()
        # E[|g @ E|^2] = |E|_F^2 for g ~ N(0, I): scale that to the mean row norm
        self.scale = params.ratio * E.norm(dim=1).mean().item() / E.norm().item()

    def fill(self, g, out):
        torch.randn(self.S, self.V, generator=g, out=out).mul_(self.scale)


class TeacherGeneratedParams(Params):
    """The teacher writes the sequences itself from random first token(s); inputs are their ids."""

    prefix: int = Field(1, ge=1, description="random first tokens")
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0, description="0: off")
    top_p: float = Field(1.0, gt=0, le=1)
    group: int = Field(16, gt=0, description="samples generated together (fixed groups keep it deterministic)")


class TeacherGenerated:
    """Sequences sampled from the teacher with the KV cache.

    Samples are generated in fixed groups of consecutive indices (`group`), so a sample depends on
    (seed, index) alone for a given device and dtype, whatever batch asked for it.
    """

    produces = "ids"
    deterministic = "device"
    runs_teacher = True  # regenerating a sample costs teacher forwards

    def __init__(self, params: TeacherGeneratedParams, ctx: BuildContext):
        self.p, self.S, self.V = params, ctx.max_seq_len, ctx.vocab_size
        if params.prefix > self.S:
            raise ParamError("prefix", f"{params.prefix} is longer than max_seq_len {self.S}")
        self._teacher = ctx.teacher
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def _pick(self, logits: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        logits = logits.float() / self.p.temperature
        if self.p.top_k:
            kth = logits.topk(min(self.p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)
        if self.p.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.p.top_p  # keep the smallest set reaching top_p
            probs = probs.scatter(1, order, sorted_p.masked_fill(drop, 0.0))
        probs = probs.cpu()
        return torch.stack([torch.multinomial(probs[r], 1, generator=g)[0] for r, g in enumerate(gens)])

    def _group(self, seed: int, g: int) -> torch.Tensor:
        key = (seed, g)
        if key not in self._cache:
            indices = range(g * self.p.group, (g + 1) * self.p.group)
            gens = [generator(seed, i, salt=4) for i in indices]
            first = torch.stack([torch.randint(0, self.V, (self.p.prefix,), generator=r) for r in gens])
            steps = self.S - self.p.prefix
            ids = self._teacher().generate(first, steps, lambda logits, step: self._pick(logits, gens)) if steps else first
            self._cache[key] = ids.cpu()
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
        return self._cache[key]

    def sample(self, indices, seed):
        ids = torch.stack([self._group(seed, int(i) // self.p.group)[int(i) % self.p.group] for i in indices])
        return Inputs(lengths=_full(len(indices), self.S), ids=ids)


class MixParams(Params):
    """Each sample drawn from one of several samplers with the given weights."""

    samplers: list[SamplerRef] = Field(min_length=1)
    weights: list[float] | None = Field(None, description="default: equal")

    @model_validator(mode="after")
    def _weights(self):
        if self.weights is not None:
            if len(self.weights) != len(self.samplers):
                raise ParamError("weights", f"{len(self.weights)} given for {len(self.samplers)} samplers")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ParamError("weights", "must be >= 0 with a positive sum")
        return self


class Mix:
    def __init__(self, params: MixParams, ctx: BuildContext):
        self.V, self.S = ctx.vocab_size, ctx.max_seq_len
        self.children = [ctx.build("sampler", ref) for ref in params.samplers]
        w = torch.tensor(params.weights or [1.0] * len(self.children), dtype=torch.float64)
        self.cdf = (w / w.sum()).cumsum(0)
        self.produces = "ids" if all(c.produces == "ids" for c in self.children) else "soft"
        self.runs_teacher = any(getattr(c, "runs_teacher", False) for c in self.children)
        self.deterministic = "device" if any(c.deterministic == "device" for c in self.children) else "pure"

    def choice(self, seed: int, index: int) -> int:
        u = torch.rand((), generator=generator(seed, index, salt=2), dtype=torch.float64)
        return min(int(torch.searchsorted(self.cdf, u, right=True)), len(self.children) - 1)

    def sample(self, indices, seed):
        picks = [self.choice(seed, int(i)) for i in indices]
        rows: list = [None] * len(indices)
        for c, child in enumerate(self.children):
            where = [r for r, pick in enumerate(picks) if pick == c]
            if not where:
                continue
            part = child.sample([indices[r] for r in where], sample_seed(seed, c, salt=3))
            for j, r in enumerate(where):
                one = Inputs(part.lengths[j : j + 1], None if part.ids is None else part.ids[j : j + 1],
                             None if part.soft is None else part.soft[j : j + 1])
                rows[r] = one
        lengths = torch.cat([r.lengths for r in rows])
        if self.produces == "ids":
            return Inputs(lengths=lengths, ids=torch.cat([r.ids for r in rows]))
        return Inputs(lengths=lengths, soft=torch.cat([r.as_soft(self.V) for r in rows]))


class TextWindowsParams(Params):
    """Windows of REAL text (not data-free): the upper reference that data-free recipes are read against."""

    text: str = Field("builtin:reference.txt", description="a text file, or builtin:NAME")


class TextWindows:
    produces = "ids"
    deterministic = "pure"

    def __init__(self, params: TextWindowsParams, ctx: BuildContext):
        from kdcore.texts import read_text, resolve_text

        self.S = ctx.max_seq_len
        if resolve_text(params.text, ctx.base_dir).resolve() in ctx.eval_texts:
            raise ParamError("text", f"{params.text} is also an evaluation text (eval.text or eval.extra_texts): "
                             "evaluate on text the student never saw")
        self.tokens = torch.tensor(ctx.teacher().tokenizer().encode(read_text(params.text, ctx.base_dir)))
        if len(self.tokens) <= self.S:
            raise ParamError("text", f"{params.text} has {len(self.tokens)} tokens, fewer than max_seq_len")

    def sample(self, indices, seed):
        starts = [int(torch.randint(0, len(self.tokens) - self.S + 1, (), generator=generator(seed, int(i)))) for i in indices]
        ids = torch.stack([self.tokens[s : s + self.S] for s in starts])
        return Inputs(lengths=_full(len(indices), self.S), ids=ids)


def register_all(register) -> None:
    register("uniform", Uniform, UniformParams)
    register("random-ids", RandomIds, RandomIdsParams)
    register("length-mix", LengthMix, LengthMixParams)
    register("gaussian", Gaussian, GaussianParams)
    register("soft-ids", SoftIds, SoftIdsParams)
    register("k-hot", KHot, KHotParams)
    register("norm-matched", NormMatched, NormMatchedParams)
    register("teacher-generated", TeacherGenerated, TeacherGeneratedParams)
    register("mix", Mix, MixParams)
    register("text-windows", TextWindows, TextWindowsParams)
