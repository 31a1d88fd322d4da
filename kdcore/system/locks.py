"""One writer at a time: advisory locks on a file beside what they guard (a store, a run folder).

The lock is the OS's (`flock`): it ends with its holder, so a killed run leaves no stale lock, only
the file, which the next holder reuses. The holder writes its pid, host and command into the file,
and a process that cannot take the lock names that holder in its error.
"""

from __future__ import annotations

import fcntl
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
    file = lock_path(path)
    made = [p for p in (file.parent, *file.parent.parents) if not p.exists()]  # folders this lock creates
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield from _held(file, what, shared)
    finally:
        for folder in made:  # a refusal (or a run that wrote nothing beside its lock) leaves no empty folders
            try:
                folder.rmdir()
            except OSError:  # not empty: something was made in it
                break


def _held(file: Path, what: str, shared: bool) -> Iterator[None]:
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd, file)
            os.close(fd)
            raise KDError(f"{what} is in use by another process ({holder}); wait for it to finish "
                           f"or stop it, then run this again") from None
        if _same_file(fd, file):
            break
        os.close(fd)  # its holder removed the file while we waited: lock the new one
    reader = file.with_name(f"{file.name}.{os.getpid()}.reader")  # a reader says who it is beside the lock
    try:
        if shared:
            reader.write_text(_whoami())
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _whoami().encode(), 0)
        yield
    finally:
        if shared:
            reader.unlink(missing_ok=True)
        else:  # no other holder can exist: the next one creates the file afresh
            file.unlink(missing_ok=True)
        os.close(fd)


def _whoami() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "command": " ".join(sys.argv)})


def _same_file(fd: int, file: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(file))
    except FileNotFoundError:
        return False


def _describe(fd: int, file: Path) -> str:
    """Who holds the lock: the writer (what it wrote into the lock file), or the readers that said so
    beside it."""
    try:
        return _said(os.pread(fd, 4096, 0))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    readers = []
    for path in sorted(file.parent.glob(f"{file.name}.*.reader")):
        try:
            if _alive(int(path.name.split(".")[-2])):  # a killed reader's file stays; its lock does not
                readers.append(_said(path.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return "read by " + "; ".join(readers) if readers else "a holder that has not said who it is"


def _said(data: bytes) -> str:
    info = json.loads(data)
    return f"pid {info['pid']} on host {info['host']} since {info['since']}: {info['command']}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
