"""The experiment spec: what a TOML file says, as pydantic models, and the figures derived from it.

Every table subclasses `Params` (unknown keys, loose types and non-finite floats refused). A
component is named by a reference (`TeacherRef`, `SamplerRef`, ...) whose parameters the component's
own model validates when the spec is bound to the registry (`kdcore.config.load`). Figures that more
than one stage needs (the datasets in use, the student's length, a phase's steps) are computed here,
once.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from kdcore.plugin.params import (LossRef, OptimizerRef, Params, SamplerRef, SchedulerRef, Seed, StudentRef,
                                  TeacherRef, child_refs)
from kdcore.problems import ParamError
from kdcore.texts import check_text


def named(value):
    """A component given by its name alone (`optimizer = "sgd"`): its table with the defaults."""
    return {"name": value} if isinstance(value, str) else value


class LossTerm(LossRef):
    """A loss in a phase, with its weight (`weight` is the phase's, the rest the loss's)."""

    weight: float = Field(1.0, ge=0)


class DatasetSpec(Params):
    samples: int = Field(gt=0, description="number of samples")
    max_seq_len: int = Field(gt=0, description="sequence length S (positions per sample)")
    seed: Seed = 0
    positions: Literal["last", "all"] = "last"
    logits: Literal["dense", "topk"] = "dense"
    topk: int = Field(64, gt=0, description="kept logits per position when logits = 'topk'")
    inputs: Literal["seed", "dense"] = "seed"
    batch_size: int = Field(16, gt=0, description="teacher forward batch size")
    block_size: int = Field(64, gt=0, description="rows per chunk / commit block")
    sampler: SamplerRef


class PhaseSpec(Params):
    name: str | None = None
    dataset: str
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop the phase after this many steps")
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1e-3, gt=0)
    optimizer: OptimizerRef = Field(default_factory=lambda: OptimizerRef(name="adamw"),
                                    description="an optimizer's name, or a table with its name and parameters")
    scheduler: SchedulerRef = Field(default_factory=lambda: SchedulerRef(name="constant"),
                                    description="a learning-rate schedule's name, or a table")
    clip: float | None = Field(None, gt=0, description="max gradient norm")
    init: Literal["default", "kaiming"] = "default"
    seed: Seed = 0
    shuffle_chunks: int = Field(8, gt=0, description="chunks read into the shuffle buffer")
    workers: int = Field(0, ge=0, description="DataLoader worker processes (read chunks, regenerate noise)")
    checkpoint_every: int = Field(50, gt=0, description="steps between checkpoints")
    losses: list[LossTerm] = Field(min_length=1)

    @field_validator("optimizer", "scheduler", mode="before")
    @classmethod
    def _by_name(cls, value):
        return named(value)


class EvalSpec(Params):
    text: str = Field("builtin:eval.txt", description="evaluation text: a path or builtin:NAME")
    extra_texts: list[str] = Field(default_factory=list, description="more held-out texts, reported beside `text`")
    windows: int = Field(200, gt=0, description="text windows scored")
    batch_size: int = Field(16, gt=0)
    positions: Literal["last", "all"] | None = Field(None, description="default: the training positions")
    prompts: list[str] = Field(
        default_factory=lambda: [
            "The capital of France is",
            "Once upon a time, there was a",
            "The best way to learn a new language is",
        ]
    )
    max_new_tokens: int = Field(12, ge=0)
    chat_template: bool = Field(False, description="wrap prompts in the tokenizer's chat template")

    @property
    def texts(self) -> list[str]:
        return list(dict.fromkeys([self.text, *self.extra_texts]))

    @field_validator("text")
    @classmethod
    def _readable_text(cls, text: str, info: ValidationInfo):
        """Checked with the spec, so no command generates or trains before finding it unreadable."""
        if info.context and "base_dir" in info.context:
            check_text(text, info.context["base_dir"], key="")
        return text

    @field_validator("extra_texts")
    @classmethod
    def _readable_texts(cls, texts: list[str], info: ValidationInfo):
        if info.context and "base_dir" in info.context:
            for i, text in enumerate(texts):
                check_text(text, info.context["base_dir"], key=f"[{i}]")
        return texts

    @model_validator(mode="after")
    def _prompts_not_empty(self):
        for i, prompt in enumerate(self.prompts):
            if not prompt.strip():
                raise ParamError(f"prompts[{i}]", "an empty prompt gives the models nothing to continue")
        return self


class Spec(Params):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    recipe: str = Field("", description="what this run measures, for `kd compare` (runs of one recipe at several budgets form one line); default: name")
    plugins: list[str] = Field(default_factory=list)
    store_dir: str = "store"
    runs_dir: str = "runs"
    teacher: TeacherRef
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    student: StudentRef
    phases: list[PhaseSpec] = Field(min_length=1)
    eval: EvalSpec = Field(default_factory=EvalSpec)

    source: str = Field("<spec>", exclude=True)
    base_dir: Path = Field(Path("."), exclude=True)
    _registry: Any = PrivateAttr(default=None)

    @property
    def registry(self):
        return self._registry

    @model_validator(mode="after")
    def _dataset_names(self):
        for name in self.datasets:
            if not _SAFE_NAME.fullmatch(name):
                raise ParamError(f"datasets.{name}", "dataset names use letters, digits, '_', '.', '-'")
        return self

    @model_validator(mode="after")
    def _folders_are_folders(self):
        """store_dir and runs_dir (or a folder above them) must not be files: found now, not after
        generation wrote a store."""
        for key in ("store_dir", "runs_dir"):
            path = Path(getattr(self, key))
            for folder in (path, *path.parents):
                if folder.exists() and not folder.is_dir():
                    raise ParamError(key, f"{folder} is a file, not a folder")
        return self

    @model_validator(mode="after")
    def _stores_apart_from_the_run(self):
        """A dataset's `--overwrite` deletes its store folder: it must not hold the run's files."""
        run = self.run_path.resolve()
        for name in self.datasets:
            store = self.store_path(name).resolve()
            if store == run or run in store.parents or store in run.parents:
                raise ParamError("store_dir", f"the store of dataset '{name}' ({self.store_path(name)}) and the "
                                 f"run folder ({self.run_path}) overlap: regenerating the dataset would delete "
                                 "the trained student; use separate store_dir and runs_dir")
        return self

    # --- paths: store_dir and runs_dir are relative to the working directory ---
    def store_path(self, dataset: str) -> Path:
        return Path(self.store_dir) / dataset

    @property
    def run_path(self) -> Path:
        return Path(self.runs_dir) / self.name

    def top_refs(self):
        """(key, reference) of every component the spec names directly."""
        yield "teacher", self.teacher
        for name, ds in self.datasets.items():
            yield f"datasets.{name}.sampler", ds.sampler
        yield "student", self.student
        for i, phase in enumerate(self.phases):
            yield f"phases[{i}].optimizer", phase.optimizer
            yield f"phases[{i}].scheduler", phase.scheduler
            for j, loss in enumerate(phase.losses):
                yield f"phases[{i}].losses[{j}]", loss

    def all_refs(self):
        """(key, reference) of every component in the spec, nested ones included."""
        def walk(loc, ref):
            yield loc, ref
            for key, child in child_refs(ref):
                yield from walk(f"{loc}.{key}", child)

        for loc, ref in self.top_refs():
            yield from walk(loc, ref)

    def resolved(self) -> dict:
        data = self.model_dump(mode="json")
        data["teacher"] = self.teacher.resolved()
        data["student"] = self.student.resolved()
        for name, ds in self.datasets.items():
            data["datasets"][name]["sampler"] = ds.sampler.resolved()
        for i, phase in enumerate(self.phases):
            data["phases"][i]["losses"] = [
                {**loss.resolved(), "weight": loss.weight} for loss in phase.losses
            ]
            data["phases"][i]["optimizer"] = phase.optimizer.resolved()
            data["phases"][i]["scheduler"] = phase.scheduler.resolved()
        return data

    # --- figures derived from the spec, for every stage that needs them ---
    @property
    def datasets_in_use(self) -> list[str]:
        """The datasets the phases train on, in the order they are first used."""
        return list(dict.fromkeys(p.dataset for p in self.phases))

    @property
    def student_seq_len(self) -> int:
        """Fixed-length students see the longest sequence of any phase; shorter data is padded."""
        return max(self.datasets[p.dataset].max_seq_len for p in self.phases)

    def phase_steps(self, index: int) -> int:
        """Optimizer steps of phase `index`: its epochs of (samples / batch), capped by max_steps."""
        phase = self.phases[index]
        steps = -(-self.datasets[phase.dataset].samples // phase.batch_size) * phase.epochs
        return min(steps, phase.max_steps) if phase.max_steps else steps

    def budget(self) -> dict:
        """What the student trains on: samples and tokens of the datasets its phases use."""
        used = [self.datasets[d] for d in self.datasets_in_use]
        return {"samples": sum(d.samples for d in used), "tokens": sum(d.samples * d.max_seq_len for d in used)}


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def spec_hash(data: Any) -> str:
    """A short hash of a JSON-able piece of a resolved spec: what identities are compared by."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
