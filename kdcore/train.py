"""Training: the student learns the teacher's stored logits, phase after phase.

State lives in `runs/<experiment>/checkpoints/last.pt` (model, optimizer, scheduler, RNG states,
phase/epoch/step and the running epoch totals), written atomically every `checkpoint_every` steps and
at each phase end; `kd train` resumes from it exactly: the batch order is a pure function of
(seed, epoch), so the step within the epoch is the data position. Each phase starts from the
previous phase's weights with a fresh optimizer and scheduler, and reseeds torch's RNG with its
`seed` (`init = "kaiming"` re-initialises the Linear layers when its phase starts). The finished
student is saved as safetensors, float-input and reverted.

Under torchrun every rank trains on rows r::W of each global batch (DDP averages the gradients);
only rank 0 writes files. The `lr` logged for a step is the one that step used; `loss` and the
distinct-class counts are rank 0's; `samples_per_s` counts whole global batches.

Testing aids (environment): KD_STEP_DELAY=seconds sleeps after every step (so a test can kill a run
mid-phase); KD_SAVE_RANK_WEIGHTS=1 makes every rank save its final weights as
student/rank<r>.safetensors.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdcore import dist
from kdcore.build import Builder
from kdcore.data import Batch, StoreBatches, epoch_plan, loader
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


# phase settings that change how training runs, not what it computes: free to change on resume
RUN_ONLY = ("workers", "checkpoint_every")


def training_identity(spec: Spec, teachers: dict[str, str | None]) -> dict:
    """What a trained student depends on: the spec's student, phases and datasets, and (`teachers`)
    the fingerprint of the teacher that generated each dataset's store. The spec alone misses a
    teacher whose weights changed at the same path: its stores regenerate with other targets."""
    data = spec.resolved()
    used = sorted({p.dataset for p in spec.phases})
    phases = [{k: v for k, v in p.items() if k not in RUN_ONLY} for p in data["phases"]]
    return {"student": data["student"], "phases": phases,
            "datasets": {k: spec.dataset_identity(k) for k in used},
            "store_teachers": {k: teachers.get(k) for k in used}}


def store_teachers(spec: Spec) -> dict[str, str | None]:
    """The teacher fingerprint each used dataset's store records (None: no readable store yet)."""
    out = {}
    for name in sorted({p.dataset for p in spec.phases}):
        try:
            out[name] = Store.open(spec.store_path(name)).attrs.get("teacher", {}).get("fingerprint")
        except KDError:
            out[name] = None
    return out


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


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write never leaves a broken checkpoint


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


