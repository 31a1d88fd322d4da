"""What each kind of component promises (its Protocol), and the check that it keeps it.

Core calls or reads on a component only what its kind's Protocol below declares. The check is read
from the Protocol itself (`contract`): its annotated attributes and its methods, less those marked
optional, so what is documented and what is checked cannot drift apart. The builder checks every
component it makes (`check_contract`): a plugin that lacks a piece, or whose attribute is not of
the declared kind (a value outside a `Literal`, a str where a bool is declared), is named at once
instead of failing inside a stage.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Protocol, Sequence

import torch

from kdcore.plugin.calls import Origin, plugin_code
from kdcore.plugin.data import Inputs, Targets
from kdcore.problems import KDError, ParamError, Problem
from kdcore.system.files import local_path

Positions = Literal["last", "all"]

OPTIONAL = "optional"  # Annotated[T, OPTIONAL]: an attribute a component may leave out


def optional(method):
    """A method a component may leave out (core looks for it before calling it)."""
    method.__optional__ = True
    return method


# --- what a component is built with -----------------------------------------------------------------


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
    topk: int | None = None  # with logits = "topk": the k largest logits each target keeps
    positions: Positions = "last"  # the targets a loss gets: the last position's, or every position's
    eval_texts: tuple[Path, ...] = ()  # the evaluation texts (resolved)
    batch_size: int = 16  # the dataset's teacher batch: rows a sampler may put through the teacher at once

    def path(self, ref: str, key: str) -> Path:
        """The local file or folder that parameter `key` names, tried relative to the spec's folder first."""
        path = local_path(ref, self.base_dir)
        if not path.exists():
            raise ParamError(key, f"{ref} does not exist")
        return path


# --- the protocols --------------------------------------------------------------------------------


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens left out."""

    def chat(self, prompt: str) -> list[int]:
        """Token ids of `prompt` wrapped in the model's chat format."""

    @optional
    def save_pretrained(self, directory: Path) -> None:
        """Write files `transformers.AutoTokenizer` loads: a reverted student's folder carries them."""


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
    bos_id: Annotated[int | None, OPTIONAL]  # the token its texts start with (None: none), known without the weights

    def embedding_weight(self) -> torch.Tensor:
        """(V, D) input embedding matrix E."""

    def fingerprint(self) -> str:
        """A short hash of the weights and config: same fingerprint, same teacher."""

    def logits(self, inputs: Inputs, positions: Positions = "last") -> torch.Tensor:
        """Next-token logits, float32: (B, V) at each sample's last valid position, or (B, S, V).
        Soft rows go in as `inputs_embeds = soft @ E`; ids through the usual lookup (equal for one-hot rows)."""

    def tokenizer(self) -> TextTokenizer:
        """The teacher's own tokenizer (evaluation on real text, the reverted student's folder)."""

    def generate(self, ids: torch.Tensor, steps: int, sample: Callable[[torch.Tensor, int], torch.Tensor],
                 logits: torch.Tensor | None = None) -> torch.Tensor:
        """Extend (B, L) ids by `steps` tokens, with the KV cache; `sample(logits, step)` picks them.
        `logits`, a (B, L + steps, V) float32 tensor if given, receives the next-token logits at every
        position of the result (one decode step more than the ids need)."""

    @optional
    def parameter_count(self) -> int:
        """How many parameters it has, known without reading its weights (for the size checks)."""


class Sampler(Protocol):
    """Turns (dataset seed, sample indices) into input sequences; each row depends only on
    (seed, index), so a sample is the same whatever the batch, process count or resume point."""

    produces: Literal["ids", "soft"]
    deterministic: Literal["pure", "device"]  # 'device': pure on a given device and dtype
    runs_teacher: Annotated[bool, OPTIONAL]  # regenerating a sample costs teacher forwards (default False)
    group: Annotated[int | None, OPTIONAL]  # samples decoded together (None: none): torchrun gives a group's blocks to one rank
    takes_members: Annotated[bool, OPTIONAL]  # sample() also takes `members(span)`: a group's indices (a mix)

    def sample(self, indices: Sequence[int], seed: int) -> Inputs:
        """(B, S) int64 ids in [0, V) or (B, S, V) float rows, lengths in [1, S], B = len(indices);
        optionally the teacher's logits at every position, if the sampler ran the teacher (`Inputs.logits`)."""


