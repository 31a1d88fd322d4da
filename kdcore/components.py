"""What each kind of component promises (Protocols), and the data that flows between them.

Plugins implement these; the core only relies on what is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import torch

Positions = Literal["last", "all"]


# --- data -----------------------------------------------------------------------------------------


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

    def rows(self, index: torch.Tensor) -> "Inputs":
        """The rows `index` (a (n,) long tensor) of this batch, logits included."""
        pick = lambda t: None if t is None else t[index.to(t.device)]  # noqa: E731
        return Inputs(self.lengths[index], pick(self.ids), pick(self.soft), pick(self.logits), pick(self.has_logits))

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


# --- contexts handed to components ----------------------------------------------------------------


@dataclass
class BuildContext:
    """What a component may need beyond its parameters when it is built."""

    vocab_size: int
    max_seq_len: int
    base_dir: Path = Path(".")
    teacher: Callable[[], "Teacher"] | None = None  # lazy: only samplers that need it call it
    build: Callable[[str, Any], Any] | None = None  # build(kind, ref) for nested components
    extra: dict = field(default_factory=dict)


# --- protocols ------------------------------------------------------------------------------------


@runtime_checkable
class Teacher(Protocol):
    name: str
    vocab_size: int
    device: torch.device

    def embedding_weight(self) -> torch.Tensor:
        """(V, D) input embedding matrix E."""

    def fingerprint(self) -> str:
        """A short hash of the weights and config: same fingerprint, same teacher."""

    def logits(self, inputs: Inputs, positions: Positions = "last") -> torch.Tensor:
        """Next-token logits, float32: (B, V) at each sample's last valid position, or (B, S, V).

        Soft rows go in as `inputs_embeds = soft @ E`; ids through the usual lookup. The two are
        equal for one-hot rows.
        """

    def tokenizer(self) -> "TextTokenizer":
        """The teacher's own tokenizer (for evaluation on real text)."""

    def generate(self, ids: torch.Tensor, steps: int, sample: Callable[[torch.Tensor, int], torch.Tensor],
                 logits: torch.Tensor | None = None) -> torch.Tensor:
        """Extend (B, L) ids by `steps` tokens, with the KV cache; `sample(logits, step)` picks them.

        `logits`, a (B, L + steps, V) float32 tensor if given, receives the next-token logits at every
        position of the result (one decode step more than the ids need).
        """


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def chat(self, prompt: str) -> list[int]:
        """Token ids of `prompt` wrapped in the model's chat format."""


class Sampler(Protocol):
    produces: Literal["ids", "soft"]
    deterministic: Literal["pure", "device"]  # 'device': pure on a given device and dtype

    def sample(self, indices: Sequence[int], seed: int) -> Inputs:
        """Samples `indices` of the dataset with this seed; each row depends only on (seed, index)."""


class Student(Protocol):
    """An nn.Module: `forward(inputs: Inputs) -> logits` ((B, V) last or (B, S, V) all positions)."""

    positions: tuple[str, ...]  # which target positions it can learn from

    def revert(self) -> torch.nn.Module:
        """The same model taking token ids: its first Linear(vocab, d) folded into an Embedding."""


class Loss(Protocol):
    def __call__(self, student_logits: torch.Tensor, targets: Targets, mask: torch.Tensor | None) -> torch.Tensor:
        """A scalar; `mask` (B, S) selects valid positions when positions = 'all', else None."""


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
