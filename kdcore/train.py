"""Training: the student learns the teacher's stored logits, phase after phase.

    train -> start_or_resume -> for each phase: start_phase, then step ... end_of_epoch ... -> finish

Each phase starts from the previous phase's weights with a fresh optimizer and scheduler, and reseeds
torch's RNG with its `seed` (`init = "kaiming"` re-initialises the Linear layers when its phase
starts). `checkpoints/last.pt` holds everything an exact resume needs (see kdcore.runfolder); the
batch order is a pure function of (seed, epoch), so the step within the epoch is the data position.

Under torchrun every rank trains on rows r::W of each global batch (DDP averages the gradients);
only rank 0 writes files. The `lr` logged for a step is the one that step used; `loss` and the
distinct-class counts are rank 0's; `samples_per_s` counts whole global batches.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from kdcore import dist
from kdcore.build import Builder
from kdcore.data import Batch, StoreBatches, epoch_plan, loader
from kdcore.errors import KDError
from kdcore.metrics import MetricsLog
from kdcore.progress import bar
from kdcore.runfolder import RunFolder, datasets_in_use
from kdcore.spec import PhaseSpec, Spec
from kdcore.store import Store


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def student_seq_len(spec: Spec) -> int:
    """Fixed-length students see the longest sequence of any phase; shorter data is padded."""
    return max(spec.datasets[p.dataset].max_seq_len for p in spec.phases)


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


@dataclass
class Phase:
    """One phase as it runs: its settings, data, losses, optimizer and scheduler."""

    index: int
    spec: PhaseSpec
    label: str
    store: Store
    total: int  # steps
    losses: list  # (label, weight, loss) in spec order; the label is unique within the phase
    optimizer: torch.optim.Optimizer
    scheduler: object
    per_epoch: bool  # the scheduler steps once per epoch with the mean loss
    positions: str


def loss_labels(names: list[str]) -> list[str]:
    """Each loss's name, or name[j] where the phase uses the same loss twice (forward and reverse KL)."""
    return [n if names.count(n) == 1 else f"{n}[{j}]" for j, n in enumerate(names)]


def training_store(spec: Spec, dataset: str) -> Store:
    """The dataset's store, refused unless it is complete, intact and the one `spec` would generate."""
    try:
        store = Store.open(spec.store_path(dataset))
    except KDError as e:
        raise KDError(f"{e}\n(run `kd generate {spec.source}` first)") from None
    if not store.complete:
        raise KDError(f"{store.path} is incomplete; run `kd generate {spec.source}` first")
    store.require_intact()  # a stat per chunk file; every read is checked against its checksum too
    changed = store.differences(spec, dataset)
    if changed:
        raise KDError(f"{store.path} was generated from a different datasets.{dataset} or teacher than "
                      f"{spec.source} has now ({'; '.join(changed)}); run `kd generate --overwrite {spec.source}`")
    return store


def _any_rank(flag: bool, device) -> bool:
    """True if `flag` is true on any rank (every rank gets the same answer)."""
    if not dist.active():
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _mean_over_ranks(value: float, device) -> float:
    if not dist.active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / dist.world()


