"""The extension points of LlamaKD, in pipeline order. Read this file to learn every hook.

Built-in components (the `plugins/` folder, imported as `kd_plugins`) use these same hooks. A third
party implements them in a module and either lists the module in a spec (`plugins = ["my_pkg.mod"]`)
or declares it under the entry-point group `kd` of its package.

Registration hooks receive a `register(name, target, params)` callback (typed by `Register` below):
  name    the component's name in specs (`name = "uniform"`); a duplicate name is an error.
  target  the component class or a factory `(params, ctx) -> component`, or a "module:attr" string
          imported only when a spec selects it, so heavy imports (transformers) stay out of `kd --help`.
  params  the pydantic model of the component's parameters, a subclass of `kdcore.plugin.params.Params`
          (unknown keys, loose types and non-finite floats refused; a model that lets unknown keys
          or inf/nan through is refused when it registers). The spec table of the component, minus
          `name`, is validated against it and passed to `target(params, ctx)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

PROJECT = "kd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# what a registration builds: a class or factory called as target(params, ctx), or "module:attr"
Target = Union[type, Callable[..., Any], str]


class Register(Protocol):
    """The callback each registration hook receives; it raises KDError for a duplicate name, a
    target that is neither callable nor "module:attr", or a params model that breaks the contract."""

    def __call__(self, name: str, target: Target, params: type["BaseModel"]) -> None: ...


# --- components -----------------------------------------------------------------------------------


@hookspec
def kd_register_teachers(register: Register) -> None:
    """Register teacher adapters.

    A teacher wraps a frozen causal LM and accepts float vocab rows (`inputs_embeds = x @ E`) as well
    as token ids, with identical logits for one-hot rows. See `kdcore.plugin.contracts.Teacher`.
    """


@hookspec
def kd_register_samplers(register: Register) -> None:
    """Register noise samplers.

    A sampler turns (dataset seed, sample index) into one input sequence: float vocab rows or token
    ids, and a length. It must be a pure function of (seed, index), so a sample is the same whatever
    the batch size, process count or resume point. See `kdcore.plugin.contracts.Sampler`.
    """


@hookspec
def kd_register_students(register: Register) -> None:
    """Register student architectures.

    A student's first layer is `Linear(vocab, d)` over float rows; `revert()` folds it into an
    `Embedding` so the student takes token ids. See `kdcore.plugin.contracts.Student`.
    """


@hookspec
def kd_register_losses(register: Register) -> None:
    """Register distillation losses.

    A loss maps (student logits, teacher targets, mask) to a scalar; a training phase sums several
    with weights. Each must handle dense and top-k targets. See `kdcore.plugin.contracts.Loss`.
    """


@hookspec
def kd_register_optimizers(register: Register) -> None:
    """Register optimizers.

    An optimizer is called as `optimizer(parameters, lr)` and returns a `torch.optim.Optimizer`; a
    phase names one (`optimizer = "adamw"` or a table with its parameters) and sets its `lr`. See
    `kdcore.plugin.contracts.Optimizer`.
    """


@hookspec
def kd_register_schedulers(register: Register) -> None:
    """Register learning-rate schedules.

    A scheduler is called as `scheduler(optimizer, total_steps)` with the phase's optimizer and step
    count and returns a torch lr scheduler (`step()`, `state_dict()`, `load_state_dict()`); with
    `per_epoch = True` it is stepped once per epoch with the epoch's mean loss. See
    `kdcore.plugin.contracts.Scheduler`.
    """


# --- lifecycle ------------------------------------------------------------------------------------


@hookspec
def kd_on_metrics(stage: str, record: dict) -> None:
    """Called with every metrics record a stage writes (a training step or epoch, an evaluation).

    `stage` is "generate" (once per dataset), "train" (every step), "train_epoch" (every epoch end)
    or "eval" (the summary of an evaluation); `record` is the JSON-able dict written to
    `runs/<experiment>/metrics.jsonl`. Use it for loggers (wandb, tensorboard); do not mutate it.
    """


@hookspec
def kd_on_trained(student: Any, run_dir: Any, rank: int) -> None:
    """Called on every rank when training ends: `student` is the trained float-input student (an
    nn.Module on the CPU), `run_dir` the run folder (`runs/<experiment>`, a Path) where rank 0 has
    saved it already, `rank` this process's rank (0 without torchrun). Use it to export the student
    elsewhere or log it; do not modify it.
    """
