"""Noise samplers: what goes into the teacher instead of training text.

Every sampler is a pure function of (dataset seed, sample index): each row draws from its own
generator seeded by `sample_seed(seed, index)`, so a sample is the same whatever the batch size,
process count or resume point. Base samplers fill all S positions; `length-mix` shortens them.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Sequence

import torch
from pydantic import Field, model_validator

from kdcore.api import (BuildContext, Inputs, ParamError, Params, SamplerRef, SoftSampler, TextFile, added_field,
                        generator, gib, memory_bytes, read_text, runs_teacher, sample_seed, spread)


def _full(n: int, S: int) -> torch.Tensor:
    return torch.full((n,), S, dtype=torch.long)


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


def independent_ids(probs: torch.Tensor, S: int, indices, seed: int, offset: int = 0) -> Inputs:
    """S ids per sample drawn independently from `probs` (id = offset + draw), each sample from its
    own (seed, index) generator: pure in (seed, index), whatever the batch."""
    ids = torch.stack([torch.multinomial(probs, S, replacement=True, generator=generator(seed, int(i))) for i in indices])
    return Inputs(lengths=_full(len(indices), S), ids=ids + offset)


class ZipfIdsParams(Params):
    """Token ids drawn independently from a Zipf law over the tokenizer's id order: a byte-level BPE
    numbers its merges in the order it learned them, roughly by frequency, so low ids are common
    pieces. p(id) is proportional to (id - low + shift) ** -exponent for low <= id < the vocabulary."""

    exponent: float = Field(1.0, gt=0, description="Zipf's exponent (1: Zipf's law for words)")
    shift: float = Field(256.0, ge=1, description="Zipf-Mandelbrot's offset: flattens the head, where a "
                         "byte-level BPE keeps its 256 single-byte tokens before its first merge")
    low: int = Field(0, ge=0, description="the first id drawn (past the special tokens)")


class ZipfIds:
    """Noise only, no sequence written by the teacher: each id independent, but common pieces common."""

    produces = "ids"
    deterministic = "pure"

    def __init__(self, params: ZipfIdsParams, ctx: BuildContext):
        if params.low >= ctx.vocab_size:
            raise ParamError("low", f"{params.low} is past the teacher's vocabulary ({ctx.vocab_size})")
        self.S, self.low = ctx.max_seq_len, params.low
        ranks = torch.arange(ctx.vocab_size - params.low, dtype=torch.float64)
        self.probs = (ranks + params.shift).pow(-params.exponent)
        self.probs /= self.probs.sum()

    def sample(self, indices, seed):
        return independent_ids(self.probs, self.S, indices, seed, offset=self.low)


class TeacherUnigramIdsParams(Params):
    """Token ids drawn independently from the teacher's own next-token distribution after its BOS
    token: p(id) = softmax(logits / temperature) at the one position of [BOS], with the ids below
    `low` given probability 0 and the rest renormalised."""

    temperature: float = Field(1.0, gt=0, description="softmax temperature of the teacher's logits (> 1 flattens them)")
    low: int = Field(0, ge=0, description="the first id drawn (past the special tokens)")
    bos: int | None = Field(None, ge=0, description="the id the teacher reads (default: the teacher's BOS token; "
                                                    "required for a teacher that names none)")


class TeacherUnigramIds:
    """Noise only, no sequence written by the teacher: each id independent, drawn as often as the
    teacher expects it to open a text. One teacher forward, on the first sample; a teacher without a
    BOS id is refused at build unless `bos` names one (no guessed fallback)."""

    produces = "ids"
    deterministic = "device"  # the probabilities come from the teacher's logits on its device and dtype

    def __init__(self, params: TeacherUnigramIdsParams, ctx: BuildContext):
        self.p, self.S, self.V = params, ctx.max_seq_len, ctx.vocab_size
        if params.low >= self.V:
            raise ParamError("low", f"{params.low} is past the teacher's vocabulary ({self.V})")
        self.bos = params.bos if params.bos is not None else getattr(ctx.teacher(), "bos_id", None)
        if self.bos is None:
            raise ParamError("bos", "the teacher names no BOS token: give the id to start from")
        if self.bos >= self.V:
            raise ParamError("bos", f"{self.bos} is past the teacher's vocabulary ({self.V})")
        self._teacher = ctx.teacher  # called on the first sample: kd validate reads no weights

    @cached_property
    def probs(self) -> torch.Tensor:
        """(V,) float64 on the CPU, summing to 1: the distribution every id is drawn from."""
        bos = Inputs(lengths=torch.ones(1, dtype=torch.long), ids=torch.tensor([[self.bos]]))
        logits = self._teacher().logits(bos, "last")[0].double().cpu() / self.p.temperature
        logits[: self.p.low] = -math.inf  # probability 0: the softmax renormalises over the rest
        return torch.softmax(logits, dim=-1)

    def sample(self, indices, seed):
        return independent_ids(self.probs, self.S, indices, seed)


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
        self.runs_teacher = runs_teacher(self.inner)
        self.group = getattr(self.inner, "group", None)
        self.takes_members = getattr(self.inner, "takes_members", False)

    def lengths(self, indices, seed) -> torch.Tensor:
        out = []
        for i in indices:
            g = generator(seed, int(i), salt=1)
            full = torch.rand((), generator=g).item() < self.p.full_fraction
            short = int(torch.randint(self.p.min_len, max(self.p.min_len, self.S - 1) + 1, (), generator=g))
            out.append(self.S if full or self.p.min_len >= self.S else min(short, self.S - 1))
        return torch.tensor(out, dtype=torch.long)

    def sample(self, indices, seed, **kw):  # kw: `members`, for an inner sampler that takes them
        full = self.inner.sample(indices, seed, **kw)
        lengths = torch.minimum(self.lengths(indices, seed), full.lengths)
        valid = torch.arange(self.S)[None, :] < lengths[:, None]
        if full.ids is not None:  # the teacher's logits, if any, are causal: still those of the prefix
            return Inputs(lengths=lengths, ids=full.ids * valid, logits=full.logits, has_logits=full.has_logits)
        return Inputs(lengths=lengths, soft=full.soft.mul_(valid[..., None]),  # zero rows pad, as the original
                      logits=full.logits, has_logits=full.has_logits)


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
    burn_in: int = added_field(0, ge=0, description="tokens written before each stored window and dropped: the window "
                                              "starts mid-text, as an evaluation window does, not at a random token "
                                              "(costs the extra decode steps and one forward of the window)")
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0, description="0: off")
    top_p: float = Field(1.0, gt=0, le=1)
    group: int = Field(256, gt=0, description="samples decoded together: fewer, larger steps (fixed groups keep "
                                              "a sample deterministic); memory: group x max_seq_len x vocab x 4 bytes")


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` (G, V) with all but each row's smallest set of most probable tokens reaching `top_p` set
    to 0 (the token that crosses top_p is kept)."""
    V = probs.shape[-1]
    k = min(V, 256)
    while True:  # a sort of V per row costs as much as a decode step: look in the top k first
        top, order = probs.topk(k, dim=-1)
        mass = top.cumsum(-1)
        if k == V or bool((mass[:, -1] > top_p).all()):  # every row's set lies inside its top k
            break
        k = min(V, 8 * k)
    drop = mass - top > top_p
    return torch.zeros_like(probs).scatter_(1, order, top.masked_fill(drop, 0.0))


