"""The parameter contract: the one base class of every component's parameters (and of the spec's own
tables), and the check the registry applies to what a plugin registers.

A plugin subclasses `Params` and declares its keys with pydantic fields:

    class ZipfIdsParams(Params):
        exponent: float = Field(1.1, gt=0)

A cross-field rule raises `ParamError(key, message)` with the key relative to the model, from a
validator or from the component's constructor; the spec reports it at the component's place
(`datasets.zipf.sampler.exponent: ...`). `kdcore.plugin.contracts` re-exports both names.
"""

from __future__ import annotations

import typing
from typing import Annotated

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from kdcore.problems import ParamError

__all__ = ["Params", "ParamError", "Seed", "TextFile", "ContentInput", "added_field", "contract_problem",
           "ComponentRef", "TeacherRef", "SamplerRef", "StudentRef", "LossRef", "OptimizerRef", "SchedulerRef"]

INT64 = 2**63

# what torch.manual_seed and numpy's generators accept
Seed = Annotated[int, Field(ge=0, lt=INT64, description="random seed, 0 <= seed < 2**63")]


class ContentInput:
    """Marks a parameter that names a file whose content a component reads: what the file holds,
    not its name, is part of the identity of what the component makes (a store of windows of a
    text is stale once the text changes). `kind` says how the name is resolved: "text" (a path,
    builtin:NAME or corpus:NAME; see kdcore.texts)."""

    def __init__(self, kind: str = "text"):
        self.kind = kind

    def __repr__(self) -> str:
        return f"ContentInput({self.kind!r})"


# a text a component reads: `text: TextFile = Field("builtin:reference.txt")`
TextFile = Annotated[str, ContentInput("text")]


def added_field(default, **kw):
    """A parameter added to a component that stores, checkpoints or runs were already recorded with:
    at `default`, which must keep the old behaviour, it is left out of the resolved spec, so what was
    recorded before it keeps its identity (a store is not refused for a key it could not have had)."""
    return Field(default, json_schema_extra={"omit_default": True}, **kw)


class Params(BaseModel):
    """Base of every parameter model: unknown keys, loose types and non-finite floats are refused.

    TOML values are typed, so validation is strict: a string is never a number and a bool never an
    int (an int is fine where a float is expected). Every int must fit in 64 bits: torch, numpy and
    zarr take nothing larger.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _fits_in_64_bits(cls, value):
        if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            raise ParamError("", f"{value} does not fit in a 64-bit integer")
        return value


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


def contract_problem(model: object) -> str | None:
    """Why `model` cannot be a component's parameter model, or None when it keeps the contract.

    Checked for the model and every pydantic model its fields hold (a nested table), except the
    component references (`SamplerRef`), whose keys their own component's model validates.
    """
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return f"params must be a pydantic model class (a subclass of kdcore.api.Params), got {model!r}"
    for m in _models_within(model):
        extra = m.model_config.get("extra") or "ignore"
        if extra != "forbid":
            return (f"{m.__name__} lets unknown keys through (extra={extra!r}), so a misspelled key "
                    "would be ignored: subclass kdcore.api.Params")
        if m.model_config.get("allow_inf_nan", True):
            return f"{m.__name__} accepts inf and nan as floats: subclass kdcore.api.Params"
    return None


def _models_within(model: type[BaseModel], seen: set | None = None):
    seen = set() if seen is None else seen
    if model in seen or issubclass(model, ComponentRef):
        return
    seen.add(model)
    yield model
    for field in model.model_fields.values():
        for nested in _model_types(field.annotation):
            yield from _models_within(nested, seen)


def _model_types(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _model_types(arg)


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


def content_inputs(ref: ComponentRef, loc: str):
    """(key, value) of every parameter marked `ContentInput` in `ref` and the components nested in it."""
    params = ref._params
    for field, info in type(params).model_fields.items() if params is not None else ():
        if any(isinstance(m, ContentInput) for m in info.metadata) and getattr(params, field) is not None:
            yield f"{loc}.{field}", getattr(params, field)
    for key, child in child_refs(ref):
        yield from content_inputs(child, f"{loc}.{key}")
