"""One writer at a time: advisory locks on a file beside what they guard (a store, a run folder).

The lock is the OS's (`flock`): it ends with its holder, so a killed run leaves no stale lock, only
the file, which the next holder reuses. The holder writes its pid, host and command into the file,
and a process that cannot take the lock names that holder in its error.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kdcore.problems import KDError


def lock_path(path: Path) -> Path:
    """The lock file for `path`: `.<name>.lock` beside it, so it outlives the folder's replacement."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def hold(path: Path, what: str, shared: bool = False) -> Iterator[None]:
    """Hold the lock on `path` (a store or run folder) while the block runs; a KDError at once if
    another process holds it, naming the holder; `what` names the guarded thing ("store store/noise").
    shared=True for readers: any number of them, but no exclusive holder, at a time."""
    import fcntl

    file = lock_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise KDError(f"{what} is in use by another process ({holder}); wait for it to finish "
                           f"or stop it, then run this again") from None
        if _same_file(fd, file):
            break
        os.close(fd)  # its holder removed the file while we waited: lock the new one
    try:
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                      "command": " ".join(sys.argv)}).encode(), 0)
        yield
    finally:
        if not shared:  # no other holder can exist: the next one creates the file afresh
            file.unlink(missing_ok=True)
        os.close(fd)


def _same_file(fd: int, file: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(file))
    except FileNotFoundError:
        return False


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']} since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a reader, or a holder that has not said who it is"
