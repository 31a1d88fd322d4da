"""Training: the student learns the teacher's stored logits, phase after phase.

State lives in `runs/<experiment>/checkpoints/last.pt` (model, optimizer, scheduler, RNG states,
phase/epoch/step), written atomically every `checkpoint_every` steps and at each phase end; `kd train`
resumes from it exactly. The finished student is saved as safetensors, float-input and reverted.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from kdcore import dist
from kdcore.build import Builder
from kdcore.data import StoreBatches, epoch_plan, loader
from kdcore.errors import KDError
from kdcore.metrics import MetricsLog, read_metrics
from kdcore.progress import bar
from kdcore.spec import PhaseSpec, Spec, spec_hash
from kdcore.store import Store


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def student_seq_len(spec: Spec) -> int:
    """Fixed-length students see the longest sequence of any phase; shorter data is padded."""
    return max(spec.datasets[p.dataset].max_seq_len for p in spec.phases)


def training_identity(spec: Spec) -> dict:
    data = spec.resolved()
    used = {p.dataset for p in spec.phases}
    return {"student": data["student"], "phases": data["phases"],
            "datasets": {k: spec.dataset_identity(k) for k in sorted(used)}}


def make_optimizer(phase: PhaseSpec, params):
    if phase.optimizer == "sgd":
        return torch.optim.SGD(params, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)


def make_scheduler(phase: PhaseSpec, optimizer, total_steps: int):
    s = phase.scheduler
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, phase.step_size, phase.gamma)
    if s == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, phase.gamma)
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total_steps))
    if s == "plateau":  # stepped once per epoch with the epoch's mean loss
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=phase.gamma, patience=0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def kaiming_init(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write never leaves a broken checkpoint


class Trainer:
    def __init__(self, spec: Spec, builder: Builder | None = None, progress: bool = True):
        self.spec, self.builder = spec, builder or Builder(spec)
        self.progress = progress
        self.run_dir = spec.run_path
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.seq_len = student_seq_len(spec)
        self.identity = training_identity(spec)
        self.identity_hash = spec_hash(self.identity)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", spec.registry, enabled=dist.is_main())

    # --- state ---
    @property
    def done_file(self) -> Path:
        return self.run_dir / "student" / "train.json"

    def is_complete(self) -> bool:
        if not self.done_file.exists():
            return False
        return json.loads(self.done_file.read_text()).get("identity_hash") == self.identity_hash

    def build_student(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.phases[0].seed)
            return self.builder.student(self.seq_len)

    def _load_checkpoint(self, restart: bool):
        path = self.ckpt_dir / "last.pt"
        if restart:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            self.done_file.unlink(missing_ok=True)
            return None
        if not path.exists():
            if self.done_file.exists():
                raise KDError(
                    f"{self.run_dir} holds a student trained from a different spec and no checkpoint to "
                    f"resume; pass --restart to train again (the old student is replaced)"
                )
            return None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise KDError(f"{path}: unreadable checkpoint ({type(e).__name__}); pass --restart") from None
        if ckpt.get("identity_hash") != self.identity_hash:
            raise KDError(
                f"{path} was saved by a different training spec ({self.spec.source} changed student or "
                f"phases since); pass --restart to train from scratch, or use a new experiment name"
            )
        return ckpt

    # --- the loop ---
    def train(self, restart: bool = False) -> torch.nn.Module:
        dist.init()
        if not restart and self.is_complete():
            return self.load_trained()
        ckpt = self._load_checkpoint(restart)
        student = self.build_student()
        state = {"phase": 0, "epoch": 0, "step_in_epoch": 0, "global_step": 0, "phase_step": 0}
        optim_state = sched_state = None
        if ckpt is not None:
            student.load_state_dict(ckpt["model"])
            state = ckpt["state"]
            optim_state, sched_state = ckpt["optimizer"], ckpt["scheduler"]
            self._truncate_metrics(state["global_step"])
        elif dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "spec.json").write_text(json.dumps(self.spec.resolved(), indent=2))
        model = student
        if dist.world() > 1:
            model = torch.nn.parallel.DistributedDataParallel(student)

        for p in range(state["phase"], len(self.spec.phases)):
            if p != state["phase"]:
                state = {"phase": p, "epoch": 0, "step_in_epoch": 0, "global_step": state["global_step"], "phase_step": 0}
                optim_state = sched_state = None
                rng = None
            else:
                rng = ckpt["rng"] if ckpt is not None else None
            self._phase(p, student, model, state, optim_state, sched_state, rng)
            ckpt = None
        return self._finish(student)

    def _phase(self, p, student, model, state, optim_state, sched_state, rng):
        phase = self.spec.phases[p]
        ds = self.spec.datasets[phase.dataset]
        store = Store.open(self.spec.store_path(phase.dataset))
        if not store.complete:
            raise KDError(f"{store.path} is incomplete; run `kd generate {self.spec.source}` first")
        N = store.layout.num_samples
        per_epoch = -(-N // phase.batch_size)
        total = per_epoch * phase.epochs if phase.max_steps is None else min(per_epoch * phase.epochs, phase.max_steps)
        losses = self.builder.losses(p)
        optimizer = make_optimizer(phase, student.parameters())
        scheduler = make_scheduler(phase, optimizer, total)
        if optim_state is None:
            torch.manual_seed(phase.seed)
            if phase.init == "kaiming":
                kaiming_init(student)
        else:
            optimizer.load_state_dict(optim_state)
            scheduler.load_state_dict(sched_state)
        if rng is not None:
            set_rng_state(rng)

        make_sampler = (lambda: self.builder.sampler(phase.dataset)) if store.layout.produces == "soft" and store.layout.inputs == "seed" else None
        positions = ds.positions
        label = phase.name or f"phase {p} ({phase.dataset})"
        t0, seen = time.perf_counter(), 0
        with bar(self.progress and dist.is_main()) as pbar:
            task = pbar.add_task(f"train {label}", total=total, completed=state["phase_step"], rate="")
            while state["phase_step"] < total:
                plan = epoch_plan(N, store.layout.block_rows, phase.batch_size, phase.shuffle_chunks,
                                  phase.seed, state["epoch"])
                batches = StoreBatches(store.path, plan, self.seq_len, make_sampler, ds.seed,
                                       dist.rank(), dist.world())
                epoch_loss, epoch_n, student_classes, teacher_classes = 0.0, 0, set(), set()
                indices = range(state["step_in_epoch"], len(plan))
                for k, batch in zip(indices, loader(torch.utils.data.Subset(batches, list(indices)))):
                    if state["phase_step"] >= total:
                        break
                    mask = batch.inputs.mask() if positions == "all" else None
                    logits = model(batch.inputs, positions=positions)
                    terms = {name: fn(logits, batch.targets, mask) for name, _, fn in losses}
                    loss = sum(w * terms[name] for name, w, _ in losses)
                    if not torch.isfinite(loss):
                        self._nonfinite(label, state, terms)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), phase.clip or math.inf)
                    optimizer.step()
                    if phase.scheduler != "plateau":
                        scheduler.step()
                    state["step_in_epoch"] = k + 1
                    state["phase_step"] += 1
                    state["global_step"] += 1
                    seen += batch.inputs.batch_size
                    epoch_loss += loss.item()
                    epoch_n += 1
                    pred = _predicted(logits, mask)
                    teach = _predicted_targets(batch, mask)
                    student_classes.update(pred)
                    teacher_classes.update(teach)
                    rate = seen / (time.perf_counter() - t0)
                    self.log.write("train", {
                        "phase": p, "epoch": state["epoch"], "step": state["global_step"], "phase_step": state["phase_step"],
                        "loss": loss.item(), **{f"loss_{n}": v.item() for n, v in terms.items()},
                        "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                        "samples_per_s": round(rate, 2), "distinct_pred": len(set(pred)), "distinct_teacher": len(set(teach)),
                    })
                    pbar.update(task, completed=state["phase_step"], rate=f"loss {loss.item():.4g} {rate:.1f} samples/s")
                    if state["phase_step"] % phase.checkpoint_every == 0 and state["phase_step"] < total:
                        self._checkpoint(student, optimizer, scheduler, state)
                if state["step_in_epoch"] >= len(plan):
                    self.log.write("train_epoch", {
                        "phase": p, "epoch": state["epoch"], "step": state["global_step"],
                        "mean_loss": epoch_loss / max(1, epoch_n), "distinct_pred": len(student_classes),
                        "distinct_teacher": len(teacher_classes),
                    })
                    if phase.scheduler == "plateau" and epoch_n:
                        scheduler.step(epoch_loss / epoch_n)
                    state["epoch"] += 1
                    state["step_in_epoch"] = 0
        self._checkpoint(student, optimizer, scheduler, state)
        if dist.is_main():
            atomic_save({"model": student.state_dict(), "identity_hash": self.identity_hash},
                        self.ckpt_dir / f"phase{p}.pt")
            from kdcore.plots import plot_training

            plot_training(self.run_dir / "metrics.jsonl", self.run_dir / "training.png")

    def _nonfinite(self, label, state, terms):
        values = ", ".join(f"{n}={v.item():.4g}" for n, v in terms.items())
        kept = self.ckpt_dir / "last.pt"
        where = f"the last good checkpoint is kept in {kept}" if kept.exists() else "no checkpoint was written yet"
        raise KDError(
            f"{self.spec.source}: {label}: loss is not finite at step {state['global_step'] + 1} ({values}); "
            f"training stopped, {where}. Try a lower lr or set clip."
        )

    def _checkpoint(self, student, optimizer, scheduler, state) -> None:
        if not dist.is_main():
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_save({
            "model": student.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(), "state": dict(state), "identity_hash": self.identity_hash,
        }, self.ckpt_dir / "last.pt")

    def _truncate_metrics(self, step: int) -> None:
        """Drop records written after the checkpoint we resume from: they will be redone."""
        path = self.run_dir / "metrics.jsonl"
        if not dist.is_main() or not path.exists():
            return
        keep = [r for r in read_metrics(path) if r.get("stage") not in ("train", "train_epoch") or r["step"] <= step]
        tmp = path.with_name("metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, path)

    def _finish(self, student) -> torch.nn.Module:
        if dist.is_main():
            from safetensors.torch import save_model

            from kd_plugins.students import save_reverted

            out = self.run_dir / "student"
            out.mkdir(parents=True, exist_ok=True)
            save_model(student, str(out / "float_student.safetensors"))
            save_reverted(student.revert(), self.run_dir / "reverted")
            self.done_file.write_text(json.dumps({
                "identity_hash": self.identity_hash, "student": self.spec.student.resolved(),
                "seq_len": self.seq_len, "parameters": count_parameters(student),
            }, indent=2))
        dist.barrier()
        return student

    def load_trained(self) -> torch.nn.Module:
        from safetensors.torch import load_model

        student = self.build_student()
        load_model(student, str(self.run_dir / "student" / "float_student.safetensors"))
        return student


def _predicted(logits: torch.Tensor, mask) -> list[int]:
    pred = logits.detach().argmax(-1)
    return (pred[mask] if mask is not None else pred.reshape(-1)).tolist()


def _predicted_targets(batch, mask) -> list[int]:
    arg = batch.targets.argmax()
    return (arg[mask] if mask is not None else arg.reshape(-1)).tolist()