class RevertedStudent(Protocol):
    """A student that reads token ids: what a run ships in runs/<name>/reverted/ and `kd eval` measures."""

    positions: tuple[Positions, ...]
    max_seq_len: int | None  # the longest window it reads; None: any length

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, positions: Positions = "last") -> torch.Tensor:
        """Logits for ids (B, S) int64: (B, V) at position lengths-1, or (B, S, V) for "all"."""

    @optional
    def save_pretrained(self, directory: Path) -> None:
        """A standard folder (a transformers causal LM, say) instead of the generic one."""

    @optional
    def generate(self, ids: Sequence[int], steps: int) -> list[int]:
        """Greedy continuation with a cache, instead of re-running a window per token."""


class Student(Protocol):
    """An nn.Module whose first layer, `Linear(vocab, d)`, reads float vocab rows."""

    positions: tuple[Positions, ...]  # which target positions it can learn from
    init_source: Annotated[str, OPTIONAL]  # where its initial weights come from (`kd validate`)

    def forward(self, inputs: Inputs, positions: Positions = "last") -> torch.Tensor:
        """Logits: (B, V) at each sample's last valid position, or (B, S, V) for positions="all"."""

    def revert(self) -> RevertedStudent:
        """The same function on token ids: the first Linear(vocab, d) folded into an Embedding."""

    @optional
    def init_weights(self, teacher: Teacher) -> None:
        """Initial weights from the teacher: called once when training starts from scratch and on the
        fresh student evaluation reports as "untrained"; never to resume or load a trained student."""


class Loss(Protocol):
    def __call__(self, student_logits: torch.Tensor, targets: Targets, mask: torch.Tensor | None) -> torch.Tensor:
        """A scalar with a gradient; `mask` (B, S) selects valid positions when positions = 'all', else None."""


class Optimizer(Protocol):
    def __call__(self, parameters, lr: float) -> torch.optim.Optimizer:
        """A torch optimizer over `parameters` at learning rate `lr`."""


class Scheduler(Protocol):
    per_epoch: bool  # stepped once per epoch with the epoch's mean loss; else once per step

    def __call__(self, optimizer: torch.optim.Optimizer, total_steps: int):
        """A torch lr scheduler for `optimizer` over a phase of `total_steps` steps."""


PROTOCOLS: dict[str, type] = {"teacher": Teacher, "sampler": Sampler, "student": Student, "loss": Loss,
                              "optimizer": Optimizer, "scheduler": Scheduler}


# --- the contracts, read from the protocols -------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    annotation: Any  # None for a method
    optional: bool

    def describe(self) -> str:
        return "a method" if self.annotation is None else _describe(self.annotation)


def contract(protocol: type) -> list[Member]:
    """The members a component of this Protocol has: its annotated attributes, then its methods."""
    hints = typing.get_type_hints(protocol, include_extras=True)
    out = [Member(name, _plain(hint), OPTIONAL in getattr(hint, "__metadata__", ())) for name, hint in hints.items()]
    for name, value in vars(protocol).items():
        if inspect.isfunction(value) and (name == "__call__" or not name.startswith("_")):
            out.append(Member(name, None, getattr(value, "__optional__", False)))
    return out


def check_contract(kind: str, component: Any) -> list[Problem]:
    """What `component` lacks of its kind's Protocol, or holds of the wrong kind: a problem per member."""
    problems = []
    for member in contract(PROTOCOLS[kind]):
        if not hasattr(component, member.name):
            if not member.optional:
                problems.append(Problem(f"lacks {member.name} ({member.describe()})"))
            continue
        value = getattr(component, member.name)
        ok = callable(value) if member.annotation is None else _fits(member.annotation, value)
        if not ok:
            problems.append(Problem(f"{member.name} must be {member.describe()}, got {value!r}"))
    return problems


