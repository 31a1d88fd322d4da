"""What training carries from step to step and across a kill: the position (`TrainState`), the
epoch's running totals (`EpochStats`), every RNG's state; and the small pieces a step needs."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from kdcore.system import dist


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kaiming_init(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def training_device() -> torch.device:
    """KD_DEVICE if set, else this rank's GPU, else the CPU."""
    if os.environ.get("KD_DEVICE"):
        return torch.device(os.environ["KD_DEVICE"])
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def rng_state() -> dict:
    """Every global RNG, as types `torch.load(weights_only=True)` accepts (no numpy arrays)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class EpochStats:
    """Running totals of the current epoch. Checkpointed, so a resumed epoch reports (and the plateau
    scheduler sees) the same mean loss as an uninterrupted one."""

    loss_sum: float = 0.0
    steps: int = 0
    pred: set = field(default_factory=set)
    teacher: set = field(default_factory=set)

    def add(self, loss: float, pred: list[int], teacher: list[int]) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.pred.update(pred)
        self.teacher.update(teacher)

    def state(self) -> dict:
        return {"loss_sum": self.loss_sum, "steps": self.steps, "pred": sorted(self.pred), "teacher": sorted(self.teacher)}

    @classmethod
    def from_state(cls, s: dict | None) -> "EpochStats":
        s = s or {}
        return cls(s.get("loss_sum", 0.0), s.get("steps", 0), set(s.get("pred", [])), set(s.get("teacher", [])))


@dataclass
class TrainState:
    """Where training is: checkpointed as a plain dict, so `torch.load(weights_only=True)` reads it."""

    phase: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    phase_step: int = 0
    global_step: int = 0
    stats: EpochStats = field(default_factory=EpochStats)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["epoch_stats"] = self.stats.state()
        del out["stats"]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        keys = ("phase", "epoch", "step_in_epoch", "phase_step", "global_step")
        return cls(**{k: d[k] for k in keys}, stats=EpochStats.from_state(d.get("epoch_stats")))


def loss_labels(names: list[str]) -> list[str]:
    """Each loss's name, or name[j] where the phase uses the same loss twice (forward and reverse KL)."""
    return [n if names.count(n) == 1 else f"{n}[{j}]" for j, n in enumerate(names)]


def any_rank(flag: bool, device) -> bool:
    """True if `flag` is true on any rank (every rank gets the same answer)."""
    if not dist.active():
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(value: float, device) -> float:
    if not dist.active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / dist.world()


def predicted(argmax_or_logits: torch.Tensor, mask) -> list[int]:
    """Distinct-class bookkeeping: the argmax tokens at valid positions."""
    t = argmax_or_logits.detach()
    if t.is_floating_point():
        t = t.argmax(-1)
    return (t[mask] if mask is not None else t.reshape(-1)).tolist()
