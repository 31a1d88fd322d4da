"""A store's life: made whole or not at all, checked against the dataset it should hold, mended after
a kill or damage, and replaced only when it is provably a LlamaKD store.

- `create_store` builds under `.<name>.creating<pid>` and renames into place: a kill leaves nothing
  half-made where the store should be.
- `differences` says why a store is not the one a dataset's identity describes (its keys listed).
- `prepare` is what generation does first (under the store's lock): refuse another dataset's store
  unless told to overwrite it, check the disk has room, create, or mend (leftovers of killed writes
  removed, damaged blocks uncommitted so they are generated again). It returns notes for the person
  running it; it prints nothing.
- `is_store`: what `--overwrite` may delete. Any other folder is refused, nothing deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from kdcore.problems import KDError, Problem
from kdcore.store.integrity import damage, damaged_blocks
from kdcore.store.layout import UNCOMPRESSED, Layout, human_bytes
from kdcore.store.records import RECORDS
from kdcore.store.store import FORMAT_VERSION, Store, zarr
from kdcore.system.files import replace_file


def is_store(path: str | Path) -> bool:
    """Whether `path` is provably a LlamaKD store (of any format version, damaged or not): its group
    metadata says so, or (format 2 on) its commit records' group."""
    path = Path(path)
    for meta, key in ((path / "zarr.json", "format_version"), (path / RECORDS / "zarr.json", "llamakd_format")):
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(attrs, dict) and isinstance(attrs.get(key), int) and (key != "format_version" or "layout" in attrs):
            return True
    return False


