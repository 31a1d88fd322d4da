"""The experiment spec: a TOML file validated by pydantic in one pass.

`load_spec(path)` returns a `Spec` whose components (teacher, samplers, student, losses) carry their
parameters validated by each component's own pydantic model, or raises `SpecError` listing every
problem as `file: key.path: message`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from kdcore.errors import KDError, ParamError, SpecError, did_you_mean, join_key
from kdcore.params import Params, Seed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ComponentRef(Params):
    """A component named in a spec: `name` plus that component's own parameters (its own model
    validates those: they are kept as extras here)."""

    model_config = ConfigDict(extra="allow")
    kind: ClassVar[str] = ""
    name: str
    _params: Any = PrivateAttr(default=None)

    @property
    def params(self) -> BaseModel:
        if self._params is None:
            raise RuntimeError(f"{self.kind} '{self.name}' was not validated against the registry")
        return self._params

    def raw_params(self) -> dict:
        return dict(self.model_extra or {})

    def resolved(self) -> dict:
        """Name plus every parameter with defaults filled in: what the component will run with."""
        if self._params is None:
            return {"name": self.name, **self.raw_params()}
        out = {"name": self.name}
        for field, info in type(self._params).model_fields.items():
            value = getattr(self._params, field)
            if (info.json_schema_extra or {}).get("omit_default") and value == info.default:
                continue  # added later (`added_field`): at its default, recorded as it was before it existed
            if isinstance(value, ComponentRef):
                value = value.resolved()
            elif isinstance(value, list) and value and isinstance(value[0], ComponentRef):
                value = [v.resolved() for v in value]
            elif isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            out[field] = value
        return out


class TeacherRef(ComponentRef):
    kind: ClassVar[str] = "teacher"


class SamplerRef(ComponentRef):
    kind: ClassVar[str] = "sampler"


class StudentRef(ComponentRef):
    kind: ClassVar[str] = "student"


class LossRef(ComponentRef):
    kind: ClassVar[str] = "loss"


class OptimizerRef(ComponentRef):
    kind: ClassVar[str] = "optimizer"


class SchedulerRef(ComponentRef):
    kind: ClassVar[str] = "scheduler"


def _named(value):
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
        return _named(value)


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
        from kdcore.texts import check_text

        if info.context and "base_dir" in info.context:
            check_text(text, info.context["base_dir"], key="")
        return text

    @field_validator("extra_texts")
    @classmethod
    def _readable_texts(cls, texts: list[str], info: ValidationInfo):
        from kdcore.texts import check_text

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

    def dataset_identity(self, name: str) -> dict:
        """What determines a dataset's content: its spec (minus the batch size), the teacher's, and
        the content of every file its sampler reads (`contents`, present only where there is one)."""
        ds = self.resolved()["datasets"][name]
        ds.pop("batch_size")
        teacher = {k: v for k, v in self.teacher.resolved().items() if k not in ("device", "batch_size")}
        contents = self.contents(self.datasets[name].sampler, "sampler")
        return {"dataset": ds, "teacher": teacher, **({"contents": contents} if contents else {})}

    def contents(self, ref: "ComponentRef", loc: str) -> dict[str, str]:
        """{key: 'sha256:...'} of every file a component (and those nested in it) reads (`ContentInput`)."""
        from kdcore.texts import text_hash

        return {key: text_hash(value, self.base_dir, key) for key, value in content_inputs(ref, loc)}


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def local_path(ref: str, base_dir: Path) -> Path:
    """A file or folder named in a spec (teacher, tokenizer, text, plugin): relative to the spec's
    folder when it exists there, else as given (relative to the working directory)."""
    path = Path(ref).expanduser()
    if not path.is_absolute() and (base_dir / path).exists():
        return base_dir / path
    return path


def spec_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# --- loading --------------------------------------------------------------------------------------


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def pydantic_problems(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None):
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        full = join_key(prefix, format_loc(loc))
        ctx_err = (e.get("ctx") or {}).get("error")
        kind = e["type"]
        if isinstance(ctx_err, ParamError):  # a validator said which key, relative to its model
            full, msg = ctx_err.at(full), ctx_err.message
        elif kind == "extra_forbidden":
            msg = "unknown key"
            owner = _model_at(model, loc[:-1]) if model is not None else None
            if owner is not None:
                msg += did_you_mean(str(loc[-1]), [f for f in owner.model_fields if f not in ("source", "base_dir")])
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "value_error":
            msg = str(ctx_err) if ctx_err is not None else e["msg"].removeprefix("Value error, ")
        else:
            msg = e["msg"]
            if "input" in e and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        problems.append((full, msg))
    return problems


def _model_at(model: type[BaseModel], loc: tuple):
    """The pydantic model class that owns the key at `loc`, following the spec's nesting."""
    current = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            # a dict-valued field (datasets): `part` is the key, keep the value type
            continue
        ann = field.annotation
        current = _first_model(ann)
    return current


def _first_model(ann):
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def read_toml(path: Path) -> dict:
    if not path.exists():
        raise KDError(f"{path}: no such spec file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(str(path), [("", f"TOML syntax error: {e}")]) from None
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [("", f"not UTF-8 text: {e.reason} at byte {e.start}")]) from None
    except OSError as e:
        raise KDError(f"{path}: cannot read the spec: {e.strerror}") from None


def load_spec(path: str | Path, registry=None) -> Spec:
    path = Path(path)
    return parse_spec(read_toml(path), source=str(path), base_dir=path.parent, registry=registry)


def spec_plugins(path: str | Path) -> list[str]:
    """The plugin modules a spec file lists, without validating the rest of it (`kd plugins --spec`)."""
    path = Path(path)
    plugins = read_toml(path).get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise SpecError(str(path), [("plugins", "must be a list of module names or .py files")])
    return plugins


