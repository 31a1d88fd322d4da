"""Files written whole or not at all, and paths named in a spec.

A kill in the middle of a write leaves the old file or the new one, never half of one: every file a
run writes (metadata, reports, checkpoints, commit records) goes through a temporary file beside it
and a rename.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from kdcore.problems import KDError


def replace_file(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file beside it, then a rename."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_atomic(path: Path, text: str) -> None:
    replace_file(Path(path), text.encode())


def save_atomic(obj, path: Path) -> None:
    """torch.save, whole or not at all."""
    import torch

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def local_path(ref: str, base_dir: Path) -> Path:
    """A file or folder named in a spec (teacher, tokenizer, text, plugin): relative to the spec's
    folder when it exists there, else as given (relative to the working directory)."""
    path = Path(ref).expanduser()
    if not path.is_absolute() and (base_dir / path).exists():
        return base_dir / path
    return path


def usual_permissions(folder: Path) -> None:
    """Files and folders under `folder` readable as the user's umask allows (as a plain `open` makes
    them): some writers (safetensors) create files 0600."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [Path(folder), *Path(folder).rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def disk_full(where: Path, what: str, needed: Callable[[], str] = lambda: "") -> Iterator[None]:
    """A full disk while writing `where` is one problem naming it, the free space left and (`needed`)
    what the work still needs, not a traceback: what was committed stays, and the work resumes."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        at = next((p for p in (Path(where), *Path(where).parents) if p.exists()), Path("."))
        free = shutil.disk_usage(at).free
        need = needed()
        raise KDError(f"{where}: the disk is full ({free / 2**20:.1f} MiB free) while writing {what}"
                      + (f"; it still needs about {need}" if need else "")
                      + ". Free space and run the same command again: it resumes where it stopped") from None
