"""Is a store intact? The one check that `kd inspect`, `kd generate` (resume, `--repair`) and `kd
train` all use, so that no store is refused by one and passed by another.

A committed block is intact when its flag reads 1, its commit record is exactly what generation
writes, and every chunk file has the size its record says (a stat per file); a deep check also
reads every block and compares it with its checksums. Each damaged block is a problem keyed
`block <b>`; `damaged_blocks` gives back their numbers (what repair regenerates).
"""

from __future__ import annotations

import re

import numpy as np

from kdcore.problems import KDError, Problem
from kdcore.store.records import checksum
from kdcore.store.store import REPAIR, Store


def damage(store: Store, deep: bool = False) -> list[Problem]:
    """Every committed block that is not intact, a problem per fault; with `deep`, every block read
    and checked against its checksums (the whole store is read)."""
    done = store.committed()
    problems = [_at(store, b, "commit flag unreadable") for b in store.unreadable_flags]
    if store.complete:
        problems += [_at(store, int(b), "not committed, in a store marked complete") for b in np.flatnonzero(~done)]
    for b in np.flatnonzero(done).tolist():
        found = file_problems(store, b)
        if deep and not found:
            found = content_problems(store, b)
        problems += found
    return problems


def require_intact(store: Store) -> None:
    """A KDError naming every damaged block (stat only: cheap before training)."""
    found = damage(store)
    if found:
        raise KDError(*found, REPAIR)


def damaged_blocks(problems: list[Problem]) -> list[int]:
    """The blocks `damage` found problems with, in order."""
    return sorted({int(m.group(1)) for p in problems if (m := _BLOCK.fullmatch(p.key))})


def file_problems(store: Store, b: int) -> list[Problem]:
    """Block b's record and chunk files: present, well-formed, of the recorded sizes."""
    try:
        record = store.record(b)
    except KDError as e:
        return [p for p in e.problems if p.key]
    problems = []
    for name in store.layout.data_arrays():
        try:
            size = store.chunk_path(name, b).stat().st_size
        except FileNotFoundError:
            problems.append(_at(store, b, f"{name}: chunk file missing"))
            continue
        if size != record[name]["file_bytes"]:
            problems.append(_at(store, b, f"{name}: chunk file is {size} bytes, its commit record says "
                                          f"{record[name]['file_bytes']}"))
    return problems


def content_problems(store: Store, b: int) -> list[Problem]:
    """Block b read, every array checked against its checksums: the block's, and each row's where
    rows are read alone (what training checks when it reads them so)."""
    problems = []
    for name in store.layout.data_arrays():
        try:
            values = store.read_block(b, [name])[name]
        except KDError as e:
            problems += [p for p in e.problems if p.key]
            continue
        rows = store.record(b)[name].get("row_crc32c")
        wrong = [i for i, row in enumerate(values) if rows is not None and checksum(row) != rows[i]]
        if wrong:
            problems.append(_at(store, b, f"{name}: the commit record's checksums of rows {wrong[:5]} do not match "
                                          "the data (the record is not the one written with it)"))
    return problems


_BLOCK = re.compile(r"block (\d+)")


def _at(store: Store, b: int, reason: str) -> Problem:
    return Problem(reason, f"block {b}", str(store.path))
