"""A store's layout: every array's shape, chunking and dtype, fixed by the dataset's spec when the
store is created (nothing is ever appended or resized), and what a sample costs on disk."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Dense float16 arrays (vocab-sized logits, noise inputs) are stored raw: read every epoch, and zstd
# slows their reads far more than it saves (figures in DESIGN.md). The rest keeps zarr's zstd.
UNCOMPRESSED = {"logits", "inputs"}

# What zstd leaves of a block of each compressed array (file size / raw size), measured on SmolLM2's
# stores (top-64 targets at every position, teacher-generated, Zipf ids and real-text windows): at
# about what it left there (from 0.53 to 0.62 of top-k values, 0.77 to 0.87 of their ids).
COMPRESSION = {"topk_values": 0.6, "topk_indices": 0.85, "logsumexp": 0.9, "ids": 0.6, "length": 0.1, "seed": 1.0}


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

    @classmethod
    def of(cls, dataset, vocab_size: int, produces: str) -> "Layout":
        """The layout of a dataset's store (`DatasetSpec`), given the teacher's vocabulary and what
        the sampler produces."""
        return cls(num_samples=dataset.samples, max_seq_len=dataset.max_seq_len, vocab_size=vocab_size,
                   positions=dataset.positions, logits=dataset.logits, topk=dataset.topk, inputs=dataset.inputs,
                   produces=produces, block_rows=min(dataset.block_size, dataset.samples))  # no block past the data

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

    def disk_bytes(self, blocks: int | None = None, fs_block: int = 4096, new: bool = True) -> int:
        """What `blocks` blocks (default: all) take on a disk of `fs_block`-byte blocks, files and
        folders as a file system counts them: each chunk file rounded up to whole blocks, zarr's
        folder per block of a multi-dimensional array (`c/<b>/0/...`), a commit flag and a commit
        record per block, and (`new`: for a store not made yet) each array's metadata. A compressed
        array's chunk counts whole where it is small (the rounding dominates), else its `COMPRESSION`."""
        blocks = self.num_blocks if blocks is None else blocks
        up = lambda n: -(-n // fs_block) * fs_block  # noqa: E731
        per_block, fixed = 0, 3 * fs_block  # the group's folder, its zarr.json, the commit records' folder
        for name, (shape, chunks, dtype) in self.arrays().items():
            chunk = int(np.prod(chunks, dtype=np.int64)) * np.dtype(dtype).itemsize
            if chunk > fs_block:
                chunk = int(chunk * COMPRESSION.get(name, 1.0))
            per_block += up(chunk) + (len(shape) - 1) * fs_block  # the file, and its folders under c/
            fixed += 3 * fs_block  # the array's folder, its zarr.json, its c/ folder
        raw_rows = sum(name in UNCOMPRESSED for name in self.arrays()) + self.regenerates_inputs
        per_block += up(64 * len(self.arrays()) + 12 * raw_rows * self.block_rows)  # the commit record
        return (fixed if new else 0) + blocks * per_block

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
