"""Loading a spec: the TOML file read, validated in one pass, and bound to the registry.

`load_spec(path)` returns a `Spec` whose components (teacher, samplers, student, losses, optimizers,
schedules) carry their parameters validated by each component's own pydantic model, or raises a
`KDError` listing every problem at once as `file: key.path: message`.
"""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

from kdcore.config.spec import LossTerm, Spec, named
from kdcore.plugin.params import ComponentRef, OptimizerRef, SamplerRef, SchedulerRef, StudentRef, TeacherRef, child_refs
from kdcore.plugin.registry import Registry, load_registry
from kdcore.problems import KDError, ParamError, Problem, did_you_mean, join_key


def load_spec(path: str | Path, registry: Registry | None = None) -> Spec:
    path = Path(path)
    return parse_spec(read_toml(path), source=str(path), base_dir=path.parent, registry=registry)


def parse_spec(data: dict, source: str = "<spec>", base_dir: Path = Path("."), registry: Registry | None = None) -> Spec:
    """The spec `data` validated and bound: its own models, the checks across tables, and every
    component's parameters (with the built-ins, the installed plugins and those the spec lists,
    unless `registry` is given). Every problem is reported at once."""
    base_dir = Path(base_dir)
    problems: list[Problem] = []
    try:
        spec = Spec.model_validate({**data, "source": source, "base_dir": base_dir}, context={"base_dir": base_dir})
    except ValidationError as e:
        problems += pydantic_problems(e, model=Spec)
        spec = None
    problems += cross_table_problems(data)
    if registry is None:
        registry, found = _registry(data, base_dir)
        problems += found
    if registry is not None:
        problems += _bind_all(registry, spec, data)
    if problems:
        raise KDError(*(p.at(file=source) for p in dict.fromkeys(problems)))
    spec._registry = registry
    return spec


def spec_plugins(path: str | Path) -> list[str]:
    """The plugin modules a spec file lists, without validating the rest of it (`kd plugins --spec`)."""
    path = Path(path)
    plugins = read_toml(path).get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise KDError(Problem("must be a list of module names or .py files", "plugins", str(path)))
    return plugins


def _registry(data: dict, base_dir: Path) -> tuple[Registry | None, list[Problem]]:
    plugins = data.get("plugins", [])  # a wrong type is reported with the spec's other problems
    plugins = [p for p in plugins if isinstance(p, str)] if isinstance(plugins, list) else []
    try:
        return load_registry(plugins, base_dir), []
    except KDError as e:
        return None, [p.at("plugins") for p in e.problems]


def _bind_all(registry: Registry, spec: Spec | None, data: dict) -> list[Problem]:
    problems = []
    if spec is not None:
        refs = list(spec.top_refs())
    else:  # still check every component table, so all errors come out in one pass
        refs = []
        for loc, ref_cls, raw in _raw_component_tables(data):
            try:
                refs.append((loc, ref_cls.model_validate(raw)))
            except ValidationError as e:
                problems += pydantic_problems(e, prefix=loc, model=ref_cls)
    for loc, ref in refs:
        problems += bind_component(registry, loc, ref)
    return problems


def bind_component(registry: Registry, loc: str, ref: ComponentRef) -> list[Problem]:
    """Validate a component's parameters with its own model and attach them, nested refs included."""
    try:
        comp = registry.get(ref.kind, ref.name)
    except KDError as e:
        return [p.at(f"{loc}.name") for p in e.problems]
    try:
        ref._params = comp.params.model_validate(ref.raw_params())
    except ValidationError as e:
        return pydantic_problems(e, prefix=loc, model=comp.params)
    problems = []
    for key, child in child_refs(ref):
        problems += bind_component(registry, f"{loc}.{key}", child)
    return problems


def cross_table_problems(data: dict) -> list[Problem]:
    """Checks across tables, run on the raw data so they report alongside every other error."""
    problems = []
    datasets = data.get("datasets") if isinstance(data.get("datasets"), dict) else {}
    phases = data.get("phases") if isinstance(data.get("phases"), list) else []
    for i, phase in enumerate(phases):
        name = phase.get("dataset") if isinstance(phase, dict) else None
        if isinstance(name, str) and datasets and name not in datasets:
            problems.append(Problem(f"no dataset '{name}'{did_you_mean(name, list(datasets))}", f"phases[{i}].dataset"))
        if i > 0 and isinstance(phase, dict) and phase.get("init", "default") != "default":
            problems.append(Problem("re-initialising would discard what earlier phases learned; set init on "
                                    "phases[0] (later phases resume its weights)", f"phases[{i}].init"))
    return problems


def _raw_component_tables(data: dict):
    """(key, ref class, table) of every component table in unvalidated spec data."""
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
    for i, phase in enumerate(data["phases"] if isinstance(data.get("phases"), list) else []):
        phase = phase if isinstance(phase, dict) else {}
        for key, ref_cls in (("optimizer", OptimizerRef), ("scheduler", SchedulerRef)):
            if table(named(phase.get(key))):
                yield f"phases[{i}].{key}", ref_cls, named(phase[key])
        losses = phase.get("losses")
        for j, loss in enumerate(losses if isinstance(losses, list) else []):
            if table(loss):
                yield f"phases[{i}].losses[{j}]", LossTerm, loss


# --- pydantic's errors in a person's words ----------------------------------------------------------


def read_toml(path: Path) -> dict:
    """The TOML file's tables; a missing, unreadable or malformed file is a problem naming it."""
    if not path.exists():
        raise KDError(Problem("no such spec file", file=str(path)))
    if not path.is_file():  # a folder, or a FIFO that would block the read forever
        raise KDError(Problem("not a regular file: a spec is a TOML file", file=str(path)))
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise KDError(Problem(f"TOML syntax error: {e}", file=str(path))) from None
    except UnicodeDecodeError as e:
        raise KDError(Problem(f"not UTF-8 text: {e.reason} at byte {e.start}", file=str(path))) from None
    except OSError as e:
        raise KDError(Problem(f"cannot read the spec: {e.strerror}", file=str(path))) from None



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


def pydantic_problems(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> list[Problem]:
    """pydantic's errors as problems, each at its key under `prefix`, in a person's words."""
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        full = join_key(prefix, format_loc(loc))
        ctx_err = (e.get("ctx") or {}).get("error")
        kind = e["type"]
        if isinstance(ctx_err, ParamError):  # a validator said which key, relative to its model
            full, msg = join_key(full, ctx_err.key), ctx_err.message
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
        problems.append(Problem(msg, full))
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