def forward_into(out: torch.Tensor, teacher, x: Inputs, rows: torch.Tensor, batch_size: int) -> None:
    """The teacher's logits at every position of `x`'s `rows` into those rows of `out`, `batch_size`
    rows per forward (a forward's weight reads are shared by its rows)."""
    for s in range(0, len(rows), batch_size):
        part = rows[s : s + batch_size]
        out[part.to(out.device)] = teacher.logits(x.rows(part).to(teacher.device), "all").to(out.device)


class Grouped:
    """A sampler that makes its samples a fixed group of consecutive indices at a time, with the
    teacher's logits at every position (`Inputs.logits`), so a sample depends on (seed, index) alone
    for a given device and dtype, whatever batch asked for it. Subclasses say how a group is made
    (`make`); the last group is kept, as generation asks for its rows batch by batch, across a block
    boundary too, and dropped before the next one is made, whose buffers then reuse its memory.

    `sample(indices, seed, members)`: `members(span)`, if given, names the indices of a group's span
    that this sampler makes (the ones a mix assigns to it); all of them otherwise."""

    deterministic = "device"
    runs_teacher = True  # regenerating a sample costs teacher forwards
    takes_members = True
    group: int  # generation gives a group's blocks to one torchrun rank

    def make(self, seed: int, indices: list[int]) -> Inputs:
        raise NotImplementedError

    def _group(self, seed: int, g: int, members) -> tuple[dict[int, int], Inputs]:
        span = range(g * self.group, (g + 1) * self.group)
        indices = list(members(span)) if members else list(span)
        key = (seed, g, tuple(indices))
        if self._last is None or self._last[0] != key:
            self._last = None
            self._last = (key, {i: r for r, i in enumerate(indices)}, self.make(seed, indices))
        return self._last[1:]

    def sample(self, indices, seed, members=None):
        indices = [int(i) for i in indices]
        groups = list(dict.fromkeys(i // self.group for i in indices))
        if len(groups) == 1:  # as generation asks: consecutive rows of one group, the logits a view
            row_of, x = self._group(seed, groups[0], members)
            rows = [row_of[i] for i in indices]
            if rows == list(range(rows[0], rows[0] + len(rows))):
                return x.rows(slice(rows[0], rows[0] + len(rows)))
        parts, where = [], []
        for g in groups:
            row_of, x = self._group(seed, g, members)
            mine = [r for r, i in enumerate(indices) if i // self.group == g]
            parts.append(x.rows(torch.tensor([row_of[indices[r]] for r in mine])))  # a copy
            where += mine
            x = None  # the next group may be made: not held here
        return Inputs.cat(parts).rows(torch.tensor(where).argsort())


class TeacherGenerated(Grouped):
    """Sequences sampled from the teacher with the KV cache, with the teacher's logits at every position.

    Samples are decoded in fixed groups of consecutive indices (`group`; see `Grouped`). The decode's
    own logits come with the ids (`Inputs.logits`): generation stores them instead of running the
    teacher again. With `burn_in` the stored window is the end of a longer decode, and its logits a
    forward of the window alone (the decode's saw the dropped tokens). Memory: the last group's logits (group x S x V float32), and the KV cache while decoding.
    """

    produces = "ids"

    def __init__(self, params: TeacherGeneratedParams, ctx: BuildContext):
        self.p, self.S, self.V = params, ctx.max_seq_len, ctx.vocab_size
        if params.prefix > self.S + params.burn_in:
            raise ParamError("prefix", f"{params.prefix} is longer than max_seq_len {self.S}"
                             + (f" + burn_in {params.burn_in}" if params.burn_in else ""))
        limit = params.burn_in and getattr(ctx.teacher(), "max_positions", None)
        if limit and self.S + params.burn_in > limit:  # past its positions the teacher writes nonsense, silently
            raise ParamError("burn_in", f"max_seq_len {self.S} + burn_in {params.burn_in} is longer than the "
                                        f"teacher's {limit} positions")
        cache = params.group * (self.S + params.burn_in) * self.V * 4  # a group's float32 logits, kept
        if cache > memory_bytes() // 2:
            raise ParamError("group", f"{params.group} samples decoded together keep {gib(cache)} of logits "
                                      f"(group x positions x vocabulary x 4 bytes), more than half this machine's "
                                      f"{gib(memory_bytes())}: use a smaller group")
        self.group = params.group
        self._teacher, self.batch_size = ctx.teacher, ctx.batch_size
        self._last: tuple | None = None

    def draw(self, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Next tokens (G,): the inverse CDF at `u` (G,) in [0, 1) of softmax(logits / temperature),
        cut to top_k and top_p. One uniform per row, no loop over rows."""
        if self.p.temperature != 1:
            logits = logits / self.p.temperature
        if 0 < self.p.top_k < logits.shape[-1]:
            kth = logits.topk(self.p.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        if self.p.top_p < 1:
            probs = nucleus(probs, self.p.top_p)
        cdf = probs.cumsum_(-1)  # float32: a token's share is off by at most an ulp of the running sum
        total = cdf[:, -1:]
        # strictly below the total, the first cdf entry past x is a token of positive probability
        x = torch.minimum(u.to(cdf)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
        # NaN logits (refused when stored) must not end the decode in an index error
        return torch.searchsorted(cdf, x, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)

    def make(self, seed: int, indices: list[int]) -> Inputs:
        """These samples decoded together: their ids and the teacher's logits."""
        gens = [generator(seed, i, salt=4) for i in indices]
        first = torch.stack([torch.randint(0, self.V, (self.p.prefix,), generator=g) for g in gens])
        burn_in = self.p.burn_in
        steps = self.S + burn_in - self.p.prefix
        u = torch.stack([torch.rand(steps, generator=g, dtype=torch.float64) for g in gens])
        teacher = self._teacher()
        logits = torch.empty(len(indices), self.S, self.V, device=teacher.device)
        pick = lambda step_logits, step: self.draw(step_logits, u[:, step])  # noqa: E731
        if not burn_in:  # the decode's own logits are the targets
            ids = teacher.generate(first, steps, pick, logits=logits)
            return Inputs(_full(len(indices), self.S), ids=ids.cpu(), logits=logits)
        # the decode's logits saw the dropped tokens: the window's targets are a forward of it alone
        x = Inputs(_full(len(indices), self.S), ids=teacher.generate(first, steps, pick)[:, burn_in:].cpu())
        forward_into(logits, teacher, x, torch.arange(len(indices)), self.batch_size)
        return Inputs(x.lengths, ids=x.ids, logits=logits)


class TeacherBatched(Grouped):
    """Another sampler's samples with the teacher's logits, made a group at a time. In a mix that
    decodes groups (teacher-generated), the other children's rows of a group go through the teacher
    together in full batches (`batch_size` rows) rather than a few rows in each generation batch, each
    of which would cost nearly a full batch's forward (a forward's weight reads are shared by its rows)."""

    def __init__(self, inner, group: int, teacher, batch_size: int, max_seq_len: int, vocab_size: int):
        self.inner, self.group, self._teacher, self.batch_size = inner, group, teacher, batch_size
        self.S, self.V, self.produces = max_seq_len, vocab_size, inner.produces
        self._last: tuple | None = None

    def make(self, seed: int, indices: list[int]) -> Inputs:
        x = self.inner.sample(indices, seed)
        rest = (~x.logit_rows()).nonzero()[:, 0]  # a child that ran the teacher (a nested mix) brought some
        teacher = self._teacher()
        logits = x.logits.clone() if x.logits is not None else torch.empty(len(indices), self.S, self.V, device=teacher.device)
        forward_into(logits, teacher, x, rest, self.batch_size)
        return Inputs(x.lengths, x.ids, x.soft, logits=logits)


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
        groups = [c.group for c in self.children if getattr(c, "group", None)]
        self.group = max(groups) if groups else None
        if any(self.group % g for g in groups):  # decoded together, they would need groups of their lcm
            raise ParamError("samplers", f"the children's groups must divide the largest one (got {sorted(set(groups))})")
        if self.group:  # the teacher runs for this mix anyway: every child's rows come with its logits
            self.children = [c if getattr(c, "takes_members", False) else
                             TeacherBatched(c, self.group, ctx.teacher, ctx.batch_size, self.S, self.V)
                             for c in self.children]
        w = torch.tensor(params.weights or [1.0] * len(self.children), dtype=torch.float64)
        self.cdf = (w / w.sum()).cumsum(0)
        self.produces = "ids" if all(c.produces == "ids" for c in self.children) else "soft"
        self.runs_teacher = any(runs_teacher(c) for c in self.children)
        self.deterministic = "device" if any(c.deterministic == "device" for c in self.children) else "pure"

    def choice(self, seed: int, index: int) -> int:
        u = torch.rand((), generator=generator(seed, index, salt=2), dtype=torch.float64)
        return min(int(torch.searchsorted(self.cdf, u, right=True)), len(self.children) - 1)

    def _child_sample(self, c: int, indices: list[int], seed: int) -> Inputs:
        child, kw = self.children[c], {}
        if getattr(child, "takes_members", False):  # decode only the group members this mix gives child c
            kw["members"] = lambda span: [i for i in span if self.choice(seed, i) == c]
        return child.sample(indices, sample_seed(seed, c, salt=3), **kw)

    def sample(self, indices, seed):
        indices = [int(i) for i in indices]
        picks = torch.tensor([self.choice(seed, i) for i in indices], dtype=torch.long)
        n = len(indices)
        lengths = torch.empty(n, dtype=torch.long)
        rows = torch.zeros(n, self.S, dtype=torch.long) if self.produces == "ids" else torch.empty(n, self.S, self.V)
        logits, has_logits = None, torch.zeros(n, dtype=torch.bool)
        for c in range(len(self.children)):
            where = (picks == c).nonzero()[:, 0]
            if not len(where):
                continue
            part = self._child_sample(c, [indices[r] for r in where], seed)
            lengths[where] = part.lengths
            rows[where] = part.ids if self.produces == "ids" else part.as_soft(self.V)
            if part.logits is not None:
                if logits is None:  # rows without logits (has_logits False) are never read: no fill
                    logits = torch.empty(n, self.S, self.V, device=part.logits.device)
                logits[where.to(logits.device)] = part.logits
                has_logits[where] = part.logit_rows()
        if logits is None:
            has_logits = None
        if self.produces == "ids":
            return Inputs(lengths=lengths, ids=rows, logits=logits, has_logits=has_logits)
        return Inputs(lengths=lengths, soft=rows, logits=logits, has_logits=has_logits)


class TextWindowsParams(Params):
    """Windows of REAL text (not data-free): the reference that data-free recipes are read against.
    Every window of the text is read once before any is read again."""

    text: TextFile = Field("builtin:reference.txt", description="a text file, builtin:NAME or corpus:NAME")


TEXT_PASSES = 5  # generator salts of a text's passes and of its offsets (1-4 are other samplers')
TEXT_OFFSETS = 6


class TextWindows:
    """The text cut into `passes` of whole windows of S tokens. Pass c holds samples c*n .. c*n + n-1
    (n windows): the windows start at an offset in [0, S) and come in an order drawn from (seed, c).
    Each run of S passes takes the S offsets in a drawn order, so within it no start in the text is
    read twice: the first pass reads each whole window once, each later pass windows shifted from
    every earlier pass's. A pure function of (seed, index), as every sampler is."""

    produces = "ids"
    deterministic = "pure"

    def __init__(self, params: TextWindowsParams, ctx: BuildContext):
        self.S = ctx.max_seq_len
        self.tokens = torch.tensor(ctx.teacher().tokenizer().encode(read_text(params.text, ctx.base_dir)))
        self.per_pass = (len(self.tokens) - self.S + 1) // self.S  # whole windows after any offset < S
        if self.per_pass < 1:
            raise ParamError("text", f"{params.text} has {len(self.tokens)} tokens, fewer than max_seq_len")
        self._passes: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}

    def _pass(self, seed: int, c: int) -> tuple[torch.Tensor, int]:
        """Pass c's window order and offset (drawn once, kept)."""
        if (seed, c) not in self._passes:
            g = generator(seed, c, salt=TEXT_PASSES)
            offset = int(torch.randint(0, self.S, (), generator=g))  # kept by the first pass of a run
            order = torch.randperm(self.per_pass, generator=g)
            run, k = divmod(c, self.S)
            if k:  # the run's other passes: the other offsets, each once, in a drawn order
                shifts = torch.randperm(self.S - 1, generator=generator(seed, run, salt=TEXT_OFFSETS)) + 1
                offset = (self._pass(seed, run * self.S)[1] + int(shifts[k - 1])) % self.S
            self._passes[(seed, c)] = (order, offset)
        return self._passes[(seed, c)]

    def start(self, seed: int, index: int) -> int:
        """Where sample `index` starts in the text's tokens."""
        c, j = divmod(int(index), self.per_pass)
        order, offset = self._pass(seed, c)
        return offset + int(order[j]) * self.S

    def sample(self, indices, seed):
        ids = torch.stack([self.tokens[s : s + self.S] for s in (self.start(seed, i) for i in indices)])
        return Inputs(lengths=_full(len(indices), self.S), ids=ids)


def register_all(register) -> None:
    register("uniform", Uniform, UniformParams)
    register("random-ids", RandomIds, RandomIdsParams)
    register("zipf-ids", ZipfIds, ZipfIdsParams)
    register("teacher-unigram-ids", TeacherUnigramIds, TeacherUnigramIdsParams)
    register("length-mix", LengthMix, LengthMixParams)
    register("gaussian", Gaussian, GaussianParams)
    register("soft-ids", SoftIds, SoftIdsParams)
    register("k-hot", KHot, KHotParams)
    register("norm-matched", NormMatched, NormMatchedParams)
    register("teacher-generated", TeacherGenerated, TeacherGeneratedParams)
    register("mix", Mix, MixParams)
    register("text-windows", TextWindows, TextWindowsParams)