def parse_spec(data: dict, source: str = "<spec>", base_dir: Path = Path("."), registry=None) -> Spec:
    from kdcore.registry import load_registry

    base_dir = Path(base_dir)
    problems: list[tuple[str, str]] = []
    try:
        spec = Spec.model_validate({**data, "source": source, "base_dir": base_dir}, context={"base_dir": base_dir})
    except ValidationError as e:
        problems.extend(pydantic_problems(e, model=Spec))
        spec = None
    problems.extend(_cross_checks(data))
    if registry is None:
        plugins = data.get("plugins", [])  # a wrong type is reported with the spec's other problems
        plugins = [p for p in plugins if isinstance(p, str)] if isinstance(plugins, list) else []
        try:
            registry = load_registry(plugins, base_dir)
        except KDError as e:
            problems.append(("plugins", str(e)))
    if registry is not None:
        if spec is not None:
            refs = list(_top_refs(spec))
        else:  # still check every component table, so all errors come out in one pass
            refs = []
            for loc, ref_cls, raw in _raw_component_tables(data):
                try:
                    refs.append((loc, ref_cls.model_validate(raw)))
                except ValidationError as e:
                    problems.extend(pydantic_problems(e, prefix=loc, model=ref_cls))
        for loc, ref in refs:
            problems.extend(bind_component(registry, loc, ref))
    if problems:
        raise SpecError(source, list(dict.fromkeys(problems)))
    spec._registry = registry
    return spec


def _cross_checks(data: dict) -> list[tuple[str, str]]:
    """Checks across tables, run on the raw data so they report alongside every other error."""
    problems = []
    datasets = data.get("datasets") if isinstance(data.get("datasets"), dict) else {}
    phases = data.get("phases") if isinstance(data.get("phases"), list) else []
    for i, phase in enumerate(phases):
        name = phase.get("dataset") if isinstance(phase, dict) else None
        if isinstance(name, str) and datasets and name not in datasets:
            problems.append((f"phases[{i}].dataset", f"no dataset '{name}'{did_you_mean(name, list(datasets))}"))
        if i > 0 and isinstance(phase, dict) and phase.get("init", "default") != "default":
            problems.append((f"phases[{i}].init", "re-initialising would discard what earlier phases learned; "
                             "set init on phases[0] (later phases resume its weights)"))
    return problems


def _top_refs(spec: Spec):
    yield "teacher", spec.teacher
    for name, ds in spec.datasets.items():
        yield f"datasets.{name}.sampler", ds.sampler
    yield "student", spec.student
    for i, phase in enumerate(spec.phases):
        yield f"phases[{i}].optimizer", phase.optimizer
        yield f"phases[{i}].scheduler", phase.scheduler
        for j, loss in enumerate(phase.losses):
            yield f"phases[{i}].losses[{j}]", loss


def _raw_component_tables(data: dict):
    def table(value):
        return isinstance(value, dict) and "name" in value

    if table(data.get("teacher")):
        yield "teacher", TeacherRef, data["teacher"]
    if isinstance(data.get("datasets"), dict):
        for name, ds in data["datasets"].items():
            if isinstance(ds, dict) and table(ds.get("sampler")):
                yield f"datasets.{name}.sampler", SamplerRef, ds["sampler"]
    if table(data.get("student")):
        yield "student", StudentRef, data["student"]
    if isinstance(data.get("phases"), list):
        for i, phase in enumerate(data["phases"]):
            for key, ref_cls in (("optimizer", OptimizerRef), ("scheduler", SchedulerRef)):
                value = _named(phase.get(key)) if isinstance(phase, dict) else None
                if table(value):
                    yield f"phases[{i}].{key}", ref_cls, value
            losses = phase.get("losses") if isinstance(phase, dict) else None
            for j, loss in enumerate(losses if isinstance(losses, list) else []):
                if table(loss):
                    yield f"phases[{i}].losses[{j}]", LossTerm, loss


def bind_component(registry, loc: str, ref: ComponentRef) -> list[tuple[str, str]]:
    """Validate a component's parameters with its own model and attach them, nested refs included."""
    try:
        comp = registry.get(ref.kind, ref.name)
    except KDError as e:
        return [(f"{loc}.name", str(e))]
    try:
        ref._params = comp.params.model_validate(ref.raw_params())
    except ValidationError as e:
        return pydantic_problems(e, prefix=loc, model=comp.params)
    problems = []
    for key, child in child_refs(ref):
        problems.extend(bind_component(registry, f"{loc}.{key}", child))
    return problems


def child_refs(ref: ComponentRef):
    """(key, component) for the components nested in `ref`'s parameters: "sampler", "samplers[1]"."""
    params = ref._params
    for field in type(params).model_fields if params is not None else ():
        value = getattr(params, field)
        if isinstance(value, ComponentRef):
            yield field, value
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ComponentRef):
                    yield f"{field}[{i}]", item


def all_refs(spec: Spec):
    """Every component reference in the spec with its key path, nested ones included."""

    def walk(loc, ref):
        yield loc, ref
        for key, child in child_refs(ref):
            yield from walk(f"{loc}.{key}", child)

    for loc, ref in _top_refs(spec):
        yield from walk(loc, ref)


def content_inputs(ref: ComponentRef, loc: str):
    """(key, value) of every parameter marked `ContentInput` in `ref` and the components nested in it."""
    from kdcore.params import ContentInput

    params = ref._params
    for field, info in type(params).model_fields.items() if params is not None else ():
        if any(isinstance(m, ContentInput) for m in info.metadata) and getattr(params, field) is not None:
            yield f"{loc}.{field}", getattr(params, field)
    for key, child in child_refs(ref):
        yield from content_inputs(child, f"{loc}.{key}")