def create_store(path: str | Path, layout: Layout, attrs: dict) -> Store:
    path = Path(path)
    if path.exists():
        raise KDError(Problem("already exists", file=str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    building = creating_path(path)
    shutil.rmtree(building, ignore_errors=True)
    _build(building, layout, attrs)
    os.replace(building, path)
    return Store.open(path, mode="r+")


def creating_path(path: Path) -> Path:
    """Where a store is built before it is renamed into place (`.<name>.creating<pid>` beside it)."""
    return path.with_name(f".{path.name}.creating{os.getpid()}")


def _build(path: Path, layout: Layout, attrs: dict) -> None:
    group = zarr().open_group(str(path), mode="w-")
    for name, (shape, chunks, dtype) in layout.arrays().items():
        codec = {"compressors": None} if name in UNCOMPRESSED else {}
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **codec)
    group.create_group(RECORDS).attrs.update({
        "llamakd_format": FORMAT_VERSION, "identity_hash": attrs.get("identity_hash"),
        "teacher_fingerprint": attrs.get("teacher", {}).get("fingerprint")})
    # metadata last: without it, the folder is recognisably unfinished
    group.attrs.update({**attrs, "layout": layout.__dict__, "complete": False,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "format_version": FORMAT_VERSION})


def restore_metadata(path: str | Path, layout: Layout, attrs: dict) -> list[str]:
    """Rewrite a store's unreadable metadata files (zarr.json) as `create_store` wrote them, where the
    store provably is the one `attrs` describe (the identity hash and teacher fingerprint in its
    group metadata, or in its commit records' group where that is what was lost). The chunks are
    left alone, for verification to judge. Returns what was rewritten."""
    path = Path(path)
    broken = [n for n in ["", *layout.arrays(), RECORDS] if not _metadata_readable(path / n / "zarr.json")]
    if not broken:
        return []
    if not _made_from(path, attrs):
        raise KDError(Problem(f"metadata unreadable ({', '.join(n or 'group' for n in broken)}) and nothing left "
                              "in it proves it holds this dataset; regenerate it with --overwrite", file=str(path)))
    fresh = creating_path(path)
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        _build(fresh, layout, attrs)
        for name in broken:
            (path / name).mkdir(parents=True, exist_ok=True)
            replace_file(path / name / "zarr.json", (fresh / name / "zarr.json").read_bytes())
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return [n or "group" for n in broken]


def differences(store: Store, identity: dict, identity_hash: str, made_by: dict | None = None) -> list[str]:
    """Why `store` is not the one a dataset of this identity would be ([] if it is): the dataset's
    and the teacher's spec, their differing keys listed; with `made_by` (the `teacher` and `sampler`
    records generation would write), also the teacher's weights, and its device where the
    sampler's samples depend on it."""
    problems = []
    if store.attrs.get("identity_hash") != identity_hash:
        problems += changed_keys(store.attrs.get("identity", {}), identity) or ["its recorded spec differs"]
    if made_by is None:
        return problems
    old, new = store.attrs.get("teacher", {}), made_by["teacher"]
    if made_by["sampler"]["deterministic"] == "device" and old.get("device") != new["device"]:
        # its samples depend on the teacher's numerics: mixing devices would mix two datasets
        problems.append(f"teacher device: {old.get('device')} -> {new['device']} "
                        f"(sampler '{made_by['sampler']['name']}' is deterministic per device)")
    if old.get("fingerprint") != new["fingerprint"]:
        problems.append(f"teacher fingerprint: {old.get('fingerprint')} -> {new['fingerprint']}")
    return problems


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested dicts, as 'a.b: old -> new'."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        loc = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(changed_keys(a, b, loc))
        elif a != b:
            out.append(f"{loc}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


# --- what generation does first -----------------------------------------------------------------------


def prepare(path: Path, source: str, key: str, attrs: dict, layout: Layout, overwrite: bool, repair: bool) -> list[str]:
    """Under the store's lock: check an existing store against `attrs` (what generation would
    record), or create it; uncommit damaged blocks so that they are generated again. `source` and
    `key` (the spec, `datasets.<name>`) name the dataset in problems. Returns notes to show."""
    for stale in [*path.parent.glob(f".{path.name}.creating*"), *path.parent.glob(f".{path.name}.deleting*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a kill part-way through a create or delete
    if path.exists() and not is_store(path):
        if any(path.iterdir()):
            raise KDError(f"{path} exists and is not a LlamaKD store (no store metadata in it); nothing was changed, "
                          f"not even with --overwrite. Move it away, or change store_dir or the dataset's name in {source}.")
        path.rmdir()
    notes, problems = _against(path, attrs, layout, repair) if path.exists() else ([], [])
    if problems and not overwrite:
        raise KDError(f"{path} holds a different dataset than {source} {key} would generate:\n  " + "\n  ".join(problems)
                      + f"\nNothing was changed. Name a new dataset, or pass --overwrite to regenerate {path}.")
    space = space_problem(source, {key: (path, layout, bool(problems))})
    if space:  # before anything is deleted or created
        raise KDError(space)
    if problems:
        if path.is_symlink():  # deleting it would delete what the link points to, or only half of it
            raise KDError(f"{path} is a symbolic link (to {os.readlink(path)}): --overwrite deletes only stores that "
                          f"are folders of their own; nothing was changed. Remove the link, or set store_dir in "
                          f"{source} to the folder it points to.")
        delete_store(path)
    if path.exists():
        return notes + mend(Store.open(path, mode="r+"), repair)
    create_store(path, layout, attrs)
    return notes


def _against(path: Path, attrs: dict, layout: Layout, repair: bool) -> tuple[list[str], list[str]]:
    """(notes, why the store at `path` is not the dataset `attrs` describe); with `repair`, its
    unreadable metadata rewritten first where it provably is."""
    notes = []
    if repair:
        restored = restore_metadata(path, layout, attrs)
        if restored:
            notes.append(f"{path}: metadata rewritten: {', '.join(restored)}")
    try:
        store = Store.open(path, mode="r")
    except KDError as e:
        return notes, [str(e)]
    return notes, differences(store, attrs["identity"], attrs["identity_hash"], attrs)


def mend(store: Store, repair: bool) -> list[str]:
    """Remove leftovers of killed writes; uncommit blocks that are not intact (a stat per chunk
    file; with `repair`, every block read and checked), for this run to generate them again."""
    for leftover in store.leftovers():
        leftover.unlink(missing_ok=True)
    found = damage(store, deep=repair)
    if found:
        blocks = damaged_blocks(found)
        store.uncommit(blocks)
        return [*map(str, found), f"{store.path}: regenerating block{'s' * (len(blocks) > 1)} {', '.join(map(str, blocks))}"]
    return [f"{store.path}: every committed block checked: none damaged"] if repair else []


def delete_store(path: Path) -> None:
    """Delete a store: renamed aside first, so a kill part-way leaves no half-deleted store in place."""
    aside = path.with_name(f".{path.name}.deleting{os.getpid()}")
    os.replace(path, aside)
    shutil.rmtree(aside)


# --- room on the disk ---------------------------------------------------------------------------------


def missing(path: Path, layout: Layout, replacing: bool = False) -> tuple[int, int]:
    """(samples, bytes on disk) a store at `path` still lacks: all of it where none is, or where it is
    to be replaced; its files as the disk counts them (`Layout.disk_bytes`)."""
    pending, new = np.arange(layout.num_blocks), True
    if is_store(path) and not replacing:
        try:
            pending, new = np.asarray(Store.open(path).pending_blocks(), dtype=np.int64), False
        except KDError:
            pass  # unreadable: counted whole, as --overwrite or --repair would write it
    rows = np.minimum(layout.block_rows, layout.num_samples - pending * layout.block_rows).sum()
    where = next(p for p in (path, *path.parents) if p.exists())
    return int(rows), layout.disk_bytes(len(pending), os.statvfs(where).f_frsize, new)


def space_problem(source: str, stores: dict[str, tuple[Path, Layout, bool]]) -> str | None:
    """Refuse before any teacher work when what these stores (key: (path, layout, being replaced))
    still lack on disk is more than the free space there: a full disk hours into a run
    (or into its second dataset) stops it with nothing to show for the rest. A store being replaced
    is counted whole, and the space its deletion frees as free."""
    disks: dict[int, tuple[Path, list[str], int]] = {}
    for key, (path, layout, replacing) in stores.items():
        rows, need = missing(path, layout, replacing)
        if replacing:
            need -= sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if need > 0:
            where = next(p for p in (path, *path.parents) if p.exists())
            at, parts, total = disks.get(os.stat(where).st_dev, (where, [], 0))
            parts.append(f"{key}: {human_bytes(need)} for {rows} samples in {path}")
            disks[os.stat(where).st_dev] = (at, parts, total + need)
    for at, parts, total in disks.values():
        free = shutil.disk_usage(at).free
        if total > free:
            return (f"not enough disk space for {source}: " + "; ".join(parts)
                    + f" (on disk, about {human_bytes(total)} in all), and {human_bytes(free)} is free on that "
                    f"disk. Nothing was generated, deleted or created. Free space, or set store_dir in {source} "
                    "to a larger disk.")
    return None


def _metadata_readable(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text())
        return isinstance(meta, dict) and meta.get("zarr_format") == 3
    except (OSError, ValueError):
        return False


def _made_from(path: Path, attrs: dict) -> bool:
    """Whether the store at `path` records the identity and teacher of `attrs` (in its group
    metadata, else in its commit records' group)."""
    want = (attrs.get("identity_hash"), attrs.get("teacher", {}).get("fingerprint"))
    for meta in (path / "zarr.json", path / RECORDS / "zarr.json"):
        try:
            got = json.loads(meta.read_text())["attributes"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        teacher = got.get("teacher", {}).get("fingerprint") if "teacher" in got else got.get("teacher_fingerprint")
        return (got.get("identity_hash"), teacher) == want
    return False
