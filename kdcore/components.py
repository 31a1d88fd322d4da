"""What each kind of component promises (Protocols), and the data that flows between them.

Plugins implement these; the core only relies on what is written here. Their parameter models
subclass `Params` and they refuse a wrong key with `ParamError` (both from `kdcore.params`, and
importable from here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import torch

from kdcore.params import ContentInput, ParamError, Params, Seed, TextFile, added_field  # noqa: F401  (re-exported: what plugins subclass and raise)

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


# --- contexts handed to components ----------------------------------------------------------------


@dataclass
class BuildContext:
    """What a component may need beyond its parameters when it is built, to check them against.

    A component refuses parameters that do not fit its context with `ParamError(key, message)`, the
    key relative to itself; the builder reports it at the component's place in the spec.
    """

    vocab_size: int
    max_seq_len: int
    base_dir: Path = Path(".")  # the spec's folder: see `path`
    teacher: Callable[[], "Teacher"] | None = None  # lazy: only samplers that need it call it
    build: Callable[[str, Any], Any] | None = None  # build(kind, ref) for nested components
    logits: Literal["dense", "topk"] = "dense"  # the targets a loss gets: its phase's dataset's
    eval_texts: tuple[Path, ...] = ()  # the evaluation texts (resolved): a sampler must not train on them
    batch_size: int = 16  # the dataset's teacher batch: rows a sampler may put through the teacher at once

    def path(self, ref: str, key: str) -> Path:
        """The local file or folder that parameter `key` names, tried relative to the spec's folder first."""
        from kdcore.spec import local_path

        path = local_path(ref, self.base_dir)
        if not path.exists():
            raise ParamError(key, f"{ref} does not exist")
        return path


# --- protocols ------------------------------------------------------------------------------------
# What core calls or reads on each kind of component, and nothing more. `check_contract` checks a
# built component against these when the builder makes it, so a plugin that misses a piece is told
# so by name instead of failing deep inside a stage.


@runtime_checkable
class Teacher(Protocol):
    """A frozen causal LM that takes float vocab rows as well as token ids.

    `vocab_size` and `max_positions` must be known without loading the weights (from the model's
    config, GGUF metadata or params.json), so `kd validate` and `kd run --dry-run` stay cheap.
    """

    name: str
    vocab_size: int
    max_positions: int | None  # longest sequence it takes; None: no limit
    device: torch.device
    dtype: torch.dtype
    identity: dict  # what names this teacher in a spec (recorded in every store it generates)

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

    # optional: save_pretrained(directory) writes files `transformers.AutoTokenizer` loads; a
    # reverted student's folder then carries the tokenizer too


class Sampler(Protocol):
    """Turns (dataset seed, sample indices) into input sequences; each row depends only on
    (seed, index), so a sample is the same whatever the batch, process count or resume point."""

    produces: Literal["ids", "soft"]
    deterministic: Literal["pure", "device"]  # 'device': pure on a given device and dtype
    runs_teacher: bool  # regenerating a sample costs teacher forwards (optional; default False)
    # optional: `group` (int), samples decoded together (torchrun gives a group's blocks to one rank);
    # `takes_members` (bool), sample() also takes `members(span)`, the indices of a group to decode (a mix)

    def sample(self, indices: Sequence[int], seed: int) -> Inputs:
        """(B, S) int64 ids in [0, V) or (B, S, V) float rows, lengths in [1, S], B = len(indices);
        optionally the teacher's logits at every position, if the sampler ran the teacher (`Inputs.logits`)."""


class Student(Protocol):
    """An nn.Module whose first layer, `Linear(vocab, d)`, reads float vocab rows.

    Optional: `init_weights(teacher)`, for a student whose initial weights come from the teacher (the
    built Teacher component): called once when training starts from scratch (phase 0, no checkpoint;
    `init = "kaiming"` is refused with it) and on the fresh student evaluation reports as "untrained";
    never to resume or to load a trained student, so those never read the teacher's weights. It
    raises ParamError(key, ...) for its own keys. `init_source` (str) says where the initial weights
    come from (`kd validate`).
    """

    positions: tuple[str, ...]  # which target positions it can learn from: "last", "all"

    def forward(self, inputs: Inputs, positions: Positions = "last") -> torch.Tensor:
        """Logits: (B, V) at each sample's last valid position, or (B, S, V) for positions="all"."""

    def revert(self) -> "RevertedStudent":
        """The same function on token ids: the first Linear(vocab, d) folded into an Embedding."""


class RevertedStudent(Protocol):
    """A student that reads token ids: what a run ships in runs/<name>/reverted/ and `kd eval`
    measures (`kdcore.artifact.load_student` loads it back).

    Optional: `save_pretrained(directory)` to write a standard folder (a transformers causal LM, say)
    instead of the generic one (safetensors + config.json, rebuilt from the student's plugin), and
    `generate(ids, steps) -> list[int]` for greedy decoding with a cache instead of re-running a window.
    """

    positions: tuple[str, ...]
    max_seq_len: int | None  # the longest window it reads; None: any length

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, positions: Positions = "last") -> torch.Tensor:
        """Logits for ids (B, S) int64: (B, V) at position lengths-1, or (B, S, V) for "all"."""


