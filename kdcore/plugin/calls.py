"""Calls from core into a component's code, attributed: when a plugin's code raises or breaks its
contract, the problem names the component (kind, name, the plugin it comes from), its place in the
spec (file and key) and the line of the plugin's own code that failed, in one line. The whole
traceback stays chained to it (`kd --traceback` shows it).
"""

from __future__ import annotations

import inspect
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kdcore.problems import KDError, ParamError, Problem


@dataclass(frozen=True)
class Origin:
    """Which component a call goes into, and where it is named."""

    kind: str
    name: str
    plugin: str  # the plugin that registered it
    key: str = ""  # its place in the spec: "datasets.noise.sampler"
    file: str = ""  # the spec
    code: str = ""  # the folder of the module that implements it: its frames are the plugin's own

    def __str__(self) -> str:
        return f"{self.kind} '{self.name}' (from {self.plugin})"

    def problem(self, message: str, cause: BaseException | None = None) -> Problem:
        return Problem(f"{self} {message}", self.key, self.file, cause)


def code_folder(target: Any) -> str:
    """The folder of the module that defines `target` (a class or factory), or ""."""
    try:
        return str(Path(inspect.getsourcefile(target) or inspect.getfile(target)).resolve().parent)
    except (TypeError, OSError):
        return ""


@contextmanager
def plugin_code(origin: Origin, doing: str) -> Iterator[None]:
    """Run a call into the component's code; its failures become one attributed problem."""
    try:
        yield
    except ParamError as e:  # the component says which of its keys: at its place in the spec
        raise e.at(origin.key, origin.file) from None
    except KDError:
        raise
    except Exception as e:
        raise KDError(origin.problem(f"failed in {doing}: {type(e).__name__}: {e} ({failing_line(e, origin)})", e)) from e


def failing_line(e: BaseException, origin: Origin) -> str:
    """'file:line' of the innermost frame in the component's own code, else of the innermost frame."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "no traceback"
    own = [f for f in frames if origin.code and str(Path(f.filename).resolve()).startswith(origin.code)]
    frame = (own or frames)[-1]
    return f"{shown_path(frame.filename)}:{frame.lineno}"


def shown_path(filename: str) -> str:
    """A file as the user can open it: relative to the working directory when under it."""
    path = Path(filename)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Attributed:
    """A component whose methods are called through `plugin_code`: every call is attributed to it.
    Attributes are its own. (Students are nn.Modules: their calls are attributed where core makes
    them, not through this wrapper.)"""

    def __init__(self, component: Any, origin: Origin):
        self.inner, self.origin = component, origin

    def __getattr__(self, attr: str):
        if attr in ("inner", "origin"):  # not set yet (unpickling): no recursion
            raise AttributeError(attr)
        value = getattr(self.inner, attr)
        if not inspect.ismethod(value):  # data, or a module it holds (teacher.model): as it is
            return value

        def call(*args, **kwargs):
            with plugin_code(self.origin, f"{attr}()"):
                return value(*args, **kwargs)

        return call

    def __call__(self, *args, **kwargs):  # a loss, an optimizer: components that are called
        with plugin_code(self.origin, "its call"):
            return self.inner(*args, **kwargs)
