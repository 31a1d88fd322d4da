"""The generated dataset on disk: one Zarr v3 group per dataset (see DESIGN.md, "Store").

Arrays are created at their final size. Rows are written a block (= one chunk of every array) at a
time; then the block's commit record (each array's checksum and chunk file size) is written, and
`committed[b]` is set last, so a killed run leaves at worst uncommitted blocks, which the next run
redoes. Every read is checked against the record: a damaged block is named, never read as data.
How the bytes come off the disk is `kdcore.chunkio`'s concern. Nothing here appends or resizes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdcore.chunkio import ArrayReader, ChunkError
from kdcore.errors import StoreError

# 2: a commit record per block (checksums, file sizes); every chunk has a file. 3: for inputs kept as
# seeds, the record also holds a checksum of each row's inputs as generated, which training checks
# against the inputs it regenerates (a sampler whose code changed no longer trains silently).
FORMAT_VERSION = 3

# Dense float16 arrays (vocab-sized logits, noise inputs) are stored raw: read every epoch, and zstd
# slows their reads far more than it saves (figures in DESIGN.md). The rest keeps zarr's zstd.
UNCOMPRESSED = {"logits", "inputs"}

RECORDS = "commits"  # a zarr group; holds `<block>.json`, the commit record of each block
REGENERATED = "inputs (regenerated)"  # the record's entry for inputs kept as seeds: not an array


@dataclass
class Layout:
    """Everything that fixes the shapes and dtypes of a store's arrays."""

    num_samples: int
    max_seq_len: int
    vocab_size: int
    positions: str  # last | all
    logits: str  # dense | topk
    topk: int
    inputs: str  # seed | dense
    produces: str  # ids | soft
    block_rows: int

    @property
    def num_blocks(self) -> int:
        return -(-self.num_samples // self.block_rows)

    def block_range(self, b: int) -> tuple[int, int]:
        return b * self.block_rows, min((b + 1) * self.block_rows, self.num_samples)

    @property
    def index_dtype(self) -> str:
        return "uint16" if self.vocab_size <= 65536 else "int32"

    def arrays(self) -> dict[str, tuple[tuple, tuple, str]]:
        """name -> (shape, chunks, dtype)."""
        N, S, V, B = self.num_samples, self.max_seq_len, self.vocab_size, self.block_rows
        pos = (S,) if self.positions == "all" else ()
        out = {"seed": ((N,), (B,), "int64"), "length": ((N,), (B,), "int32")}
        if self.produces == "ids":
            out["ids"] = ((N, S), (B, S), "int32")
        elif self.inputs == "dense":
            out["inputs"] = ((N, S, V), (B, S, V), "float16")
        if self.logits == "dense":
            out["logits"] = ((N, *pos, V), (B, *pos, V), "float16")
        else:
            k = self.topk
            out["topk_values"] = ((N, *pos, k), (B, *pos, k), "float16")
            out["topk_indices"] = ((N, *pos, k), (B, *pos, k), self.index_dtype)
            out["logsumexp"] = ((N, *pos), (B, *pos), "float32")
        out["committed"] = ((self.num_blocks,), (1,), "uint8")  # one file per flag: writers never share
        return out

    @property
    def regenerates_inputs(self) -> bool:
        """Float-row inputs kept as seeds: training regenerates them with the sampler."""
        return self.produces == "soft" and self.inputs == "seed"

    def data_arrays(self) -> list[str]:
        """The arrays a block's rows are written to (all but the commit flags)."""
        return [n for n in self.arrays() if n != "committed"]

    def bytes_per_sample(self) -> int:
        return sum(
            int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
            for name, (shape, _, dtype) in self.arrays().items()
            if name != "committed"
        )

    def original_bytes_per_sample(self) -> int:
        """The 2023 layout: float16 inputs (S, V) + float32 last-position logits (V) per sample."""
        return self.max_seq_len * self.vocab_size * 2 + self.vocab_size * 4


def human_bytes(n: float) -> str:
    """Powers of 1024, named so (as `kd inspect` prints them)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def checksum(values: np.ndarray) -> int:
    """CRC-32C of an array's bytes in C order (hardware-accelerated; its cost: DESIGN.md, "Store")."""
    import google_crc32c  # installed with zarr, whose crc32c codec uses it

    return google_crc32c.value(np.ascontiguousarray(values).reshape(-1).view(np.uint8))


def input_checksum(soft_row) -> int:
    """The checksum of one sample's float rows (a torch tensor, (S, V)) as the sampler made them."""
    return checksum(soft_row.detach().cpu().contiguous().numpy())


class StoreDamaged(StoreError):
    """Committed blocks whose data is missing or not what was written: `damage` maps each block to
    what is wrong with it."""

    def __init__(self, message: str, damage: dict[int, list[str]] | None = None):
        super().__init__(message)
        self.damage = damage or {}

    @classmethod
    def of(cls, path: Path, damage: dict[int, list[str]]) -> "StoreDamaged":
        return cls(f"{describe_damage(path, damage)}\n`kd generate --repair SPEC` (the spec that made the "
                   f"store) regenerates exactly these blocks", damage)


def describe_damage(path: Path, damage: dict[int, list[str]], shown: int = 12) -> str:
    """'<path>: damaged blocks 3, 7:' and a line per block (the first `shown`) saying what is wrong."""
    blocks = sorted(damage)
    lines = [f"{path}: damaged block{'s' * (len(blocks) > 1)} {', '.join(map(str, blocks))}:"]
    lines += [f"  block {b}: {'; '.join(damage[b])}" for b in blocks[:shown]]
    return "\n".join(lines + ([f"  ... and {len(blocks) - shown} more"] if len(blocks) > shown else []))


def _zarr():
    import zarr

    return zarr


def is_store(path: str | Path) -> bool:
    """Whether `path` is provably a LlamaKD store (of any format version, damaged or not): what
    `--overwrite` may delete. Its group metadata says so, or (format 2 on) its commit records' group."""
    path = Path(path)
    for meta, key in ((path / "zarr.json", "format_version"), (path / RECORDS / "zarr.json", "llamakd_format")):
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(attrs, dict) and isinstance(attrs.get(key), int) and (key != "format_version" or "layout" in attrs):
            return True
    return False


class Store:
    def __init__(self, path: Path, group):
        self.path = Path(path)
        self.group = group
        self.attrs = dict(group.attrs)
        self.layout = Layout(**self.attrs["layout"])
        self._arrays, self._readers, self._records = {}, {}, {}
        self.unreadable_flags: list[int] = []  # blocks whose commit flag could not be read

    # --- opening ---
    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "Store":
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path} does not exist (so it is not a LlamaKD store yet); generate it with `kd generate SPEC`")
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not a LlamaKD store (no zarr.json); generate it with `kd generate SPEC`")
        try:
            group = _zarr().open_group(str(path), mode=mode)
            attrs = dict(group.attrs)
        except Exception as e:  # corrupt metadata
            raise StoreError(f"{path}: cannot read the store metadata ({type(e).__name__}: {e}); "
                             f"`kd generate --repair SPEC` or --overwrite makes it again") from None
        version = attrs.get("format_version")
        if version != FORMAT_VERSION and isinstance(version, int) and "layout" in attrs:
            raise StoreError(f"{path}: a LlamaKD store of format {version}; this version reads format "
                             f"{FORMAT_VERSION}; regenerate it with "
                             f"`kd generate --overwrite SPEC`")
        if version != FORMAT_VERSION or "layout" not in attrs:
            raise StoreError(f"{path}: not a LlamaKD store of format {FORMAT_VERSION} (attrs: format_version="
                             f"{version!r}); regenerate it or name a new dataset")
        try:
            store = cls(path, group)
        except Exception as e:  # a layout that does not fit this version
            raise StoreError(f"{path}: cannot read the store layout ({type(e).__name__}: {e})") from None
        problems = store._unreadable_metadata()
        if problems:
            raise StoreError(f"{path}: corrupt store: {'; '.join(problems)}; "
                             f"`kd generate --repair SPEC` rewrites it (or --overwrite regenerates the store)")
        return store

    def _unreadable_metadata(self) -> list[str]:
        missing, broken = [], []
        for name in [*self.layout.arrays(), RECORDS]:
            if not (self.path / name / "zarr.json").exists():
                missing.append(name)
                continue
            try:
                self.array(name) if name != RECORDS else self.group[name]
            except Exception as e:  # unreadable metadata
                broken.append(f"{name} ({type(e).__name__}: {e})")
        return ([f"arrays missing: {', '.join(missing)}"] if missing else []) + (
            [f"array metadata unreadable: {'; '.join(broken)}"] if broken else [])

    @classmethod
    def create(cls, path: str | Path, layout: Layout, attrs: dict) -> "Store":
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        # built under a temporary name and renamed: a run killed here leaves no half-made store behind
        final, path = path, creating_path(path)
        shutil.rmtree(path, ignore_errors=True)
        group = _zarr().open_group(str(path), mode="w-")
        _create_arrays(group, layout, attrs)
        group.attrs.update(_group_attrs(layout, attrs))  # metadata last: without it, recognisably unfinished
        os.replace(path, final)
        return cls.open(final, mode="r+")

    @classmethod
    def restore_metadata(cls, path: str | Path, layout: Layout, attrs: dict) -> list[str]:
        """Rewrite a store's unreadable metadata files (zarr.json) as `create` wrote them, where the
        store is provably the one `attrs` describe (the identity hash and teacher fingerprint in its
        group metadata, or in its commit records' group where that is what was lost). The chunks
        are left alone, for verification to judge. Returns what was rewritten."""
        path = Path(path)
        broken = [n for n in ["", *layout.arrays(), RECORDS] if not _metadata_readable(path / n / "zarr.json")]
        if not broken:
            return []
        if not _made_from(path, attrs):
            raise StoreError(f"{path}: metadata unreadable ({', '.join(n or 'group' for n in broken)}) and nothing "
                             f"left in it proves it holds this dataset; regenerate it with --overwrite")
        fresh = creating_path(path)
        shutil.rmtree(fresh, ignore_errors=True)
        try:
            group = _zarr().open_group(str(fresh), mode="w-")
            _create_arrays(group, layout, attrs)
            group.attrs.update(_group_attrs(layout, attrs))
            for name in broken:
                (path / name).mkdir(parents=True, exist_ok=True)
                replace_file(path / name / "zarr.json", (fresh / name / "zarr.json").read_bytes())
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
        return [n or "group" for n in broken]

    def array(self, name: str):
        if name not in self._arrays:  # every chunk gets a file, fill values too: a missing file is damage
            self._arrays[name] = self.group[name].with_config({"write_empty_chunks": True})
        return self._arrays[name]

    # --- identity ---
    def differences(self, spec, dataset: str, made_by: dict | None = None) -> list[str]:
        """Why this store is not the one `spec` would generate for `dataset` ([] if it is): the
        dataset's and the teacher's spec, their differing keys listed; with `made_by` (the `teacher`
        and `sampler` records generation would write, see `generate.store_attrs`), also the
        teacher's weights, and its device where the sampler's samples depend on it."""
        from kdcore.spec import spec_hash

        identity = spec.dataset_identity(dataset)
        problems = []
        if self.attrs.get("identity_hash") != spec_hash(identity):
            problems += _changed_keys(self.attrs.get("identity", {}), identity) or ["its recorded spec differs"]
        if made_by is None:
            return problems
        old, new = self.attrs.get("teacher", {}), made_by["teacher"]
        if made_by["sampler"]["deterministic"] == "device" and old.get("device") != new["device"]:
            # its samples depend on the teacher's numerics: mixing devices would mix two datasets
            problems.append(f"teacher device: {old.get('device')} -> {new['device']} "
                            f"(sampler '{made_by['sampler']['name']}' is deterministic per device)")
        if old.get("fingerprint") != new["fingerprint"]:
            problems.append(f"teacher fingerprint: {old.get('fingerprint')} -> {new['fingerprint']}")
        return problems

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
        done = self.committed()
        return [b for b in range(self.layout.num_blocks) if b % world == rank and not done[b]]

    def write_block(self, b: int, data: dict[str, np.ndarray], inputs_rows: list[int] | None = None) -> None:
        """Block b of every array, then its commit record, then its commit flag. `inputs_rows`: for
        inputs kept as seeds, the checksum of each row's inputs as generated (`input_checksums`)."""
        lo, hi = self.layout.block_range(b)
        arrays = self.layout.arrays()
        if (inputs_rows is None) == self.layout.regenerates_inputs:
            raise ValueError(f"block {b}: input checksums {'missing' if inputs_rows is None else 'given'} "
                             f"for a store whose inputs are {'' if self.layout.regenerates_inputs else 'not '}regenerated")
        for name, value in data.items():
            if value.shape[0] != hi - lo:
                raise ValueError(f"block {b}: {name} has {value.shape[0]} rows, expected {hi - lo}")
        record = {}
        for name, value in data.items():
            value = np.ascontiguousarray(value, dtype=arrays[name][2])  # checksummed as stored
            self.array(name)[lo:hi] = value
            record[name] = {"crc32c": checksum(value), "file_bytes": self._chunk_path(name, b).stat().st_size}
            if name in UNCOMPRESSED:  # rows read alone (`read_rows`) are checked alone
                record[name]["row_crc32c"] = [checksum(row) for row in value]
        if inputs_rows is not None:
            if len(inputs_rows) != hi - lo:
                raise ValueError(f"block {b}: {len(inputs_rows)} input checksums, expected {hi - lo}")
            record[REGENERATED] = {"row_crc32c": [int(c) for c in inputs_rows]}
        replace_file(self._record_path(b), json.dumps({"block": b, "arrays": record}).encode())
        self._records[b] = record
        self.array("committed")[b] = 1  # last: the block counts only once all of it is on disk

    def mark_complete(self) -> None:
        if not self.committed().all():
            raise StoreError(f"{self.path}: cannot mark complete with uncommitted blocks")
        self.group.attrs["complete"] = True
        self.attrs["complete"] = True

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    # --- integrity ---
    def damage(self, deep: bool = False) -> dict[int, list[str]]:
        """Committed blocks that are not intact, with what is wrong: an unreadable commit flag or
        record, a chunk file missing or of another size than recorded (a stat per file), a block
        missing from a complete store; with deep=True also every block's content, read and
        checked against its checksums (reads the whole store)."""
        done = self.committed()
        out = defaultdict(list)
        for b in self.unreadable_flags:
            out[b].append("commit flag unreadable")
        if self.complete:
            for b in np.flatnonzero(~done):
                out[int(b)] = out[int(b)] or ["not committed, in a store marked complete"]
        for b in np.flatnonzero(done).tolist():
            problems = self._file_problems(b)
            if deep and not problems:
                problems = self._content_problems(b)
            if problems:
                out[b] += problems
        return dict(sorted(out.items()))

    def require_intact(self) -> None:
        """StoreDamaged naming every block `damage()` finds (stat only: cheap before training)."""
        damage = self.damage()
        if damage:
            raise StoreDamaged.of(self.path, damage)

    def uncommit(self, blocks: list[int]) -> None:
        """Forget blocks (the next run regenerates them): the store is no longer complete."""
        if blocks and self.complete:
            self.group.attrs["complete"] = False
            self.attrs["complete"] = False
        for b in blocks:
            self.array("committed")[b] = 0
            self._record_path(b).unlink(missing_ok=True)
            self._records.pop(b, None)

    def _file_problems(self, b: int) -> list[str]:
        try:
            record = self._record(b)
        except StoreDamaged as e:
            return e.damage[b]
        problems = []
        for name in self.layout.data_arrays():
            if name not in record:
                problems.append(f"{name}: not in the commit record (never written)")
                continue
            try:
                size = self._chunk_path(name, b).stat().st_size
            except FileNotFoundError:
                problems.append(f"{name}: chunk file missing")
                continue
            if size != record[name]["file_bytes"]:
                problems.append(f"{name}: chunk file is {size} bytes, its commit record says {record[name]['file_bytes']}")
        return problems

    def _content_problems(self, b: int) -> list[str]:
        problems = []
        for name in self.layout.data_arrays():
            try:
                self.read_block(b, [name])
            except StoreDamaged as e:
                problems += e.damage[b]
        return problems

    def _record(self, b: int) -> dict:
        """Block b's commit record: for each array, its checksum and its chunk file's size. Anything
        else (another block's, a value of the wrong type, a missing or extra entry) is damage."""
        if b not in self._records:
            try:
                record = json.loads(self._record_path(b).read_bytes())
            except FileNotFoundError:
                raise self._damaged(b, "commit record missing (not written yet, or lost)") from None
            except (OSError, ValueError) as e:
                raise self._damaged(b, f"commit record unreadable ({type(e).__name__})") from None
            problem = record_problem(record, b, self.layout)
            if problem:
                raise self._damaged(b, f"commit record malformed: {problem}")
            self._records[b] = record["arrays"]
        return self._records[b]

    def _damaged(self, b: int, reason: str) -> StoreDamaged:
        return StoreDamaged.of(self.path, {b: [reason]})

    # --- reading ---
    def read_block(self, b: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Block b of each array, checked against its commit record (StoreDamaged if it differs)."""
        lo, hi = self.layout.block_range(b)
        record = self._record(b)
        out = {}
        for n in names or self.layout.data_arrays():
            if n not in record:
                raise self._damaged(b, f"{n}: not in the commit record (never written)")
            try:
                out[n] = self._reader(n).read(b, lo, hi)
            except ChunkError as e:
                raise self._damaged(b, f"{n}: {e}") from None
            if checksum(out[n]) != record[n]["crc32c"]:
                raise self._damaged(b, f"{n}: checksum mismatch (the data is not what was written)")
        return out

    def check_regenerated(self, rows: np.ndarray, soft) -> None:
        """StoreError unless the inputs regenerated for global `rows` (float rows, (n, S, V)) are the
        ones the targets were made from: the checksums generation recorded (seed-mode stores)."""
        B = self.layout.block_rows
        for row, inputs in zip(rows.tolist(), soft):
            b, i = divmod(row, B)
            expected = self._record(b).get(REGENERATED, {}).get("row_crc32c")
            if expected is None or i >= len(expected):
                raise self._damaged(b, f"{REGENERATED}: no checksum of row {i}'s inputs in the commit record")
            if input_checksum(inputs) != expected[i]:
                raise StoreError(
                    f"{self.path}: the inputs sampler '{self.attrs.get('sampler', {}).get('name')}' draws now for "
                    f"sample {row} (block {b}) are not those its targets were made from: the sampler's code or "
                    f"its numerics changed since the store was generated. Regenerate the store "
                    f"(`kd generate --overwrite SPEC`) or use the sampler's version that made it")

    def rows_readable(self, name: str) -> bool:
        """Whether `read_rows` can read single rows of array `name` without the rest of their block."""
        return self._reader(name).rows_readable

    def read_rows(self, name: str, b: int, local: np.ndarray, out: np.ndarray) -> None:
        """Rows `local` (sorted, counted from the block's start) of block b of array `name` into
        `out`, each row checked against the commit record. Only where `rows_readable(name)`."""
        record = self._record(b).get(name, {})
        try:
            self._reader(name).read_rows(b, local, out)
        except ChunkError as e:
            raise self._damaged(b, f"{name}: {e}") from None
        expected = record.get("row_crc32c")
        for row, i in zip(out, local.tolist()):
            if expected is None or i >= len(expected) or checksum(row) != expected[i]:
                raise self._damaged(b, f"{name}: checksum mismatch in row {i} (the data is not what was written)")

    def prefetch(self, b: int, names: list[str]) -> None:
        """Ask the OS to start reading block b's chunk files ahead of `read_block` (a hint)."""
        for n in names:
            self._reader(n).prefetch(b)

    def _reader(self, name: str) -> ArrayReader:
        if name not in self._readers:
            self._readers[name] = ArrayReader(self.path / name, self.layout.block_rows, lambda: self.array(name))
        return self._readers[name]

    # --- files ---
    def _chunk_path(self, name: str, b: int) -> Path:
        ndim = len(self.layout.arrays()[name][0])
        return self.path.joinpath(name, "c", str(b), *["0"] * (ndim - 1))  # zarr's default chunk keys

    def _record_path(self, b: int) -> Path:
        return self.path / RECORDS / f"{b}.json"

    def leftovers(self) -> list[Path]:
        """Temporary files of writes a kill cut short (zarr's `*.partial`, ours `*.tmp`)."""
        return [p for p in self.path.rglob("*") if p.is_file() and (p.suffix in (".partial", ".tmp"))]

    def remove_leftovers(self) -> int:
        """Delete `leftovers()` (only while no writer runs: the caller holds the store's lock)."""
        found = self.leftovers()
        for p in found:
            p.unlink(missing_ok=True)
        return len(found)

    def bytes_on_disk(self) -> int:
        left = set(self.leftovers())
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file() and p not in left)


def creating_path(path: Path) -> Path:
    """Where a store is built before it is renamed into place (`.<name>.creating<pid>` beside it)."""
    return path.with_name(f".{path.name}.creating{os.getpid()}")


def replace_file(path: Path, data: bytes) -> None:
    """Write a file whole or not at all: a temporary file beside it, then a rename."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _create_arrays(group, layout: Layout, attrs: dict) -> None:
    for name, (shape, chunks, dtype) in layout.arrays().items():
        codec = {"compressors": None} if name in UNCOMPRESSED else {}
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **codec)
    group.create_group(RECORDS).attrs.update({
        "llamakd_format": FORMAT_VERSION, "identity_hash": attrs.get("identity_hash"),
        "teacher_fingerprint": attrs.get("teacher", {}).get("fingerprint")})


def _group_attrs(layout: Layout, attrs: dict) -> dict:
    return {**attrs, "layout": layout.__dict__, "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "format_version": FORMAT_VERSION}


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


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested dicts, as 'a.b: old -> new'."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        loc = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_changed_keys(a, b, loc))
        elif a != b:
            out.append(f"{loc}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def record_problem(record, b: int, layout: Layout) -> str | None:
    """What is wrong with block b's commit record as read from its file, or None: it must hold
    exactly the entries generation writes, each of its own type (checksums are 32-bit integers)."""
    if not isinstance(record, dict) or set(record) != {"block", "arrays"} or not isinstance(record["arrays"], dict):
        return "not a record of the form {block, arrays}"
    if record["block"] != b or type(record["block"]) is not int:
        return f"it is block {record['block']!r}'s"
    arrays, rows = record["arrays"], int(np.subtract(*reversed(layout.block_range(b))))
    expected = set(layout.data_arrays()) | ({REGENERATED} if layout.regenerates_inputs else set())
    if set(arrays) != expected:
        return f"entries {sorted(arrays)}, expected {sorted(expected)}"
    for name, entry in arrays.items():
        keys = ({"row_crc32c"} if name == REGENERATED else {"crc32c", "file_bytes"}) | (
            {"row_crc32c"} if name in UNCOMPRESSED else set())
        if not isinstance(entry, dict) or set(entry) != keys:
            return f"{name}: entries {sorted(entry) if isinstance(entry, dict) else type(entry).__name__}, expected {sorted(keys)}"
        for key in ("crc32c", "file_bytes"):
            if key in entry and not _uint(entry[key], 32 if key == "crc32c" else 63):
                return f"{name}.{key}: {entry[key]!r} is not a {'32-bit checksum' if key == 'crc32c' else 'file size'}"
        rows_crc = entry.get("row_crc32c", [])
        if "row_crc32c" in entry and (not isinstance(rows_crc, list) or len(rows_crc) != rows
                                      or not all(_uint(c, 32) for c in rows_crc)):
            return f"{name}.row_crc32c: not {rows} 32-bit checksums"
    return None


def _uint(value, bits: int) -> bool:
    return type(value) is int and 0 <= value < 2**bits
