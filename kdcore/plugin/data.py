"""The data that flows between components: input sequences (`Inputs`), the teacher's targets
(`Targets`), and the per-sample randomness every sampler draws from (`sample_seed`, `generator`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

@dataclass
class Inputs:
    """A batch of input sequences, as token ids or as float vocab rows.

    Exactly one of `ids` (B, S) int64 or `soft` (B, S, V) float is set. Positions at or past a
    sample's length are padding: id 0, or an all-zero row.

    A sampler that already ran its rows through the teacher (teacher-generated) hands over the
    teacher's next-token logits at every position as `logits` (B, S, V) float32, on the teacher's
    device: generation stores those instead of running the teacher again. `has_logits` (B,) bool
    marks the rows that hold them when only some do (a mix); None means all rows, or none when
    `logits` is None. They must equal `Teacher.logits(inputs, "all")` within float tolerance.
    """

    lengths: torch.Tensor  # (B,) int64, 1 <= length <= S
    ids: torch.Tensor | None = None
    soft: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    has_logits: torch.Tensor | None = None

    def __post_init__(self):
        if (self.ids is None) == (self.soft is None):
            raise ValueError("Inputs needs exactly one of ids or soft")
        if self.has_logits is not None and self.logits is None:
            raise ValueError("Inputs.has_logits needs logits")

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def seq_len(self) -> int:
        return int((self.ids if self.ids is not None else self.soft).shape[1])

    def mask(self) -> torch.Tensor:
        """(B, S) bool, True at valid positions."""
        return torch.arange(self.seq_len, device=self.lengths.device)[None, :] < self.lengths[:, None]

    def to(self, device) -> "Inputs":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Inputs(self.lengths.to(device), move(self.ids), move(self.soft), move(self.logits), move(self.has_logits))

    def rows(self, index: torch.Tensor | slice) -> "Inputs":
        """The rows `index` (a (n,) long tensor, or a slice: views) of this batch, logits included."""
        on = lambda t: index if isinstance(index, slice) else index.to(t.device)  # noqa: E731
        pick = lambda t: None if t is None else t[on(t)]  # noqa: E731
        return Inputs(self.lengths[index], pick(self.ids), pick(self.soft), pick(self.logits), pick(self.has_logits))

    @staticmethod
    def cat(parts: list["Inputs"]) -> "Inputs":
        """The rows of `parts` in order, one batch; logits kept only if every part has them."""
        join = lambda ts: None if any(t is None for t in ts) else torch.cat(ts)  # noqa: E731
        logits = join([p.logits for p in parts])
        some = logits is not None and any(p.has_logits is not None for p in parts)
        return Inputs(torch.cat([p.lengths for p in parts]), join([p.ids for p in parts]), join([p.soft for p in parts]),
                      logits, torch.cat([p.logit_rows() for p in parts]) if some else None)

    def logit_rows(self) -> torch.Tensor:
        """(B,) bool: the rows whose teacher logits came with the batch (`logits`)."""
        if self.logits is None:
            return torch.zeros(self.batch_size, dtype=torch.bool)
        if self.has_logits is None:
            return torch.ones(self.batch_size, dtype=torch.bool)
        return self.has_logits.cpu()

    def padded_to(self, multiple: int) -> "Inputs":
        """The same batch with S rounded up to a multiple of `multiple` (more padding positions), as
        teacher input: without `logits`."""
        extra = -self.seq_len % multiple
        if extra == 0:
            return Inputs(self.lengths, self.ids, self.soft)
        grow = lambda t: torch.nn.functional.pad(t, (0, 0, 0, extra) if t.dim() == 3 else (0, extra))  # noqa: E731
        return Inputs(self.lengths, None if self.ids is None else grow(self.ids),
                      None if self.soft is None else grow(self.soft))

    def as_soft(self, vocab_size: int, dtype=torch.float32) -> torch.Tensor:
        """Float vocab rows: one-hot rows for ids, zero rows at padding."""
        if self.soft is not None:
            return self.soft.to(dtype)
        rows = torch.nn.functional.one_hot(self.ids, vocab_size).to(dtype)
        return rows * self.mask()[..., None].to(dtype)


@dataclass
class Targets:
    """The teacher's next-token logits for a batch: dense, or top-k with the full logsumexp.

    Shapes: (B, V) / (B, k) for positions = "last", (B, S, V) / (B, S, k) for "all". With top-k,
    `values` are the k largest logits and `logsumexp` is over all V logits, so the probabilities of
    the kept tokens are exact: p_i = exp(values_i - logsumexp). The rest of the mass is the "tail".
    """

    logits: torch.Tensor | None = None
    values: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    logsumexp: torch.Tensor | None = None

    @property
    def is_topk(self) -> bool:
        return self.values is not None

    def argmax(self) -> torch.Tensor:
        if self.is_topk:
            return self.indices.gather(-1, self.values.argmax(-1, keepdim=True)).squeeze(-1)
        return self.logits.argmax(-1)

    def kept_log_probs(self) -> torch.Tensor:
        """Log probabilities of the kept tokens (top-k), or of every token (dense)."""
        if self.is_topk:
            return self.values.float() - self.logsumexp.float()[..., None]
        return torch.log_softmax(self.logits.float(), -1)

    def to(self, device) -> "Targets":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Targets(move(self.logits), move(self.values), move(self.indices), move(self.logsumexp))

    @staticmethod
    def topk_of(logits: torch.Tensor, k: int) -> "Targets":
        logits = logits.float()
        values, indices = logits.topk(k, dim=-1)
        return Targets(values=values, indices=indices, logsumexp=torch.logsumexp(logits, -1))


def last_positions(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, S, ...) at each row's last valid position, lengths - 1: (B, ...)."""
    last = (lengths.to(x.device) - 1).clamp(min=0)
    return x[torch.arange(x.shape[0], device=x.device), last]


# --- per-sample randomness ------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, index: int, salt: int = 0) -> int:
    """A well-mixed 63-bit seed for sample `index` of a dataset (splitmix64 of the pair)."""
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def generator(seed: int, index: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, index, salt))
