"""One training phase as it runs: its data, losses, optimizer and schedule; its steps, epochs and
checkpoints. The first step also checks what only a step shows: the student's output shape and that
each loss gives a finite scalar with a gradient, attributed to the component that broke it.
"""

from __future__ import annotations

import math
import time

import torch

from kdcore.plugin.calls import plugin_code
from kdcore.problems import KDError
from kdcore.report.console import reporter
from kdcore.stages.batches import Batch, StoreBatches, epoch_plan, loader
from kdcore.stages.train_state import (EpochStats, TrainState, any_rank, kaiming_init, loss_labels, mean_over_ranks,
                                       predicted, rng_state, set_rng_state)
from kdcore.system import dist


class PhaseLoop:
    def __init__(self, trainer, index: int, student, model, identity_hash: str):
        self.trainer, self.index, self.student, self.model = trainer, index, student, model
        self.spec, self.builder, self.folder = trainer.spec, trainer.builder, trainer.run
        self.phase = self.spec.phases[index]
        self.dataset = self.spec.datasets[self.phase.dataset]
        self.store = trainer.stage.stores()[self.phase.dataset]
        self.total = self.spec.phase_steps(index)
        self.identity_hash = identity_hash
        self.label = self.phase.name or f"phase {index} ({self.phase.dataset})"
        built = self.builder.losses(index)
        self.losses = [(label, w, fn) for label, (_, w, fn) in zip(loss_labels([n for n, _, _ in built]), built)]
        self.optimizer = self.builder.optimizer(index, student.parameters())
        self.scheduler, self.per_epoch = self.builder.scheduler(index, self.optimizer, self.total)
        self.student_origin = self.builder.origin(self.spec.student)

    def start(self, ckpt: dict | None) -> None:
        """The phase's start (ckpt None) or the checkpoint's position in it."""
        if ckpt is None:
            torch.manual_seed(self.phase.seed)
            if self.phase.init == "kaiming":
                kaiming_init(self.student)
        else:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])

    def run(self, state: TrainState, ckpt: dict | None) -> None:
        """Train the phase from `state` to its last step."""
        self.start(ckpt)
        t0, seen, checked = time.perf_counter(), 0, ckpt is not None
        with reporter.bar() as pbar:
            task = pbar.add_task(f"train {self.label}", total=self.total, completed=state.phase_step, rate="")
            while state.phase_step < self.total:
                plan, batches = self.epoch_batches(state)
                for batch in batches:
                    record = self.step(batch.to(self.trainer.device), state, check=not checked)
                    checked, seen = True, seen + batch.global_size
                    rate = seen / (time.perf_counter() - t0)
                    self.trainer.log.write("train", {**record, "samples_per_s": round(rate, 2)})
                    pbar.update(task, completed=state.phase_step, rate=f"loss {record['loss']:.4g} {rate:.1f} samples/s")
                    if state.step_in_epoch == len(plan):
                        self.end_of_epoch(state)
                    if state.phase_step % self.phase.checkpoint_every == 0 and state.phase_step < self.total:
                        self.checkpoint(state)
        self.checkpoint(state)
        if dist.is_main():
            self.folder.save_phase_weights(self.index, {"model": self.student.state_dict(), "identity_hash": self.identity_hash})

    def epoch_batches(self, state: TrainState):
        """This epoch's plan and its batches from the current step on (at most to the phase's end)."""
        layout = self.store.layout
        plan = epoch_plan(layout.num_samples, layout.block_rows, self.phase.batch_size, self.phase.shuffle_chunks,
                          self.phase.seed, state.epoch)
        make_sampler = (lambda: self.builder.sampler(self.phase.dataset)) if layout.regenerates_inputs else None
        items = StoreBatches(self.store.path, plan, self.spec.student_seq_len, make_sampler, self.dataset.seed,
                             dist.rank(), dist.world(), cache_blocks=2 * self.phase.shuffle_chunks)
        start = state.step_in_epoch
        steps = range(start, min(len(plan), start + self.total - state.phase_step))
        return plan, loader(torch.utils.data.Subset(items, steps), self.phase.workers)

    def step(self, batch: Batch, state: TrainState, check: bool = False) -> dict:
        """One optimizer step; advances `state`; returns the step's metrics record. With `check`, the
        student's output and each loss's value are checked against their contracts first."""
        positions = self.dataset.positions
        mask = batch.inputs.mask() if positions == "all" else None
        with plugin_code(self.student_origin, "forward()"):
            logits = self.model(batch.inputs, positions=positions)
        if check:
            self.check_output(logits, batch)
        terms = [(label, w, fn(logits, batch.targets, mask)) for label, w, fn in self.losses]
        if check:
            self.check_losses(terms)
        loss = sum(w * value for _, w, value in terms)
        self.optimizer.zero_grad(set_to_none=True)
        with plugin_code(self.student_origin, "backward()"):
            (loss * batch.weight).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.phase.clip or math.inf)
        if any_rank(not (torch.isfinite(loss) and torch.isfinite(grad_norm)), self.trainer.device):
            details = ", ".join(f"{label}={v.item():.4g}" for label, _, v in terms)
            self.nonfinite(state.global_step + 1, state.phase_step + 1, "the loss or its gradient is",
                           f"{details}, grad_norm={float(grad_norm):.4g}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if not self.per_epoch:
            self.scheduler.step()
        state.step_in_epoch, state.phase_step, state.global_step = (state.step_in_epoch + 1, state.phase_step + 1,
                                                                    state.global_step + 1)
        pred, teach = predicted(logits, mask), predicted(batch.targets.argmax(), mask)
        state.stats.add(loss.item(), pred, teach)
        return {"phase": self.index, "epoch": state.epoch, "step": state.global_step, "phase_step": state.phase_step,
                "loss": loss.item(), **{f"loss_{label}": v.item() for label, _, v in terms},
                "lr": lr, "grad_norm": float(grad_norm),
                "distinct_pred": len(set(pred)), "distinct_teacher": len(set(teach))}

    def check_output(self, logits, batch: Batch) -> None:
        """The student's logits: (B, V) at the last position, or (B, S, V) at every position."""
        B, V = batch.inputs.batch_size, self.store.layout.vocab_size
        expected = (B, V) if self.dataset.positions == "last" else (B, batch.inputs.seq_len, V)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected or not logits.is_floating_point():
            got = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise KDError(self.student_origin.problem(
                f"broke its contract: forward(inputs, positions='{self.dataset.positions}') must give float logits "
                f"{expected}, got {got}"))

    def check_losses(self, terms) -> None:
        """Each loss: a finite scalar tensor with a gradient to the student."""
        for (label, _, value), (_, _, fn) in zip(terms, self.losses):
            problem = None
            if not isinstance(value, torch.Tensor) or value.dim() != 0:
                problem = f"must give a scalar tensor, got {tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}"
            elif not value.requires_grad:
                problem = "gives a value with no gradient to the student (detached, or computed without it)"
            if problem:
                raise KDError(fn.origin.problem(f"broke its contract: {problem}"))

    def end_of_epoch(self, state: TrainState) -> None:
        stats = state.stats
        mean_loss = mean_over_ranks(stats.loss_sum / max(1, stats.steps), self.trainer.device)
        self.trainer.log.write("train_epoch", {
            "phase": self.index, "epoch": state.epoch, "step": state.global_step, "mean_loss": mean_loss,
            "distinct_pred": len(stats.pred), "distinct_teacher": len(stats.teacher),
        })
        if self.per_epoch:  # the same mean on every rank, so the same lr
            self.scheduler.step(mean_loss)
        state.epoch, state.step_in_epoch, state.stats = state.epoch + 1, 0, EpochStats()

    def nonfinite(self, step: int, phase_step: int, what: str, details: str = ""):
        kept = self.folder.last_checkpoint
        where = f"the last good checkpoint is kept in {kept}" if kept.exists() else "no checkpoint was written yet"
        raise KDError(f"{self.spec.source}: {self.label}: {what} not finite at step {step} (step {phase_step} of the "
                      f"phase{'; ' + details if details else ''}); training stopped, {where}. Try a lower lr or set clip.")

    def checkpoint(self, state: TrainState) -> None:
        # a finite loss can still step to non-finite weights: never let those replace a good checkpoint
        if not all(torch.isfinite(t).all() for t in self.student.parameters()):
            self.nonfinite(state.global_step, state.phase_step, "the weights after the update are")
        if dist.is_main():
            self.folder.save_checkpoint({
                "model": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(), "state": state.to_dict(),
                "identity_hash": self.identity_hash, "store_teachers": self.trainer.store_teachers,
            })
