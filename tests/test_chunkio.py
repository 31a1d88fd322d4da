"""Reading a store's chunk files (kdcore.store.chunkio): the direct reader against zarr's, page cache and
direct I/O, single rows, files that look wrong, and plain zarr reads by the KD_STORE_READS setting."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from kdcore.store.chunkio import ChunkError, ChunkFiles, in_page_cache
from kdcore.store.chunkio import drop_from_page_cache as evict
from kdcore.problems import KDError
from kdcore.store.layout import Layout
from kdcore.store.lifecycle import create_store
from kdcore.store.store import Store
from conftest import small_layout as layout, write_committed as write


def full_block(lay: Layout, b: int) -> dict[str, np.ndarray]:
    """Block b of every array in `lay` (random values of each array's dtype)."""
    lo, hi = lay.block_range(b)
    rng = np.random.default_rng(b)
    out = {}
    for name, (shape, _, dtype) in lay.arrays().items():
        if name != "committed":
            size = (hi - lo, *shape[1:])
            out[name] = (rng.normal(size=size) if np.dtype(dtype).kind == "f" else rng.integers(0, 60, size)).astype(dtype)
    return out


def written(path: Path, lay: Layout, skip: tuple = ()) -> Store:
    store = create_store(path, lay, {"name": path.name})
    for b in range(lay.num_blocks):
        if b not in skip:
            write(store, b, full_block(lay, b))
    return Store.open(path)


def zarr_block(store: Store, b: int) -> dict[str, np.ndarray]:
    lo, hi = store.layout.block_range(b)
    return {n: np.asarray(store.array(n)[lo:hi]) for n in store.layout.arrays() if n != "committed"}


@pytest.mark.parametrize("kw", [dict(inputs="dense"), dict(produces="ids", logits="topk", positions="all"),
                                dict(logits="topk", vocab_size=70000)], ids=["dense", "ids-topk-all", "topk-int32"])
def test_blocks_read_from_chunk_files_equal_zarr_reads(tmp_path, kw):
    """read_block reads the chunk files itself (the Zarr v3 spec's keys and codecs), ~3x faster than
    zarr per block; it must return exactly what zarr returns, short last block included."""
    lay = layout(num_samples=25, **kw)
    store = written(tmp_path / "s", lay)
    for name in set(lay.arrays()) - {"committed"}:  # flags have a chunk per block, read by zarr
        assert ChunkFiles.of(store.path / name, lay.block_rows) is not None, name  # the direct path is taken
    for b in range(lay.num_blocks):
        direct, expected = store.read_block(b), zarr_block(store, b)
        assert direct.keys() == expected.keys()
        for name, value in expected.items():
            assert direct[name].dtype == value.dtype and direct[name].shape == value.shape, name
            assert np.array_equal(direct[name], value), name
            assert direct[name].flags.writeable
        store.prefetch(b, list(expected))  # a hint: nothing to check but that it is harmless


def test_plain_zarr_reads_by_setting_give_the_same_blocks_and_the_same_checks(tmp_path, monkeypatch):
    """KD_STORE_READS=zarr reads every block through zarr: the same arrays, checked against the
    same commit records (a damaged chunk is named, not decoded into a wrong batch)."""
    lay = layout(num_samples=25, inputs="dense")
    direct = written(tmp_path / "s", lay)
    assert direct.rows_readable("logits")
    monkeypatch.setenv("KD_STORE_READS", "zarr")
    plain = Store.open(tmp_path / "s")
    assert not plain.rows_readable("logits")
    for b in range(lay.num_blocks):
        got, want = plain.read_block(b), direct.read_block(b)
        assert all(np.array_equal(got[n], want[n]) and got[n].dtype == want[n].dtype for n in want)
    chunk = tmp_path / "s" / "logits" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    for store in (plain, Store.open(tmp_path / "s")):
        with pytest.raises(KDError, match="block 1: logits: checksum mismatch"):
            store.read_block(1)


def cached(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return in_page_cache(fd, path.stat().st_size)
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="direct I/O and mincore as on Linux")
def test_raw_chunks_read_from_the_page_cache_or_by_direct_io(tmp_path):
    """A raw chunk in the page cache is copied from it; one that is not is read by direct I/O, which
    leaves the page cache as it was (the OS's way would have filled it, at ~5x the CPU). Both read
    what zarr reads; where the file system refuses direct I/O, the ordinary read does."""
    import errno

    lay = layout(num_samples=25, inputs="dense")
    store = written(tmp_path / "s", lay)
    chunk = tmp_path / "s" / "logits" / "c" / "1" / "0"
    assert store._reader("logits").files.direct and not store._reader("length").files.direct
    expected = zarr_block(store, 1)
    chunk.read_bytes()
    assert cached(chunk)
    assert np.array_equal(store.read_block(1, ["logits"])["logits"], expected["logits"])
    evict(tmp_path / "s")
    assert not cached(chunk)
    for _ in range(2):
        got = store.read_block(1, ["logits", "inputs"])
        assert all(np.array_equal(got[n], expected[n]) for n in got)
        assert not cached(chunk)  # direct I/O: the page cache was not filled
    store.prefetch(1, ["logits", "length"])  # raw chunks read directly are not hinted either
    assert not cached(chunk)

    real_open = os.open

    def no_direct_io(path, flags, *args, **kw):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args, **kw)

    for fresh in (True, False):  # refused when the store is opened, or at the first read
        evict(tmp_path / "s")
        other = Store.open(tmp_path / "s") if not fresh else None
        if other is not None:
            assert other._reader("logits").files.direct
        os.open = no_direct_io
        try:
            other = other or Store.open(tmp_path / "s")
            got = other.read_block(2, ["logits"])
            assert not other._reader("logits").files.direct
        finally:
            os.open = real_open
        assert np.array_equal(got["logits"], zarr_block(other, 2)["logits"])