class Loss(Protocol):
    def __call__(self, student_logits: torch.Tensor, targets: Targets, mask: torch.Tensor | None) -> torch.Tensor:
        """A scalar; `mask` (B, S) selects valid positions when positions = 'all', else None."""


class Optimizer(Protocol):
    def __call__(self, parameters, lr: float) -> torch.optim.Optimizer:
        """A torch optimizer over `parameters` at learning rate `lr`."""


class Scheduler(Protocol):
    per_epoch: bool  # stepped once per epoch with the epoch's mean loss; else once per step

    def __call__(self, optimizer: torch.optim.Optimizer, total_steps: int):
        """A torch lr scheduler for `optimizer` over a phase of `total_steps` steps."""


CONTRACTS: dict[str, dict[str, str]] = {
    # kind -> attribute -> what it is, for the message when a component lacks it
    "teacher": {"vocab_size": "an int", "max_positions": "an int or None", "device": "a torch.device",
                "dtype": "a torch.dtype", "identity": "a dict", "embedding_weight": "a method",
                "fingerprint": "a method", "logits": "a method", "tokenizer": "a method"},
    "sampler": {"produces": "'ids' or 'soft'", "deterministic": "'pure' or 'device'", "sample": "a method"},
    "student": {"positions": "a tuple of 'last'/'all'", "forward": "a method", "revert": "a method"},
    "loss": {"__call__": "callable"},
    "optimizer": {"__call__": "callable"},
    "scheduler": {"__call__": "callable", "per_epoch": "a bool"},
}


def check_contract(kind: str, component: Any) -> list[str]:
    """What `component` lacks of its kind's contract, as 'attribute (what it is)'."""
    missing = [f"{attr} ({what})" for attr, what in CONTRACTS.get(kind, {}).items() if not hasattr(component, attr)]
    if kind == "sampler" and not missing:
        if component.produces not in ("ids", "soft"):
            missing.append(f"produces ('ids' or 'soft', got {component.produces!r})")
        if component.deterministic not in ("pure", "device"):
            missing.append(f"deterministic ('pure' or 'device', got {component.deterministic!r})")
    return missing


def runs_teacher(sampler: Any) -> bool:
    """Whether regenerating the sampler's samples re-runs the teacher (an optional attribute)."""
    return bool(getattr(sampler, "runs_teacher", False))


def check_sample(inputs: Any, indices: Sequence[int], vocab_size: int, max_seq_len: int, produces: str) -> str | None:
    """Why a sampler's output breaks the Sampler contract, or None."""
    if not isinstance(inputs, Inputs):
        return f"sample() returned {type(inputs).__name__}, not kdcore.components.Inputs"
    B, S = len(indices), max_seq_len
    lengths = inputs.lengths
    if tuple(lengths.shape) != (B,):
        return f"lengths has shape {tuple(lengths.shape)}, expected ({B},)"
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > S):
        return f"lengths must be in [1, {S}] (got {int(lengths.min())} .. {int(lengths.max())})"
    if inputs.logits is not None and (tuple(inputs.logits.shape) != (B, S, vocab_size) or inputs.logits.dtype != torch.float32):
        return f"logits must be ({B}, {S}, {vocab_size}) float32, got {tuple(inputs.logits.shape)} {str(inputs.logits.dtype).removeprefix('torch.')}"
    if inputs.has_logits is not None and (tuple(inputs.has_logits.shape) != (B,) or inputs.has_logits.dtype != torch.bool):
        return f"has_logits must be ({B},) bool, got {tuple(inputs.has_logits.shape)} {str(inputs.has_logits.dtype).removeprefix('torch.')}"
    if produces == "ids":
        if inputs.ids is None:
            return "produces 'ids' but returned float rows"
        ids = inputs.ids
        if tuple(ids.shape) != (B, S) or ids.dtype not in (torch.int64, torch.int32):
            return f"ids must be ({B}, {S}) int64, got {tuple(ids.shape)} {str(ids.dtype).removeprefix('torch.')}"
        if B and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            return f"ids must be in [0, {vocab_size}) (the teacher's vocabulary), got {int(ids.min())} .. {int(ids.max())}"
        return None
    if inputs.soft is None:
        return "produces 'soft' but returned token ids"
    soft = inputs.soft
    if tuple(soft.shape) != (B, S, vocab_size) or not soft.is_floating_point():
        return f"float rows must be ({B}, {S}, {vocab_size}) float, got {tuple(soft.shape)} {str(soft.dtype).removeprefix('torch.')}"
    return None


class CheckedSampler:
    """A sampler whose every batch is checked against the Sampler contract (`check_sample`), so a
    plugin's out-of-vocabulary id or wrong shape is named here, not met as an IndexError deep in the
    teacher. Everything else is the sampler's own."""

    def __init__(self, sampler: Any, name: str, vocab_size: int, max_seq_len: int):
        self.inner, self.name, self.vocab_size, self.max_seq_len = sampler, name, vocab_size, max_seq_len

    def __getattr__(self, attr: str):
        if attr == "inner":  # not set yet (unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def sample(self, indices: Sequence[int], seed: int, **kw) -> Inputs:
        inputs = self.inner.sample(indices, seed, **kw)
        problem = check_sample(inputs, indices, self.vocab_size, self.max_seq_len, self.inner.produces)
        if problem:
            from kdcore.errors import KDError

            raise KDError(f"sampler '{self.name}' broke its contract: {problem}")
        return inputs


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
