"""Where LlamaKD keeps what it makes once and reuses across runs: converted teachers, fetched corpora.

KD_CACHE if set, else ~/.cache/llamakd. Nothing in it is an input whose loss loses data: each entry
is rebuilt from its source when missing.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("KD_CACHE") or Path.home() / ".cache" / "llamakd")


def corpus_path(name: str) -> Path:
    """Where `python -m kdcore.texts.corpus` writes the corpus `name` (read as `corpus:NAME`)."""
    return cache_dir() / "corpora" / f"{name}.txt"