def _plain(hint):
    """The type of an Annotated hint without its markers."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def _fits(annotation, value) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return value in args
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return any(_fits(a, value) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return isinstance(value, (tuple, list)) and all(_fits(args[0], v) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # a type this check does not read: present is enough


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(map(repr, args))
    if origin is tuple:
        return f"a tuple of {_describe(args[0])}"
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return " or ".join(_describe(a) for a in args)
    if annotation is type(None):
        return "None"
    return f"a {getattr(annotation, '__name__', annotation)}"


def runs_teacher(sampler: Any) -> bool:
    """Whether regenerating the sampler's samples re-runs the teacher (an optional attribute)."""
    return bool(getattr(sampler, "runs_teacher", False))


# --- a sampler's batches, checked as they are drawn -----------------------------------------------


def check_sample(inputs: Any, indices: Sequence[int], vocab_size: int, max_seq_len: int, produces: str) -> str | None:
    """Why a sampler's output breaks the Sampler contract, or None."""
    if not isinstance(inputs, Inputs):
        return f"sample() returned {type(inputs).__name__}, not Inputs (kdcore.api)"
    B, S = len(indices), max_seq_len
    lengths = inputs.lengths
    if tuple(lengths.shape) != (B,):
        return f"lengths has shape {tuple(lengths.shape)}, expected ({B},)"
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > S):
        return f"lengths must be in [1, {S}] (got {int(lengths.min())} .. {int(lengths.max())})"
    if inputs.logits is not None and (tuple(inputs.logits.shape) != (B, S, vocab_size) or inputs.logits.dtype != torch.float32):
        return f"logits must be ({B}, {S}, {vocab_size}) float32, got {_shape(inputs.logits)}"
    if inputs.has_logits is not None and (tuple(inputs.has_logits.shape) != (B,) or inputs.has_logits.dtype != torch.bool):
        return f"has_logits must be ({B},) bool, got {_shape(inputs.has_logits)}"
    if produces == "ids":
        return _ids_problem(inputs, B, S, vocab_size)
    if inputs.soft is None:
        return "produces 'soft' but returned token ids"
    if tuple(inputs.soft.shape) != (B, S, vocab_size) or not inputs.soft.is_floating_point():
        return f"float rows must be ({B}, {S}, {vocab_size}) float, got {_shape(inputs.soft)}"
    return None


def _ids_problem(inputs: Inputs, B: int, S: int, vocab_size: int) -> str | None:
    if inputs.ids is None:
        return "produces 'ids' but returned float rows"
    ids = inputs.ids
    if tuple(ids.shape) != (B, S) or ids.dtype not in (torch.int64, torch.int32):
        return f"ids must be ({B}, {S}) int64, got {_shape(ids)}"
    if B and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        return f"ids must be in [0, {vocab_size}) (the teacher's vocabulary), got {int(ids.min())} .. {int(ids.max())}"
    return None


def _shape(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


class CheckedSampler:
    """A sampler whose every batch is checked against the Sampler contract (`check_sample`), so a
    plugin's out-of-vocabulary id or wrong shape is named here, not met as an IndexError deep in the
    teacher; its failures are attributed to it (`origin`). Everything else is the sampler's own."""

    def __init__(self, sampler: Any, origin: Origin, vocab_size: int, max_seq_len: int):
        self.inner, self.origin, self.vocab_size, self.max_seq_len = sampler, origin, vocab_size, max_seq_len

    def __getattr__(self, attr: str):
        if attr in ("inner", "origin"):  # not set yet (unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def sample(self, indices: Sequence[int], seed: int, **kw) -> Inputs:
        with plugin_code(self.origin, "sample()"):
            inputs = self.inner.sample(indices, seed, **kw)
        problem = check_sample(inputs, indices, self.vocab_size, self.max_seq_len, self.inner.produces)
        if problem:
            raise KDError(self.origin.problem(f"broke its contract: {problem}"))
        return inputs