class Trainer:
    def __init__(self, spec: Spec, builder: Builder | None = None, progress: bool = True):
        dist.init()  # before anything asks which rank this is
        self.spec, self.builder = spec, builder or Builder(spec)
        self.progress = progress
        self.device = training_device()
        self.run = RunFolder(spec)
        self.seq_len = student_seq_len(spec)
        self.log = MetricsLog(self.run.metrics, spec.registry, enabled=dist.is_main())

    @property
    def run_dir(self):
        return self.run.path

    @property
    def identity(self) -> dict:
        return self.run.identity

    def is_complete(self) -> bool:
        return self.run.is_complete()

    def build_student(self) -> torch.nn.Module:
        """The student with its initial weights (seeded by phase 0's seed); no teacher weights read."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.phases[0].seed)
            return self.builder.student(self.seq_len)

    # --- the loop ---
    def train(self, restart: bool = False) -> torch.nn.Module:
        with self.run.lock():
            return self._train(restart)

    def _train(self, restart: bool) -> torch.nn.Module:
        self.run.refresh()
        if not restart and self.is_complete():
            return self.load_trained()
        self.check()  # everything that can refuse, before --restart deletes anything
        ckpt = None if restart else self.run.load_checkpoint()
        dist.barrier()  # every rank has read the checkpoint before rank 0 clears or writes one
        if restart and dist.is_main():
            self.run.clear()
        student, state = self.start_or_resume(ckpt)
        model = student
        if dist.world() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(student, device_ids=ids)
        for p in range(state.phase, len(self.spec.phases)):
            if p > state.phase:
                state, ckpt = TrainState(phase=p, global_step=state.global_step), None
            self.train_phase(p, student, model, state, ckpt)
        return self.finish(student)

    def check(self) -> None:
        """The stores exist, are complete and match the spec, and each phase fits the student."""
        for name in datasets_in_use(self.spec):
            training_store(self.spec, name)
        student = self.build_student()
        for p in range(len(self.spec.phases)):
            self.builder.check_phase(p, student)
            self.builder.losses(p)
            self.builder.scheduler(p, self.builder.optimizer(p, student.parameters()), 1)

    def start_or_resume(self, ckpt: dict | None) -> tuple[torch.nn.Module, TrainState]:
        student = self.build_student().to(self.device)
        state = TrainState()
        if ckpt is not None:
            student.load_state_dict(ckpt["model"])
            state = TrainState.from_dict(ckpt["state"])
        else:  # from scratch: a student cut from the teacher gets its weights now, once
            self.builder.init_student(student)
        if dist.is_main():
            self.run.start(state.global_step, fresh=ckpt is None)
        return student, state

    def start_phase(self, p: int, student, state: TrainState, ckpt: dict | None) -> Phase:
        """Phase p's data, losses, optimizer and scheduler: fresh at its start, or as checkpointed."""
        spec = self.spec.phases[p]
        store = training_store(self.spec, spec.dataset)
        total = -(-store.layout.num_samples // spec.batch_size) * spec.epochs
        if spec.max_steps is not None:
            total = min(total, spec.max_steps)
        built = self.builder.losses(p)
        losses = [(label, w, fn) for label, (_, w, fn) in zip(loss_labels([n for n, _, _ in built]), built)]
        optimizer = self.builder.optimizer(p, student.parameters())
        scheduler, per_epoch = self.builder.scheduler(p, optimizer, total)
        if ckpt is None:
            torch.manual_seed(spec.seed)
            if spec.init == "kaiming":
                kaiming_init(student)
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])
        label = spec.name or f"phase {p} ({spec.dataset})"
        positions = self.spec.datasets[spec.dataset].positions
        return Phase(p, spec, label, store, total, losses, optimizer, scheduler, per_epoch, positions)

    def train_phase(self, p: int, student, model, state: TrainState, ckpt: dict | None) -> None:
        """Train phase p from `state`: its start (ckpt None) or the checkpoint's position in it."""
        phase = self.start_phase(p, student, state, ckpt)
        t0, seen = time.perf_counter(), 0
        with bar(self.progress and dist.is_main()) as pbar:
            task = pbar.add_task(f"train {phase.label}", total=phase.total, completed=state.phase_step, rate="")
            while state.phase_step < phase.total:
                plan, batches = self.epoch_batches(phase, state)
                for batch in batches:
                    record = self.step(phase, student, model, batch.to(self.device), state)
                    seen += batch.global_size
                    rate = seen / (time.perf_counter() - t0)
                    self.log.write("train", {**record, "samples_per_s": round(rate, 2)})
                    pbar.update(task, completed=state.phase_step, rate=f"loss {record['loss']:.4g} {rate:.1f} samples/s")
                    if state.step_in_epoch == len(plan):
                        self.end_of_epoch(phase, state)
                    if state.phase_step % phase.spec.checkpoint_every == 0 and state.phase_step < phase.total:
                        self.checkpoint(student, phase, state)
        self.checkpoint(student, phase, state)
        if dist.is_main():
            self.run.save_phase_weights(p, student)

    def epoch_batches(self, phase: Phase, state: TrainState):
        """This epoch's plan and its batches from the current step on (at most to the phase's end)."""
        ds = self.spec.datasets[phase.spec.dataset]
        layout = phase.store.layout
        plan = epoch_plan(layout.num_samples, layout.block_rows, phase.spec.batch_size, phase.spec.shuffle_chunks,
                          phase.spec.seed, state.epoch)
        regenerate = layout.produces == "soft" and layout.inputs == "seed"
        make_sampler = (lambda: self.builder.sampler(phase.spec.dataset, check=False)) if regenerate else None
        items = StoreBatches(phase.store.path, plan, self.seq_len, make_sampler, ds.seed, dist.rank(), dist.world(),
                             cache_blocks=2 * phase.spec.shuffle_chunks)
        start = state.step_in_epoch
        steps = range(start, min(len(plan), start + phase.total - state.phase_step))
        return plan, loader(torch.utils.data.Subset(items, steps), phase.spec.workers)

    def step(self, phase: Phase, student, model, batch: Batch, state: TrainState) -> dict:
        """One optimizer step; advances `state`; returns the step's metrics record."""
        mask = batch.inputs.mask() if phase.positions == "all" else None
        logits = model(batch.inputs, positions=phase.positions)
        terms = [(label, w, fn(logits, batch.targets, mask)) for label, w, fn in phase.losses]
        loss = sum(w * value for _, w, value in terms)
        phase.optimizer.zero_grad(set_to_none=True)
        (loss * batch.weight).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), phase.spec.clip or math.inf)
        if _any_rank(not (torch.isfinite(loss) and torch.isfinite(grad_norm)), self.device):
            details = ", ".join(f"{label}={v.item():.4g}" for label, _, v in terms)
            self.nonfinite(phase, state.global_step + 1, state.phase_step + 1, "the loss or its gradient is",
                           f"{details}, grad_norm={float(grad_norm):.4g}")
        lr = phase.optimizer.param_groups[0]["lr"]
        phase.optimizer.step()
        if not phase.per_epoch:
            phase.scheduler.step()
        state.step_in_epoch += 1
        state.phase_step += 1
        state.global_step += 1
        pred, teach = _predicted(logits, mask), _predicted(batch.targets.argmax(), mask)
        state.stats.add(loss.item(), pred, teach)
        return {"phase": phase.index, "epoch": state.epoch, "step": state.global_step, "phase_step": state.phase_step,
                "loss": loss.item(), **{f"loss_{label}": v.item() for label, _, v in terms},
                "lr": lr, "grad_norm": float(grad_norm),
                "distinct_pred": len(set(pred)), "distinct_teacher": len(set(teach))}

    def end_of_epoch(self, phase: Phase, state: TrainState) -> None:
        stats = state.stats
        mean_loss = _mean_over_ranks(stats.loss_sum / max(1, stats.steps), self.device)
        self.log.write("train_epoch", {
            "phase": phase.index, "epoch": state.epoch, "step": state.global_step, "mean_loss": mean_loss,
            "distinct_pred": len(stats.pred), "distinct_teacher": len(stats.teacher),
        })
        if phase.per_epoch:  # the same mean on every rank, so the same lr
            phase.scheduler.step(mean_loss)
        state.epoch += 1
        state.step_in_epoch = 0
        state.stats = EpochStats()

    def nonfinite(self, phase: Phase, step: int, phase_step: int, what: str, details: str = ""):
        kept = self.run.last_checkpoint
        where = f"the last good checkpoint is kept in {kept}" if kept.exists() else "no checkpoint was written yet"
        raise KDError(
            f"{self.spec.source}: {phase.label}: {what} not finite at step {step} (step {phase_step} of the phase"
            f"{'; ' + details if details else ''}); training stopped, {where}. Try a lower lr or set clip."
        )

    def checkpoint(self, student, phase: Phase, state: TrainState) -> None:
        # a finite loss can still step to non-finite weights: never let those replace a good checkpoint
        if not all(torch.isfinite(t).all() for t in student.parameters()):
            self.nonfinite(phase, state.global_step, state.phase_step, "the weights after the update are")
        if dist.is_main():
            self.run.save_checkpoint({
                "model": student.state_dict(), "optimizer": phase.optimizer.state_dict(),
                "scheduler": phase.scheduler.state_dict(), "rng": rng_state(), "state": state.to_dict(),
            })

    def finish(self, student) -> torch.nn.Module:
        """Save the float student, its reverted form and train.json (rank 0); tell plugins on every rank."""
        from kdcore.artifact import plugin_refs, save_student

        student = student.cpu()
        if dist.is_main():
            teacher = self.builder.teacher
            tokenizer = teacher.tokenizer() if hasattr(teacher, "tokenizer") else None

            def save_reverted(directory):
                save_student(student.revert(), directory, student=self.spec.student.resolved(),
                             vocab_size=self.builder.vocab_size, max_seq_len=self.seq_len,
                             plugins=plugin_refs(self.spec), tokenizer=tokenizer)

            self.run.save_student(student, {"student": self.spec.student.resolved(), "seq_len": self.seq_len,
                                            "parameters": count_parameters(student)}, save_reverted)
        dist.barrier()  # rank 0 has saved it before any rank's plugins see it
        self.spec.registry.pm.hook.kd_on_trained(student=student, run_dir=self.run.path, rank=dist.rank())
        return student

    def load_trained(self) -> torch.nn.Module:
        return self.run.load_float_student(self.build_student())


def _predicted(argmax_or_logits: torch.Tensor, mask) -> list[int]:
    """Distinct-class bookkeeping: the argmax tokens at valid positions."""
    t = argmax_or_logits.detach()
    if t.is_floating_point():
        t = t.argmax(-1)
    return (t[mask] if mask is not None else t.reshape(-1)).tolist()