def test_rows_read_from_raw_chunk_files_equal_zarr_rows(tmp_path):
    """read_rows copies single rows (runs of adjacent rows in one read) straight into a batch: the
    rows zarr holds, from full and short blocks, each checked against its own checksum. Compressed
    arrays have no single rows to read; a block not written yet, a chunk file of the wrong size or
    a changed row is an error naming the block."""
    lay = layout(num_samples=25, inputs="dense")
    store = written(tmp_path / "s", lay, skip=(1,))
    for b, local in ((0, [0, 1, 2, 7, 9]), (2, [1, 3, 4])):
        expected = zarr_block(store, b)
        for name in ("logits", "inputs"):
            out = np.full((len(local), *expected[name].shape[1:]), 7, np.float16)
            store.read_rows(name, b, np.array(local), out)
            assert np.array_equal(out, expected[name][local]), (name, b)
    assert not store.rows_readable("length") and store.rows_readable("logits")  # compressed
    row = np.zeros((1, lay.vocab_size), np.float16)
    with pytest.raises(KDError, match="block 1: commit record missing"):
        store.read_rows("logits", 1, np.array([0]), row)
    chunk = tmp_path / "s" / "logits" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[3 * lay.vocab_size * 2 + 5] ^= 0x10  # a bit of row 3
    chunk.write_bytes(bytes(data))
    store.read_rows("logits", 0, np.array([2, 4]), np.zeros((2, lay.vocab_size), np.float16))  # others intact
    with pytest.raises(KDError, match="block 0: logits: checksum mismatch in row 3"):
        store.read_rows("logits", 0, np.array([2, 3]), np.zeros((2, lay.vocab_size), np.float16))
    chunk.write_bytes(bytes(data[:-2]))
    with pytest.raises(KDError, match="block 0: logits: chunk file is"):
        store.read_rows("logits", 0, np.array([0]), row)


def test_every_chunk_has_a_file_and_files_that_look_wrong_are_refused(tmp_path):
    """A block of fill values is written too (zarr skips such chunks by default, and a missing file
    would then read as zeros); a chunk file of the wrong size or one that does not decode is a
    ChunkError; metadata the direct reader does not know sends reads through zarr."""
    lay = layout(num_samples=20)
    store = create_store(tmp_path / "s", lay, {"name": "s"})
    zero = {**full_block(lay, 0), "logits": np.zeros((10, lay.vocab_size), np.float16)}
    write(store, 0, zero)
    write(store, 1, full_block(lay, 1))
    assert (tmp_path / "s" / "logits" / "c" / "0" / "0").stat().st_size == 10 * lay.vocab_size * 2
    got = Store.open(tmp_path / "s").read_block(0)
    assert np.array_equal(got["logits"], zero["logits"]) and got["logits"].dtype == np.float16
    chunk = tmp_path / "s" / "logits" / "c" / "1" / "0"
    reader = ChunkFiles.of(tmp_path / "s" / "logits", lay.block_rows)
    chunk.write_bytes(chunk.read_bytes()[:-2])
    with pytest.raises(ChunkError, match="bytes, expected"):
        reader.read(1, 10)
    chunk.write_bytes(chunk.read_bytes() + b"\0\0\0\0")
    with pytest.raises(ChunkError, match="bytes, expected"):
        reader.read(1, 10)
    chunk.unlink()
    with pytest.raises(ChunkError, match="missing"):
        reader.read(1, 10)
    packed = tmp_path / "s" / "length" / "c" / "1"
    packed.write_bytes(packed.read_bytes()[:-3])
    with pytest.raises(ChunkError, match="does not decode"):
        ChunkFiles.of(tmp_path / "s" / "length", lay.block_rows).read(1, 10)
    good = json.loads((tmp_path / "s" / "logits" / "zarr.json").read_text())
    for change in ({}, {"chunk_shape": [5, 32]}, {"codecs": [{"name": "bytes", "configuration": {"endian": "big"}}]},
                   {"codecs": [{"name": "bytes"}, {"name": "crc32c"}]}):
        meta = json.loads(json.dumps(good))
        if "chunk_shape" in change:
            meta["chunk_grid"]["configuration"]["chunk_shape"] = change["chunk_shape"]
        else:
            meta.update(change)
        (tmp_path / "other").mkdir(exist_ok=True)
        (tmp_path / "other" / "zarr.json").write_text(json.dumps(meta))
        assert (ChunkFiles.of(tmp_path / "other", 10) is None) == bool(change), change
