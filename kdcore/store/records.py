"""Commit records: what a block's commit writes (`commits/<b>.json`), and the strict check of one read back.

A record holds, for each array, the CRC-32C of the block's values as stored (C order, the array's
dtype) and the chunk file's size; for the raw arrays (`logits`, `inputs`) a checksum per row too,
since the training loader reads rows alone. For inputs kept as seeds (float rows that training
regenerates with the sampler), it holds a checksum of each row's inputs as generated: training
checks the rows it regenerates against them. A record that is not exactly this (another block's, a
checksum that is a float, a string or past 32 bits, an entry missing or extra) is damage, found by
`kd inspect`, `--repair` and training alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdcore.store.layout import UNCOMPRESSED, Layout
from kdcore.system.files import replace_file

RECORDS = "commits"  # a zarr group; holds `<block>.json`, the commit record of each block
REGENERATED = "inputs (regenerated)"  # the record's entry for inputs kept as seeds: not an array


def checksum(values: np.ndarray) -> int:
    """CRC-32C of an array's bytes in C order (hardware-accelerated; its cost: DESIGN.md, "Store")."""
    import google_crc32c  # installed with zarr, whose crc32c codec uses it

    return google_crc32c.value(np.ascontiguousarray(values).reshape(-1).view(np.uint8))


def input_checksum(soft_row) -> int:
    """The checksum of one sample's float rows (a torch tensor, (S, V)) as the sampler made them."""
    return checksum(soft_row.detach().cpu().contiguous().numpy())


def record_path(store: Path, b: int) -> Path:
    return Path(store) / RECORDS / f"{b}.json"


def entry(values: np.ndarray, name: str, file_bytes: int) -> dict:
    """An array's entry in a block's record: its checksum and chunk file size (and its rows')."""
    out = {"crc32c": checksum(values), "file_bytes": file_bytes}
    if name in UNCOMPRESSED:  # rows read alone (`read_rows`) are checked alone
        out["row_crc32c"] = [checksum(row) for row in values]
    return out


def write_record(store: Path, b: int, arrays: dict) -> None:
    replace_file(record_path(store, b), json.dumps({"block": b, "arrays": arrays}).encode())


def load_record(store: Path, b: int, layout: Layout) -> tuple[dict | None, str | None]:
    """(block b's record's arrays, None), or (None, what is wrong with it)."""
    try:
        record = json.loads(record_path(store, b).read_bytes())
    except FileNotFoundError:
        return None, "commit record missing (not written yet, or lost)"
    except (OSError, ValueError) as e:
        return None, f"commit record unreadable ({type(e).__name__})"
    problem = record_problem(record, b, layout)
    return (None, f"commit record malformed: {problem}") if problem else (record["arrays"], None)


def record_problem(record, b: int, layout: Layout) -> str | None:
    """What is wrong with block b's commit record as read from its file, or None: it must hold
    exactly the entries generation writes, each of its own type."""
    if not isinstance(record, dict) or set(record) != {"block", "arrays"} or not isinstance(record["arrays"], dict):
        return "not a record of the form {block, arrays}"
    if record["block"] != b or type(record["block"]) is not int:
        return f"it is block {record['block']!r}'s"
    arrays = record["arrays"]
    expected = set(layout.data_arrays()) | ({REGENERATED} if layout.regenerates_inputs else set())
    if set(arrays) != expected:
        return f"entries {sorted(arrays)}, expected {sorted(expected)}"
    rows = int(np.subtract(*reversed(layout.block_range(b))))
    for name, value in arrays.items():
        problem = _entry_problem(name, value, rows)
        if problem:
            return f"{name}: {problem}"
    return None


def _entry_problem(name: str, value, rows: int) -> str | None:
    keys = ({"row_crc32c"} if name == REGENERATED else {"crc32c", "file_bytes"}) | (
        {"row_crc32c"} if name in UNCOMPRESSED else set())
    if not isinstance(value, dict) or set(value) != keys:
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        return f"entries {got}, expected {sorted(keys)}"
    if "crc32c" in value and not _uint(value["crc32c"], 32):
        return f"crc32c {value['crc32c']!r} is not a 32-bit checksum"
    if "file_bytes" in value and not _uint(value["file_bytes"], 63):
        return f"file_bytes {value['file_bytes']!r} is not a file size"
    row_sums = value.get("row_crc32c", [])
    if not isinstance(row_sums, list) or ("row_crc32c" in value and len(row_sums) != rows) \
            or not all(_uint(c, 32) for c in row_sums):
        return f"row_crc32c is not {rows} 32-bit checksums"
    return None


def _uint(value, bits: int) -> bool:
    return type(value) is int and 0 <= value < 2**bits
