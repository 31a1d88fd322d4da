"""The generated dataset on disk: one Zarr v3 group per dataset (see DESIGN.md, "Store").

Arrays are created at their final size. Rows are written a block (= one chunk of every array) at a
time, and `committed[b]` is set only after all of block b is written, so a killed run leaves at worst
uncommitted blocks, which the next run redoes. Nothing here appends or resizes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdcore.errors import StoreError

FORMAT_VERSION = 1


# Dense float16 arrays (vocab-sized logits, noise inputs) are stored raw: zstd saved 8-15% of their
# bytes but made reading a block 4x slower (10.7 vs 2.5 ms for 100 x 32000), a cost the trainer pays
# every epoch. Everything else (ids, seeds, lengths, top-k) is zstd-compressed, zarr's default.
UNCOMPRESSED = {"logits", "inputs"}


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

    def bytes_per_sample(self) -> int:
        return sum(
            int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
            for name, (shape, _, dtype) in self.arrays().items()
            if name != "committed"
        )

    def original_bytes_per_sample(self) -> int:
        """The 2023 layout: float16 inputs (S, V) + float32 last-position logits (V) per sample."""
        return self.max_seq_len * self.vocab_size * 2 + self.vocab_size * 4


def _zarr():
    import zarr

    return zarr


class Store:
    def __init__(self, path: Path, group):
        self.path = Path(path)
        self.group = group
        self.attrs = dict(group.attrs)
        self.layout = Layout(**self.attrs["layout"])
        self._arrays = {}
        self.unreadable_flags: list[int] = []  # blocks whose commit flag could not be read

    # --- opening ---
    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "Store":
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not a LlamaKD store (no zarr.json); generate it with `kd generate SPEC`")
        try:
            group = _zarr().open_group(str(path), mode=mode)
            attrs = dict(group.attrs)
        except Exception as e:  # corrupt metadata
            raise StoreError(f"{path}: cannot read the store metadata ({type(e).__name__}: {e})") from None
        if attrs.get("format_version") != FORMAT_VERSION or "layout" not in attrs:
            raise StoreError(
                f"{path}: not a LlamaKD store of format {FORMAT_VERSION} (attrs: format_version="
                f"{attrs.get('format_version')!r}); regenerate it or name a new dataset"
            )
        try:
            store = cls(path, group)
        except Exception as e:  # a layout that does not fit this version
            raise StoreError(f"{path}: cannot read the store layout ({type(e).__name__}: {e})") from None
        missing, broken = [], []
        for name in store.layout.arrays():
            if not (path / name / "zarr.json").exists():
                missing.append(name)
                continue
            try:
                store.array(name)
            except Exception as e:  # unreadable array metadata
                broken.append(f"{name} ({type(e).__name__}: {e})")
        if missing or broken:
            problems = ([f"arrays missing: {', '.join(missing)}"] if missing else []) + (
                [f"array metadata unreadable: {'; '.join(broken)}"] if broken else [])
            raise StoreError(f"{path}: corrupt store: {'; '.join(problems)}; regenerate it with --overwrite")
        return store

    @classmethod
    def create(cls, path: str | Path, layout: Layout, attrs: dict) -> "Store":
        import os
        import shutil

        zarr = _zarr()
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        # built under a temporary name and renamed: a run killed here leaves no half-made store behind
        final, path = path, path.with_name(f".{path.name}.creating{os.getpid()}")
        shutil.rmtree(path, ignore_errors=True)
        group = zarr.open_group(str(path), mode="w-")
        for name, (shape, chunks, dtype) in layout.arrays().items():
            codec = {"compressors": None} if name in UNCOMPRESSED else {}
            group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **codec)
        # metadata last: a store without it is recognisably unfinished
        group.attrs.update(
            {
                **attrs,
                "layout": layout.__dict__,
                "complete": False,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "format_version": FORMAT_VERSION,
            }
        )
        os.replace(path, final)
        return cls.open(final, mode="r+")

    def array(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    # --- progress ---
    def committed(self) -> np.ndarray:
        """One flag per block. A flag that cannot be read (a write cut short) counts as not committed."""
        flags = self.array("committed")
        try:
            return np.asarray(flags[:], dtype=bool)
        except Exception:
            out = np.zeros(self.layout.num_blocks, dtype=bool)
            self.unreadable_flags = []
            for b in range(self.layout.num_blocks):
                try:
                    out[b] = bool(flags[b])
                except Exception:
                    self.unreadable_flags.append(b)
            return out

    def pending_blocks(self, rank: int = 0, world: int = 1) -> list[int]:
        done = self.committed()
        return [b for b in range(self.layout.num_blocks) if b % world == rank and not done[b]]

    def write_block(self, b: int, data: dict[str, np.ndarray]) -> None:
        lo, hi = self.layout.block_range(b)
        for name, value in data.items():
            if value.shape[0] != hi - lo:
                raise ValueError(f"block {b}: {name} has {value.shape[0]} rows, expected {hi - lo}")
            self.array(name)[lo:hi] = value
        self.array("committed")[b] = 1  # last: the block counts only once all of it is on disk

    def mark_complete(self) -> None:
        if not self.committed().all():
            raise StoreError(f"{self.path}: cannot mark complete with uncommitted blocks")
        self.group.attrs["complete"] = True
        self.attrs["complete"] = True

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    # --- reading ---
    def read_block(self, b: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        lo, hi = self.layout.block_range(b)
        names = names or [n for n in self.layout.arrays() if n != "committed"]
        return {n: np.asarray(self.array(n)[lo:hi]) for n in names}

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def describe_difference(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested dicts, as 'a.b: old -> new'."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        loc = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(describe_difference(a, b, loc))
        elif a != b:
            out.append(f"{loc}: {json.dumps(a)} -> {json.dumps(b)}")
    return out
