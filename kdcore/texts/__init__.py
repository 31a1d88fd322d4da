"""Texts a spec names, and reading them: `builtin:NAME` (a shipped public-domain .txt, see
SOURCES.md), `corpus:NAME` (a corpus fetched once into the cache by `python -m kdcore.texts.corpus`,
`make corpus`), or a path (relative to the spec's folder first).

A bad reference raises `ParamError(key, ...)`: `key` is the parameter naming the text, so the spec
reports it where it sits (`eval.text`, `datasets.real.sampler.text`). A text is identified by its
content (`text_hash`): a store or report made from a text is stale once the text changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kdcore.problems import ParamError
from kdcore.system.cache import corpus_path
from kdcore.system.files import local_path

HERE = Path(__file__).parent


def resolve_text(ref: str, base_dir: Path = Path("."), key: str = "text") -> Path:
    """The text file `ref` names: `builtin:NAME`, `corpus:NAME` or a path, relative to the spec's folder first."""
    if ref.startswith("corpus:"):
        path = corpus_path(ref.removeprefix("corpus:"))
        if not path.is_file():
            raise ParamError(key, f"{ref}: the corpus is not fetched yet ({path}); fetch it with `make corpus` "
                                  f"(python -m kdcore.texts.corpus)")
        return path
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


_hashes: dict[tuple, str] = {}


def text_hash(ref: str, base_dir: Path = Path("."), key: str = "text") -> str:
    """'sha256:<hex>' of the bytes of the text `ref` names (kept per file, size and modification time)."""
    path = resolve_text(ref, base_dir, key).resolve()
    stat = os.stat(path)
    at = (path, stat.st_size, stat.st_mtime_ns)
    if at not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hashes[at] = f"sha256:{digest.hexdigest()}"
    return _hashes[at]
