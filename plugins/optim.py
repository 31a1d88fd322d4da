"""Optimizers and learning-rate schedules: components like any other, named in a phase.

    [[phases]]
    lr = 1e-3
    optimizer = { name = "sgd", momentum = 0.9 }    # or optimizer = "sgd": the defaults
    scheduler = "cosine"

An optimizer is called with the student's parameters and the phase's `lr`; a scheduler with that
optimizer and the phase's number of steps. A scheduler with `per_epoch = True` is stepped once per
epoch with the epoch's mean loss (plateau), any other once per step.
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdcore.api import BuildContext, Params


class SGDParams(Params):
    """Stochastic gradient descent (torch.optim.SGD), as the 2023 scripts trained."""

    momentum: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)


class SGD:
    def __init__(self, params: SGDParams, ctx: BuildContext | None = None):
        self.params = params

    def __call__(self, parameters, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(parameters, lr=lr, momentum=self.params.momentum, weight_decay=self.params.weight_decay)


class AdamWParams(Params):
    """Adam with decoupled weight decay (torch.optim.AdamW; weight decay 0 unless set)."""

    weight_decay: float = Field(0.0, ge=0)


class AdamW:
    def __init__(self, params: AdamWParams, ctx: BuildContext | None = None):
        self.params = params

    def __call__(self, parameters, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=self.params.weight_decay)


class ConstantParams(Params):
    """The phase's lr throughout."""


class StepParams(Params):
    """The lr times `gamma` every `step_size` steps."""

    step_size: int = Field(100, gt=0, description="steps between decays")
    gamma: float = Field(0.5, gt=0, description="decay factor")


class ExponentialParams(Params):
    """The lr times `gamma` every step."""

    gamma: float = Field(0.5, gt=0, description="decay factor per step")


class CosineParams(Params):
    """Cosine annealing from the lr to 0 over the phase's steps."""


class PlateauParams(Params):
    """The lr times `gamma` after every epoch whose mean loss did not improve (patience 0)."""

    gamma: float = Field(0.5, gt=0, description="decay factor")


class Schedule:
    """A torch scheduler made from the phase's optimizer and step count."""

    per_epoch = False

    def __init__(self, params, ctx: BuildContext | None = None):
        self.params = params

    def __call__(self, optimizer: torch.optim.Optimizer, total_steps: int):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class Step(Schedule):
    def __call__(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.StepLR(optimizer, self.params.step_size, self.params.gamma)


class Exponential(Schedule):
    def __call__(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, self.params.gamma)


class Cosine(Schedule):
    def __call__(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total_steps))


class Plateau(Schedule):
    per_epoch = True  # stepped with each epoch's mean loss

    def __call__(self, optimizer, total_steps):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=self.params.gamma, patience=0)


def register_optimizers(register) -> None:
    register("adamw", AdamW, AdamWParams)
    register("sgd", SGD, SGDParams)


def register_schedulers(register) -> None:
    register("constant", Schedule, ConstantParams)
    register("step", Step, StepParams)
    register("exponential", Exponential, ExponentialParams)
    register("cosine", Cosine, CosineParams)
    register("plateau", Plateau, PlateauParams)
