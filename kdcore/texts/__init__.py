"""Shipped public-domain English texts (see SOURCES.md), and reading `builtin:NAME` or a path.

A bad reference raises `ParamError(key, ...)`: `key` is the parameter naming the text, so the spec
reports it where it sits (`eval.text`, `datasets.real.sampler.text`).
"""

from __future__ import annotations

from pathlib import Path

from kdcore.errors import ParamError

HERE = Path(__file__).parent


def resolve_text(ref: str, base_dir: Path = Path("."), key: str = "text") -> Path:
    """The text file `ref` names: `builtin:NAME` (a shipped .txt) or a path, relative to the spec's folder first."""
    from kdcore.spec import local_path

    if ref.startswith("builtin:"):
        path = HERE / ref.removeprefix("builtin:")
        if path.parent != HERE or path.suffix != ".txt" or not path.is_file():
            available = ", ".join(f"builtin:{p.name}" for p in sorted(HERE.glob("*.txt")))
            raise ParamError(key, f"no shipped text '{ref}'; available: {available}")
        return path
    path = local_path(ref, base_dir)
    if not path.exists():
        raise ParamError(key, f"{ref}: no such text file")
    if not path.is_file():
        raise ParamError(key, f"{ref} is not a text file")
    return path


def read_text(ref: str, base_dir: Path = Path("."), key: str = "text") -> str:
    path = resolve_text(ref, base_dir, key)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ParamError(key, f"{ref} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ParamError(key, f"{ref}: cannot read it: {e.strerror}") from None


def check_text(ref: str, base_dir: Path = Path("."), key: str = "text") -> None:
    """Everything `read_text` would refuse, refused now: missing, not a file, not UTF-8."""
    read_text(ref, base_dir, key)
