"""Errors a person can act on.

A `KDError` carries a message that already names the file and key; the CLI prints it and exits 1.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class KDError(Exception):
    """A user-facing error: bad spec, unknown plugin, mismatched or corrupt store, ..."""


class SpecError(KDError):
    """One or more problems in a spec file, each as (key path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class ParamError(KDError, ValueError):
    """This key is wrong: `key` is relative to the component or model that raises it.

    Components raise it from their constructor (`ParamError("high", "100 is past the vocabulary")`)
    and parameter models from their validators (it is a ValueError, so pydantic collects it); the
    spec and the builder anchor the key where the component sits (`datasets.noise.sampler.high`).
    `key` may be "" (the component as a whole), "low", "prompts[0]" or "samplers[1].weights".
    """

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def at(self, loc: str) -> str:
        """The full key path, with `loc` the place of the raiser in the spec."""
        return join_key(loc, self.key)


def join_key(loc: str, key: str) -> str:
    if not key or not loc:
        return loc or key
    return f"{loc}{key}" if key.startswith("[") else f"{loc}.{key}"


class StoreError(KDError):
    """A store that is missing, corrupt, or does not match the spec."""


def did_you_mean(name: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f" — did you mean '{close[0]}'?" if close else ";"
    return f"{hint} available: {', '.join(sorted(choices)) or '(none)'}"


# module -> the distribution that provides it, where the two names differ
_DISTRIBUTIONS = {"google": "protobuf", "yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn"}


class MissingPackage(KDError):
    """A feature needs a Python package that is not installed; the message says which and how to get it."""

    def __init__(self, package: str, needed_for: str = ""):
        self.package = package
        purpose = f" for {needed_for}" if needed_for else ""
        super().__init__(f"the Python package '{package}' is needed{purpose} and is not installed: "
                         f"pip install {package}")


def requires(module: str, needed_for: str = "", package: str | None = None) -> None:
    """Raise MissingPackage unless `module` can be imported (checked without importing it)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken one
        found = False
    if not found:
        raise MissingPackage(package or _DISTRIBUTIONS.get(module.split(".")[0], module.split(".")[0]), needed_for)


def missing_package(e: ImportError) -> MissingPackage | None:
    """The package an ImportError from a dependency says is missing (`No module named 'x'`, or
    transformers' 'requires the protobuf library'), or None when it is not about a missing package."""
    import re

    name = getattr(e, "name", None)
    if isinstance(e, ModuleNotFoundError) and name and not name.startswith(("kdcore", "kd_plugins")):
        top = name.split(".")[0]
        return MissingPackage(_DISTRIBUTIONS.get(top, top))
    said = re.search(r"requires the (\w[\w.-]*) library", str(e))
    return MissingPackage(said.group(1).lower()) if said else None
