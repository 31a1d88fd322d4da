"""The generated dataset on disk: one Zarr v3 group per dataset (see DESIGN.md, "Store").

Arrays are created at their final size. Rows are written a block (= one chunk of every array) at a
time; then the block's commit record (`kdcore.store.records`) is written, and `committed[b]` is set
last, so a killed run leaves at worst uncommitted blocks, which the next run redoes. Every read is
checked against the record: a damaged block is a problem naming the store and block, never data.
How the bytes come off the disk is `kdcore.store.chunkio`'s concern; how a store is made, checked
against its spec, mended and replaced is `kdcore.store.lifecycle`'s. Nothing here appends or resizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdcore.problems import KDError, Problem
from kdcore.store import records
from kdcore.store.chunkio import ArrayReader, ChunkError
from kdcore.store.layout import Layout
from kdcore.store.records import REGENERATED, checksum, input_checksum

# 2: a commit record per block (checksums, file sizes); every chunk has a file. 3: for inputs kept as
# seeds, the record also holds a checksum of each row's inputs as generated, which training checks
# against the inputs it regenerates (a sampler whose code changed no longer trains silently).
FORMAT_VERSION = 3

REPAIR = "`kd generate --repair SPEC` (the spec that made the store) regenerates exactly the damaged blocks"


def zarr():
    import zarr as module

    return module


class Store:
    def __init__(self, path: Path, group):
        self.path = Path(path)
        self.group = group
        self.attrs = dict(group.attrs)
        self.layout = Layout(**self.attrs["layout"])
        self._arrays, self._readers, self._records = {}, {}, {}
        self.unreadable_flags: list[int] = []  # blocks whose commit flag could not be read

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "Store":
        """The store at `path`, its metadata readable and of this format; a problem naming it otherwise."""
        path = Path(path)
        if not path.exists():
            raise _error(path, "does not exist (so it is not a LlamaKD store yet); generate it with `kd generate SPEC`")
        if not (path / "zarr.json").exists():
            raise _error(path, "not a LlamaKD store (no zarr.json); generate it with `kd generate SPEC`")
        try:
            group = zarr().open_group(str(path), mode=mode)
            attrs = dict(group.attrs)
        except Exception as e:  # corrupt metadata
            raise _error(path, f"cannot read the store metadata ({type(e).__name__}: {e}); "
                               "`kd generate --repair SPEC` or --overwrite makes it again") from None
        version = attrs.get("format_version")
        if version != FORMAT_VERSION and isinstance(version, int) and "layout" in attrs:
            raise _error(path, f"a LlamaKD store of format {version}; this version reads format {FORMAT_VERSION}; "
                               "regenerate it with `kd generate --overwrite SPEC`")
        if version != FORMAT_VERSION or "layout" not in attrs:
            raise _error(path, f"not a LlamaKD store of format {FORMAT_VERSION} (attrs: format_version={version!r}); "
                               "regenerate it or name a new dataset")
        try:
            store = cls(path, group)
        except Exception as e:  # a layout that does not fit this version
            raise _error(path, f"cannot read the store layout ({type(e).__name__}: {e})") from None
        broken = store.unreadable_metadata()
        if broken:
            raise _error(path, f"corrupt store: {'; '.join(broken)}; `kd generate --repair SPEC` rewrites it "
                               "(or --overwrite regenerates the store)")
        return store

    def unreadable_metadata(self) -> list[str]:
        missing, broken = [], []
        for name in [*self.layout.arrays(), records.RECORDS]:
            if not (self.path / name / "zarr.json").exists():
                missing.append(name)
                continue
            try:
                self.array(name) if name != records.RECORDS else self.group[name]
            except Exception as e:  # unreadable metadata
                broken.append(f"{name} ({type(e).__name__}: {e})")
        return ([f"arrays missing: {', '.join(missing)}"] if missing else []) + (
            [f"array metadata unreadable: {'; '.join(broken)}"] if broken else [])

    def array(self, name: str):
        if name not in self._arrays:  # every chunk gets a file, fill values too: a missing file is damage
            self._arrays[name] = self.group[name].with_config({"write_empty_chunks": True})
        return self._arrays[name]

    # --- progress ---
    def committed(self) -> np.ndarray:
        """One flag per block. A flag that cannot be read (a write cut short) counts as not committed."""
        flags = self.array("committed")
        self.unreadable_flags = []
        try:
            return np.asarray(flags[:]) == 1
        except Exception:
            out = np.zeros(self.layout.num_blocks, dtype=bool)
            for b in range(self.layout.num_blocks):
                try:
                    out[b] = flags[b] == 1
                except Exception:
                    self.unreadable_flags.append(b)
            return out

    def pending_blocks(self, rank: int = 0, world: int = 1) -> list[int]:
        pending = np.flatnonzero(~self.committed())
        return pending[pending % world == rank].tolist()

    def write_block(self, b: int, data: dict[str, np.ndarray], inputs_rows: list[int] | None = None) -> None:
        """Block b of every array, then its commit record, then its commit flag. `inputs_rows`: for
        inputs kept as seeds, the checksum of each row's inputs as generated (`input_checksum`)."""
        lo, hi = self.layout.block_range(b)
        if (inputs_rows is None) == self.layout.regenerates_inputs:
            raise ValueError(f"block {b}: input checksums {'missing' if inputs_rows is None else 'given'} "
                             f"for a store whose inputs are {'' if self.layout.regenerates_inputs else 'not '}regenerated")
        for name, value in [*data.items(), *([(REGENERATED, np.asarray(inputs_rows))] if inputs_rows is not None else [])]:
            if len(value) != hi - lo:
                raise ValueError(f"block {b}: {name} has {len(value)} rows, expected {hi - lo}")
        record, dtypes = {}, {n: spec[2] for n, spec in self.layout.arrays().items()}
        for name, value in data.items():
            value = np.ascontiguousarray(value, dtype=dtypes[name])  # checksummed as stored
            self.array(name)[lo:hi] = value
            record[name] = records.entry(value, name, self.chunk_path(name, b).stat().st_size)
        if inputs_rows is not None:
            record[REGENERATED] = {"row_crc32c": [int(c) for c in inputs_rows]}
        records.write_record(self.path, b, record)
        self._records[b] = record
        self.array("committed")[b] = 1  # last: the block counts only once all of it is on disk

    def mark_complete(self) -> None:
        if not self.committed().all():
            raise _error(self.path, "cannot mark complete with uncommitted blocks")
        self.group.attrs["complete"] = True
        self.attrs["complete"] = True

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    def uncommit(self, blocks: list[int]) -> None:
        """Forget blocks (the next run regenerates them): the store is no longer complete."""
        if blocks and self.complete:
            self.group.attrs["complete"] = False
            self.attrs["complete"] = False
        for b in blocks:
            self.array("committed")[b] = 0
            records.record_path(self.path, b).unlink(missing_ok=True)
            self._records.pop(b, None)

    # --- reading, every read checked against the block's record ---
    def record(self, b: int) -> dict:
        """Block b's commit record (its arrays' entries); a damage problem if it is missing or malformed."""
        if b not in self._records:
            arrays, problem = records.load_record(self.path, b, self.layout)
            if problem:
                raise self.damaged(b, problem)
            self._records[b] = arrays
        return self._records[b]

    def read_block(self, b: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Block b of each array, checked against its commit record."""
        lo, hi = self.layout.block_range(b)
        record, out = self.record(b), {}
        for n in names or self.layout.data_arrays():
            try:
                out[n] = self._reader(n).read(b, lo, hi)
            except ChunkError as e:
                raise self.damaged(b, f"{n}: {e}") from None
            if checksum(out[n]) != record[n]["crc32c"]:
                raise self.damaged(b, f"{n}: checksum mismatch (the data is not what was written)")
        return out

    def rows_readable(self, name: str) -> bool:
        """Whether `read_rows` can read single rows of array `name` without the rest of their block."""
        return self._reader(name).rows_readable

    def read_rows(self, name: str, b: int, local: np.ndarray, out: np.ndarray) -> None:
        """Rows `local` (sorted, counted from the block's start) of block b of array `name` into
        `out`, each row checked against the commit record. Only where `rows_readable(name)`."""
        expected = self.record(b)[name]["row_crc32c"]
        try:
            self._reader(name).read_rows(b, local, out)
        except ChunkError as e:
            raise self.damaged(b, f"{name}: {e}") from None
        for row, i in zip(out, local.tolist()):
            if checksum(row) != expected[i]:
                raise self.damaged(b, f"{name}: checksum mismatch in row {i} (the data is not what was written)")

    def check_regenerated(self, rows: np.ndarray, soft) -> None:
        """A problem unless the inputs regenerated for global `rows` (float rows, (n, S, V)) are the
        ones the targets were made from: the checksums generation recorded (seed-mode stores)."""
        for row, inputs in zip(rows.tolist(), soft):
            b, i = divmod(row, self.layout.block_rows)
            if input_checksum(inputs) != self.record(b)[REGENERATED]["row_crc32c"][i]:
                raise _error(self.path, f"the inputs sampler '{self.attrs.get('sampler', {}).get('name')}' draws now "
                                        f"for sample {row} (block {b}) are not those its targets were made from: the "
                                        "sampler's code or its numerics changed since the store was generated. "
                                        "Regenerate the store (`kd generate --overwrite SPEC`) or use the sampler's "
                                        "version that made it")

    def prefetch(self, b: int, names: list[str]) -> None:
        """Ask the OS to start reading block b's chunk files ahead of `read_block` (a hint)."""
        for n in names:
            self._reader(n).prefetch(b)

    def damaged(self, b: int, reason: str) -> KDError:
        return KDError(Problem(reason, f"block {b}", str(self.path)), REPAIR)

    def _reader(self, name: str) -> ArrayReader:
        if name not in self._readers:
            self._readers[name] = ArrayReader(self.path / name, self.layout.block_rows, lambda: self.array(name))
        return self._readers[name]

    # --- files ---
    def chunk_path(self, name: str, b: int) -> Path:
        ndim = len(self.layout.arrays()[name][0])
        return self.path.joinpath(name, "c", str(b), *["0"] * (ndim - 1))  # zarr's default chunk keys

    def leftovers(self) -> list[Path]:
        """Temporary files of writes a kill cut short (zarr's `*.partial`, ours `*.tmp`)."""
        return [p for p in self.path.rglob("*") if p.is_file() and (p.suffix in (".partial", ".tmp"))]

    def bytes_on_disk(self) -> int:
        left = set(self.leftovers())
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file() and p not in left)


def _error(path: Path, message: str) -> KDError:
    return KDError(Problem(message, file=str(path)))
