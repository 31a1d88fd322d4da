"""Problems a person can act on, and the one exception that carries them.

A check returns a list of `Problem`s: what is wrong and where (the `file` it is about, and the `key`
within it: a spec's key path, a store's block). Code that cannot go on raises `KDError(*problems)`.
The command line (kdcore.cli) is the one place that prints them, with exit code 1; library code
never prints. Anything else that escapes is a bug and keeps its traceback.

`ParamError(key, message)` is the problem a component raises about one of its own parameters (the
key relative to itself); the builder anchors it where the component sits in the spec.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    message: str
    key: str = ""  # where in `file`: "datasets.noise.sampler.high", "block 3"; relative until anchored
    file: str = ""  # the spec, store or file it is about
    cause: BaseException | None = field(default=None, compare=False, repr=False)  # a plugin's exception, if any

    def at(self, loc: str = "", file: str = "") -> "Problem":
        """This problem anchored: its key under `loc`, in `file` unless it names its own."""
        return Problem(self.message, join_key(loc, self.key), self.file or file, self.cause)

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key, self.message) if part)


class KDError(Exception):
    """A user-facing failure: one problem or several (a plain message is a problem of its own)."""

    def __init__(self, *problems: Problem | str):
        self.problems = tuple(p if isinstance(p, Problem) else Problem(str(p)) for p in problems)
        super().__init__("\n".join(map(str, self.problems)))

    def at(self, loc: str = "", file: str = "") -> "KDError":
        """The same problems anchored under `loc`, in `file` (see Problem.at)."""
        return KDError(*(p.at(loc, file) for p in self.problems))


class ParamError(KDError, ValueError):
    """This key is wrong: `key` is relative to the component or model that raises it.

    Components raise it from their constructor (`ParamError("high", "100 is past the vocabulary")`)
    and parameter models from their validators (it is a ValueError, so pydantic collects it); the
    spec and the builder anchor the key where the component sits (`datasets.noise.sampler.high`).
    `key` may be "" (the component as a whole), "low", "prompts[0]" or "samplers[1].weights".
    """

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(Problem(message, key))


def join_key(loc: str, key: str) -> str:
    if not key or not loc:
        return loc or key
    return f"{loc}{key}" if key.startswith("[") else f"{loc}.{key}"


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f" — did you mean '{close[0]}'?" if close else ";"
    return f"{hint} available: {', '.join(sorted(choices)) or '(none)'}"


# --- packages a feature needs -----------------------------------------------------------------------

# module -> the distribution that provides it, where the two names differ
_DISTRIBUTIONS = {"google": "protobuf", "yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn"}


def missing(package: str, needed_for: str = "") -> KDError:
    purpose = f" for {needed_for}" if needed_for else ""
    return KDError(f"the Python package '{package}' is needed{purpose} and is not installed: pip install {package}")


def requires(module: str, needed_for: str = "", package: str | None = None) -> None:
    """Raise a KDError naming the package and its install command unless `module` can be imported
    (checked without importing it)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken one
        found = False
    if not found:
        raise missing(package or _DISTRIBUTIONS.get(module.split(".")[0], module.split(".")[0]), needed_for)


def missing_package(e: ImportError) -> KDError | None:
    """The package an ImportError from a dependency says is missing (`No module named 'x'`, or
    transformers' 'requires the protobuf library'), or None when it is not about a missing package
    (one of our own modules failing to import is a bug)."""
    name = getattr(e, "name", None)
    if isinstance(e, ModuleNotFoundError) and name and not name.startswith(("kdcore", "kd_plugins")):
        top = name.split(".")[0]
        return missing(_DISTRIBUTIONS.get(top, top))
    said = re.search(r"requires the (\w[\w.-]*) library", str(e))
    return missing(said.group(1).lower()) if said else None