def phase_start(p: int, global_step: int) -> dict:
    return {"phase": p, "epoch": 0, "step_in_epoch": 0, "phase_step": 0, "global_step": global_step}


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
        self.run_dir = spec.run_path
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.seq_len = student_seq_len(spec)
        self._identity = None
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", spec.registry, enabled=dist.is_main())

    # --- state ---
    @property
    def identity(self) -> dict:
        """`training_identity`, with the stores' teachers as they are when first asked (and again at
        the start of `train`: generation may have run in between)."""
        if self._identity is None:
            self._identity = training_identity(self.spec, store_teachers(self.spec))
        return self._identity

    @property
    def identity_hash(self) -> str:
        return spec_hash(self.identity)

    @property
    def done_file(self) -> Path:
        return self.run_dir / "student" / "train.json"

    def is_complete(self) -> bool:
        if not self.done_file.exists():
            return False
        return json.loads(self.done_file.read_text()).get("identity_hash") == self.identity_hash

    def _teacher_changes(self, saved: dict) -> str:
        old, new = saved.get("store_teachers") or {}, self.identity["store_teachers"]
        changed = [f"datasets.{k}: teacher {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v]
        return "; ".join(changed) if changed else "the stores' teachers are unchanged"

    def build_student(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.phases[0].seed)
            return self.builder.student(self.seq_len)

    def _clear(self) -> None:
        """--restart: forget checkpoints, training metrics and the trained student."""
        if dist.is_main():
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            self._truncate_metrics(0)
            self.done_file.unlink(missing_ok=True)
        dist.barrier()

    def _load_checkpoint(self):
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            if self.done_file.exists():
                raise KDError(
                    f"{self.run_dir} holds a student trained from a different spec or from stores a "
                    f"different teacher generated ({self._teacher_changes(json.loads(self.done_file.read_text()))}) "
                    f"and no checkpoint to resume; pass --restart to train again (the old student is replaced)"
                )
            return None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise KDError(f"{path}: unreadable checkpoint ({type(e).__name__}); pass --restart") from None
        if ckpt.get("identity_hash") != self.identity_hash:
            raise KDError(
                f"{path} was saved by a different training spec ({self.spec.source} changed student, "
                f"phases or datasets since, or a dataset's store was regenerated by a different teacher: "
                f"{self._teacher_changes(ckpt)}); pass --restart to train from scratch, or use a new "
                f"experiment name"
            )
        return ckpt

    def _open_store(self, dataset: str) -> Store:
        path = self.spec.store_path(dataset)
        try:
            store = Store.open(path)
        except KDError as e:
            raise KDError(f"{e}\n(run `kd generate {self.spec.source}` first)") from None
        if not store.complete:
            raise KDError(f"{store.path} is incomplete; run `kd generate {self.spec.source}` first")
        store.require_intact()  # a stat per chunk file; every read is checked against its checksum too
        if store.attrs.get("identity_hash") != spec_hash(self.spec.dataset_identity(dataset)):
            raise KDError(f"{store.path} was generated from a different datasets.{dataset} or teacher than "
                          f"{self.spec.source} has now; run `kd generate --overwrite {self.spec.source}`")
        return store

    # --- the loop ---
    def train(self, restart: bool = False) -> torch.nn.Module:
        self._identity = None
        if not restart and self.is_complete():
            return self.load_trained()
        if restart:
            self._clear()
        ckpt = self._load_checkpoint()
        dist.barrier()  # every rank has read the checkpoint before rank 0 may write a new one
        student = self.build_student().to(self.device)
        state = phase_start(0, 0)
        if ckpt is not None:
            student.load_state_dict(ckpt["model"])
            state = ckpt["state"]
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._truncate_metrics(state["global_step"])  # records past the checkpoint are redone
            if ckpt is None:
                (self.run_dir / "spec.json").write_text(json.dumps(self.spec.resolved(), indent=2))
        model = student
        if dist.world() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(student, device_ids=ids)

        for p in range(state["phase"], len(self.spec.phases)):
            if p > state["phase"]:
                state, ckpt = phase_start(p, state["global_step"]), None
            self._phase(p, student, model, state, ckpt)
        return self._finish(student)

    def _phase(self, p: int, student, model, state: dict, ckpt: dict | None) -> None:
        """Train phase p from `state`: its start (ckpt None) or the checkpoint's position in it."""
        phase = self.spec.phases[p]
        ds = self.spec.datasets[phase.dataset]
        store = self._open_store(phase.dataset)
        N = store.layout.num_samples
        total = -(-N // phase.batch_size) * phase.epochs
        if phase.max_steps is not None:
            total = min(total, phase.max_steps)
        losses = self.builder.losses(p)
        self.builder.check_phase(p, student)
        optimizer = make_optimizer(phase, student.parameters())
        scheduler = make_scheduler(phase, optimizer, total)
        if ckpt is None:
            torch.manual_seed(phase.seed)
            if phase.init == "kaiming":
                kaiming_init(student)
            stats = EpochStats()
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])
            stats = EpochStats.from_state(state.get("epoch_stats"))

        soft_seed = store.layout.produces == "soft" and store.layout.inputs == "seed"
        make_sampler = (lambda: self.builder.sampler(phase.dataset, check=False)) if soft_seed else None
        positions = ds.positions
        label = phase.name or f"phase {p} ({phase.dataset})"
        delay = float(os.environ.get("KD_STEP_DELAY", "0"))
        t0, seen = time.perf_counter(), 0
        with bar(self.progress and dist.is_main()) as pbar:
            task = pbar.add_task(f"train {label}", total=total, completed=state["phase_step"], rate="")
            while state["phase_step"] < total:
                plan = epoch_plan(N, store.layout.block_rows, phase.batch_size, phase.shuffle_chunks,
                                  phase.seed, state["epoch"])
                batches = StoreBatches(store.path, plan, self.seq_len, make_sampler, ds.seed,
                                       dist.rank(), dist.world(), cache_blocks=2 * phase.shuffle_chunks)
                start = state["step_in_epoch"]
                stop = min(len(plan), start + total - state["phase_step"])
                steps = range(start, stop)
                for k, batch in zip(steps, loader(torch.utils.data.Subset(batches, steps), phase.workers)):
                    batch: Batch = batch.to(self.device)
                    mask = batch.inputs.mask() if positions == "all" else None
                    logits = model(batch.inputs, positions=positions)
                    terms = {name: fn(logits, batch.targets, mask) for name, _, fn in losses}
                    loss = sum(w * terms[name] for name, w, _ in losses)
                    optimizer.zero_grad(set_to_none=True)
                    (loss * batch.weight).backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), phase.clip or math.inf)
                    if _any_rank(not (torch.isfinite(loss) and torch.isfinite(grad_norm)), self.device):
                        details = ", ".join(f"{n}={v.item():.4g}" for n, v in terms.items())
                        self._nonfinite(label, state["global_step"] + 1, state["phase_step"] + 1, "the loss or its gradient is",
                                        f"{details}, grad_norm={float(grad_norm):.4g}")
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    if phase.scheduler != "plateau":
                        scheduler.step()
                    state["step_in_epoch"] = k + 1
                    state["phase_step"] += 1
                    state["global_step"] += 1
                    seen += batch.global_size
                    pred, teach = _predicted(logits, mask), _predicted_targets(batch, mask)
                    stats.add(loss.item(), pred, teach)
                    rate = seen / (time.perf_counter() - t0)
                    self.log.write("train", {
                        "phase": p, "epoch": state["epoch"], "step": state["global_step"], "phase_step": state["phase_step"],
                        "loss": loss.item(), **{f"loss_{n}": v.item() for n, v in terms.items()},
                        "lr": lr, "grad_norm": float(grad_norm), "samples_per_s": round(rate, 2),
                        "distinct_pred": len(set(pred)), "distinct_teacher": len(set(teach)),
                    })
                    pbar.update(task, completed=state["phase_step"], rate=f"loss {loss.item():.4g} {rate:.1f} samples/s")
                    if state["step_in_epoch"] == len(plan):
                        self._end_epoch(p, phase, state, stats, scheduler)
                        stats = EpochStats()
                    if state["phase_step"] % phase.checkpoint_every == 0 and state["phase_step"] < total:
                        self._checkpoint(student, optimizer, scheduler, state, stats, label)
                    if delay:
                        time.sleep(delay)
        self._checkpoint(student, optimizer, scheduler, state, stats, label)
        if dist.is_main():
            atomic_save({"model": student.state_dict(), "identity_hash": self.identity_hash},
                        self.ckpt_dir / f"phase{p}.pt")
            from kdcore.plots import plot_training

            plot_training(self.run_dir / "metrics.jsonl", self.run_dir / "training.png")

    def _end_epoch(self, p: int, phase: PhaseSpec, state: dict, stats: EpochStats, scheduler) -> None:
        mean_loss = _mean_over_ranks(stats.loss_sum / max(1, stats.steps), self.device)
        self.log.write("train_epoch", {
            "phase": p, "epoch": state["epoch"], "step": state["global_step"], "mean_loss": mean_loss,
            "distinct_pred": len(stats.pred), "distinct_teacher": len(stats.teacher),
        })
        if phase.scheduler == "plateau":  # the same mean on every rank, so the same lr
            scheduler.step(mean_loss)
        state["epoch"] += 1
        state["step_in_epoch"] = 0

    def _nonfinite(self, label: str, step: int, phase_step: int, what: str, details: str = ""):
        kept = self.ckpt_dir / "last.pt"
        where = f"the last good checkpoint is kept in {kept}" if kept.exists() else "no checkpoint was written yet"
        raise KDError(
            f"{self.spec.source}: {label}: {what} not finite at step {step} (step {phase_step} of the phase"
            f"{'; ' + details if details else ''}); training stopped, {where}. Try a lower lr or set clip."
        )

    def _checkpoint(self, student, optimizer, scheduler, state: dict, stats: EpochStats, label: str) -> None:
        # a finite loss can still step to non-finite weights: never let those replace a good checkpoint
        if not all(torch.isfinite(t).all() for t in student.parameters()):
            self._nonfinite(label, state["global_step"], state["phase_step"], "the weights after the update are")
        if not dist.is_main():
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_save({
            "model": student.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(), "state": {**state, "epoch_stats": stats.state()}, "identity_hash": self.identity_hash,
            "store_teachers": self.identity["store_teachers"],
        }, self.ckpt_dir / "last.pt")

    def _truncate_metrics(self, step: int) -> None:
        """Drop training records after `step` (they will be redone); keep other stages' records."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = [r for r in read_metrics(path) if r.get("stage") not in ("train", "train_epoch") or r["step"] <= step]
        tmp = path.with_name("metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, path)

    def _finish(self, student) -> torch.nn.Module:
        from safetensors.torch import save_model

        student = student.cpu()
        out = self.run_dir / "student"
        if os.environ.get("KD_SAVE_RANK_WEIGHTS"):
            out.mkdir(parents=True, exist_ok=True)
            save_model(student, str(out / f"rank{dist.rank()}.safetensors"))
        if dist.is_main():
            from kd_plugins.students import save_reverted

            out.mkdir(parents=True, exist_ok=True)
            save_model(student, str(out / "float_student.safetensors"))
            save_reverted(student.revert(), self.run_dir / "reverted")
            self.done_file.write_text(json.dumps({
                "identity_hash": self.identity_hash, "store_teachers": self.identity["store_teachers"],
                "student": self.spec.student.resolved(),
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
