"""A run's folder, `runs/<experiment>/`: every path in it is named here, and every file training and
evaluation write there is written here (whole or not at all).

    spec.json                  the resolved spec the run started from
    checkpoints/last.pt        model, optimizer, scheduler, RNG states and position (exact resume)
    checkpoints/phase<i>.pt    the weights at the end of phase i
    metrics.jsonl              one JSON record per step, epoch, generation and evaluation
    training.png               the training curves
    student/                   float_student.safetensors and train.json (written last: "trained")
    reverted/                  the student on token ids, as `kdcore.run.artifact` saves it
    eval/                      report.json, report.md and the figures of the evaluation

What a trained student or a report depends on (their identity) is the stages' concern
(`kdcore.stages.train`, `kdcore.stages.evaluate`); this module stores and reads it.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from kdcore.config.spec import Spec
from kdcore.problems import KDError
from kdcore.run.metrics_log import read_metrics
from kdcore.system import dist
from kdcore.system.files import save_atomic, usual_permissions, write_atomic
from kdcore.system.locks import hold


class RunFolder:
    def __init__(self, spec_or_path: Spec | Path):
        self.path = spec_or_path.run_path if isinstance(spec_or_path, Spec) else Path(spec_or_path)
        self.spec_json = self.path / "spec.json"
        self.checkpoints = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last.pt"
        self.student_dir = self.path / "student"
        self.train_record = self.student_dir / "train.json"  # written last: its presence means "trained"
        self.float_student = self.student_dir / "float_student.safetensors"
        self.reverted = self.path / "reverted"
        self.metrics = self.path / "metrics.jsonl"
        self.training_plot = self.path / "training.png"
        self.eval_dir = self.path / "eval"
        self.report_json = self.eval_dir / "report.json"
        self.report_md = self.eval_dir / "report.md"

    def phase_weights(self, p: int) -> Path:
        return self.checkpoints / f"phase{p}.pt"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer per run folder (`kdcore.system.locks`): a second `kd train` or `kd eval` on the
        same run is refused, naming the holder. Rank 0 holds it; every rank stops when it is held elsewhere."""
        with ExitStack() as stack:
            error = None
            if dist.is_main():
                try:
                    stack.enter_context(hold(self.path, f"run {self.path}"))
                except KDError as e:
                    error = str(e)
            error = dist.broadcast_object(error)
            if error:
                raise KDError(error)
            yield

    # --- records ---
    def trained(self) -> dict | None:
        """The record of a finished training (student/train.json), or None."""
        return self._json(self.train_record, "pass --restart to train again")

    def report(self) -> dict | None:
        """The evaluation report (eval/report.json), or None."""
        return self._json(self.report_json, "run `kd eval` again")

    def _json(self, path: Path, fix: str) -> dict | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise KDError(f"{path}: unreadable; {fix}") from None
        if not isinstance(data, dict):
            raise KDError(f"{path}: not a record (a JSON object); {fix}")
        return data

    # --- checkpoints ---
    def load_checkpoint(self) -> dict | None:
        """The last checkpoint as saved, or None where there is none."""
        import torch

        if not self.last_checkpoint.exists():
            return None
        try:
            return torch.load(self.last_checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:
            raise KDError(f"{self.last_checkpoint}: unreadable checkpoint ({type(e).__name__}); pass --restart") from None

    def save_checkpoint(self, ckpt: dict) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_atomic(ckpt, self.last_checkpoint)

    def save_phase_weights(self, p: int, weights: dict) -> None:
        save_atomic(weights, self.phase_weights(p))

    # --- starting ---
    def start(self, step: int, resolved_spec: dict | None) -> None:
        """Before the first step: drop metrics records past `step` (they are redone) and, from
        scratch, record the spec the run starts from."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.truncate_metrics(step)
        if resolved_spec is not None:
            write_atomic(self.spec_json, json.dumps(resolved_spec, indent=2))

    def clear(self) -> None:
        """--restart: forget checkpoints, training records and the trained student."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        self.truncate_metrics(0)
        self.train_record.unlink(missing_ok=True)

    def truncate_metrics(self, step: int) -> None:
        """Drop training records after `step`; keep other stages' records."""
        if not self.metrics.exists():
            return
        keep = [r for r in read_metrics(self.metrics) if r.get("stage") not in ("train", "train_epoch") or r["step"] <= step]
        write_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))

    # --- the trained student ---
    def save_student(self, student, record: dict, save_reverted) -> None:
        """The float student, its reverted form (`save_reverted(directory)`), then train.json last."""
        from safetensors.torch import save_model

        self.student_dir.mkdir(parents=True, exist_ok=True)
        self.train_record.unlink(missing_ok=True)  # a kill below leaves the run untrained, not half-saved
        save_model(student, str(self.float_student))
        usual_permissions(self.student_dir)  # safetensors writes 0600
        save_reverted(self.reverted)
        write_atomic(self.train_record, json.dumps(record, indent=2))

    def load_float_student(self, student):
        from safetensors.torch import load_model

        load_model(student, str(self.float_student))
        return student

    # --- the evaluation ---
    def write_report(self, report: dict, markdown: str) -> None:
        self.eval_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.report_json, json.dumps(report, indent=2))
        write_atomic(self.report_md, markdown)
