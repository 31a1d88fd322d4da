"""Shipped public-domain English texts (see SOURCES.md), and reading `builtin:NAME` or a path."""

from __future__ import annotations

from pathlib import Path

from kdcore.errors import KDError, local_path

HERE = Path(__file__).parent


def resolve_text(ref: str, base_dir: Path = Path(".")) -> Path:
    if ref.startswith("builtin:"):
        path = HERE / ref.removeprefix("builtin:")
        if not path.exists():
            available = ", ".join(f"builtin:{p.name}" for p in sorted(HERE.glob("*.txt")))
            raise KDError(f"no shipped text {ref}; available: {available}")
        return path
    return local_path(ref, base_dir, "text file")


def read_text(ref: str, base_dir: Path = Path(".")) -> str:
    return resolve_text(ref, base_dir).read_text(encoding="utf-8")
