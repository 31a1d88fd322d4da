"""Errors a person can act on.

A `KDError` carries a message that already names the file and key; the CLI prints it and exits 1.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class KDError(Exception):
    """A user-facing error: bad spec, unknown plugin, mismatched or corrupt store, ..."""


class SpecError(KDError):
    """One or more problems in a spec file, each as (key path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class StoreError(KDError):
    """A store that is missing, corrupt, or does not match the spec."""


def local_path(ref: str, base_dir: Path, key: str) -> Path:
    """A local path named in a spec: as given, or relative to the spec's folder; it must exist."""
    path = Path(ref).expanduser()
    if not path.is_absolute() and (base_dir / path).exists():
        path = base_dir / path
    if not path.exists():
        raise KDError(f"{key}: {ref} does not exist")
    return path


def did_you_mean(name: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f" — did you mean '{close[0]}'?" if close else ";"
    return f"{hint} available: {', '.join(sorted(choices)) or '(none)'}"
