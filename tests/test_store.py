"""The store on its own (kdcore.store) and `kd inspect`: complete, half-written, collapsed, corrupt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdcore.errors import StoreError
from kdcore.inspect import inspect_store
from kdcore.store import Layout, Store
from kdcore.store import drop_from_page_cache as evict


def layout(**kw) -> Layout:
    base = dict(num_samples=50, max_seq_len=8, vocab_size=32, positions="last", logits="dense", topk=4,
                inputs="seed", produces="soft", block_rows=10)
    return Layout(**{**base, **kw})


def block(lay: Layout, b: int, collapse: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    lo, hi = lay.block_range(b)
    n = hi - lo
    rng = np.random.default_rng(seed + b)
    logits = rng.normal(size=(n, lay.vocab_size)).astype(np.float16)
    if collapse:  # token 7 the clear argmax of 90% of the rows
        logits[: int(n * 0.9), 7] = 20
    return {"seed": np.arange(lo, hi, dtype=np.int64), "length": rng.integers(1, lay.max_seq_len + 1, n).astype(np.int32),
            "logits": logits}


def make_store(path: Path, blocks: int | None = None, collapse: bool = False, **kw) -> Store:
    lay = layout(**kw)
    store = Store.create(path, lay, {"name": path.name, "experiment": "t", "spec": {"sampler": {"name": "x"}},
                                      "teacher": {"name": "tiny-llama", "fingerprint": "abc"}})
    for b in range(lay.num_blocks if blocks is None else blocks):
        store.write_block(b, block(lay, b, collapse))
    if blocks is None:
        store.mark_complete()
    return store


def kd_inspect(path: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcore", "inspect", str(path), *extra], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"})


# --- the store --------------------------------------------------------------------------------------


def test_store_round_trip_and_commit_flags(tmp_path):
    lay = layout()
    store = make_store(tmp_path / "s", blocks=2)
    assert store.committed().tolist() == [True, True, False, False, False]
    assert store.pending_blocks() == [2, 3, 4]
    assert store.pending_blocks(rank=1, world=2) == [3]
    assert not store.complete
    with pytest.raises(StoreError, match="uncommitted"):
        store.mark_complete()
    again = Store.open(tmp_path / "s")
    got = again.read_block(1)
    want = block(lay, 1)
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    with pytest.raises(ValueError, match="rows"):
        store.write_block(2, {"length": np.ones(3, dtype=np.int32)})
    assert store.committed()[2] == 0  # a rejected write commits nothing


def test_dense_float16_arrays_are_stored_raw_the_rest_compressed(tmp_path):
    """Logits and noise inputs (float16, nearly incompressible) skip zstd, which made block reads 4x
    slower; ids, seeds, lengths and top-k keep it."""
    store = make_store(tmp_path / "s", blocks=1, inputs="dense")
    codecs = {name: [type(c).__name__ for c in store.array(name).metadata.codecs]
              for name in store.layout.arrays()}
    assert codecs["logits"] == ["BytesCodec"] and codecs["inputs"] == ["BytesCodec"]
    assert all("ZstdCodec" in codecs[n] for n in ("seed", "length")), codecs
    topk = make_store(tmp_path / "k", blocks=0, logits="topk", produces="ids")
    assert all("ZstdCodec" in [type(c).__name__ for c in topk.array(n).metadata.codecs]
               for n in ("ids", "topk_values", "topk_indices", "logsumexp"))


def test_short_last_block_and_topk_dtypes(tmp_path):
    lay = layout(num_samples=25, logits="topk", positions="all", vocab_size=70000)
    assert lay.num_blocks == 3 and lay.block_range(2) == (20, 25)
    arrays = lay.arrays()
    assert arrays["topk_indices"][2] == "int32" and arrays["topk_values"][0] == (25, 8, 4)
    assert layout(vocab_size=65536, logits="topk").arrays()["topk_indices"][2] == "uint16"
    assert lay.bytes_per_sample() < lay.original_bytes_per_sample() / 100


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


def zarr_block(store: Store, b: int) -> dict[str, np.ndarray]:
    lo, hi = store.layout.block_range(b)
    return {n: np.asarray(store.array(n)[lo:hi]) for n in store.layout.arrays() if n != "committed"}


@pytest.mark.parametrize("kw", [dict(inputs="dense"), dict(produces="ids", logits="topk", positions="all"),
                                dict(logits="topk", vocab_size=70000)], ids=["dense", "ids-topk-all", "topk-int32"])
def test_blocks_read_from_chunk_files_equal_zarr_reads(tmp_path, kw):
    """read_block reads the chunk files itself (the Zarr v3 spec's keys and codecs), ~3x faster than
    zarr per block; it must return exactly what zarr returns, short last block included."""
    from kdcore.store import _ChunkFiles

    lay = layout(num_samples=25, **kw)
    store = Store.create(tmp_path / "s", lay, {"name": "s"})
    for b in range(lay.num_blocks):
        store.write_block(b, full_block(lay, b))
    store = Store.open(tmp_path / "s")
    for name in set(lay.arrays()) - {"committed"}:  # flags have a chunk per block, read by zarr
        assert _ChunkFiles.of(store.path / name, lay.block_rows) is not None, name  # the direct path is taken
    for b in range(lay.num_blocks):
        direct, expected = store.read_block(b), zarr_block(store, b)
        assert direct.keys() == expected.keys()
        for name, value in expected.items():
            assert direct[name].dtype == value.dtype and direct[name].shape == value.shape, name
            assert np.array_equal(direct[name], value), name
            assert direct[name].flags.writeable
        store.prefetch(b, list(expected))  # a hint: nothing to check but that it is harmless


def cached(path: Path) -> bool:
    from kdcore.store import _in_page_cache

    fd = os.open(path, os.O_RDONLY)
    try:
        return _in_page_cache(fd, path.stat().st_size)
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="direct I/O and mincore as on Linux")
def test_raw_chunks_read_from_the_page_cache_or_by_direct_io(tmp_path):
    """A raw chunk in the page cache is copied from it; one that is not is read by direct I/O, which
    leaves the page cache as it was (the OS's way would have filled it, at ~5x the CPU). Both read
    what zarr reads; where the file system refuses direct I/O, the ordinary read does."""
    import errno

    lay = layout(num_samples=25, inputs="dense")
    store = Store.create(tmp_path / "s", lay, {"name": "s"})
    for b in range(lay.num_blocks):
        store.write_block(b, full_block(lay, b))
    store = Store.open(tmp_path / "s")
    chunk = tmp_path / "s" / "logits" / "c" / "1" / "0"
    assert store._chunk_files("logits").direct and not store._chunk_files("length").direct
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
            assert other._chunk_files("logits").direct
        os.open = no_direct_io
        try:
            other = other or Store.open(tmp_path / "s")
            got = other.read_block(2, ["logits"])
            assert not other._chunk_files("logits").direct
        finally:
            os.open = real_open
        assert np.array_equal(got["logits"], zarr_block(other, 2)["logits"])


def test_rows_read_from_raw_chunk_files_equal_zarr_rows(tmp_path):
    """read_rows copies single rows (runs of adjacent rows in one read) straight into a batch:
    the rows zarr holds, from full and short blocks; a never-written chunk gives fill values; a
    chunk file of the wrong size or a compressed array is refused (False), for the block path."""
    lay = layout(num_samples=25, inputs="dense")
    store = Store.create(tmp_path / "s", lay, {"name": "s"})
    for b in range(lay.num_blocks):
        if b != 1:
            store.write_block(b, full_block(lay, b))
    store = Store.open(tmp_path / "s")
    for b, local in ((0, [0, 1, 2, 7, 9]), (2, [1, 3, 4]), (1, [0, 5])):
        expected = zarr_block(store, b)
        for name in ("logits", "inputs"):
            out = np.full((len(local), *expected[name].shape[1:]), 7, np.float16)
            assert store.read_rows(name, b, np.array(local), out), name
            assert np.array_equal(out, expected[name][local]), (name, b)
    assert not store.read_rows("length", 0, np.array([0]), np.zeros(1, np.int32))  # compressed
    chunk = tmp_path / "s" / "logits" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-2])
    assert not store.read_rows("logits", 0, np.array([0]), np.zeros((1, lay.vocab_size), np.float16))


def test_chunk_files_zarr_never_wrote_and_files_that_look_wrong(tmp_path):
    """A chunk of fill values has no file (zarr skips it) and reads as the fill value; a chunk file
    of the wrong size, or an array whose codecs the direct reader does not know, goes through zarr."""
    import zarr

    from kdcore.store import _ChunkFiles

    lay = layout(num_samples=20)
    store = Store.create(tmp_path / "s", lay, {"name": "s"})
    zero = {**block(lay, 0), "logits": np.zeros((10, lay.vocab_size), np.float16)}
    store.write_block(0, zero)
    store.write_block(1, block(lay, 1))
    assert not (tmp_path / "s" / "logits" / "c" / "0" / "0").exists()
    got = Store.open(tmp_path / "s").read_block(0)
    assert np.array_equal(got["logits"], zero["logits"]) and got["logits"].dtype == np.float16
    assert np.array_equal(got["length"], zero["length"])
    chunk = tmp_path / "s" / "logits" / "c" / "1" / "0"
    reader = _ChunkFiles.of(tmp_path / "s" / "logits", lay.block_rows)
    chunk.write_bytes(chunk.read_bytes()[:-2])
    assert reader.read(1, 10) is None  # not vouched for: the caller asks zarr, which raises
    with pytest.raises(Exception):
        Store.open(tmp_path / "s").read_block(1, ["logits"])
    chunk.write_bytes(chunk.read_bytes() + b"\0\0\0\0")
    assert reader.read(1, 10) is None
    good = json.loads((tmp_path / "s" / "logits" / "zarr.json").read_text())
    for change in ({}, {"chunk_shape": [5, 32]}, {"codecs": [{"name": "bytes", "configuration": {"endian": "big"}}]},
                   {"codecs": [{"name": "bytes"}, {"name": "crc32c"}]}, {"fill_value": "NaN"}):
        meta = json.loads(json.dumps(good))
        if "chunk_shape" in change:
            meta["chunk_grid"]["configuration"]["chunk_shape"] = change["chunk_shape"]
        else:
            meta.update(change)
        (tmp_path / "other").mkdir(exist_ok=True)
        (tmp_path / "other" / "zarr.json").write_text(json.dumps(meta))
        assert (_ChunkFiles.of(tmp_path / "other", 10) is None) == bool(change), change


def test_open_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a LlamaKD store"):
        Store.open(tmp_path / "missing")
    import zarr

    zarr.open_group(str(tmp_path / "other"), mode="w").attrs["hello"] = 1
    with pytest.raises(StoreError, match="format"):
        Store.open(tmp_path / "other")


# --- kd inspect ---------------------------------------------------------------------------------------


def test_inspect_complete_store_json(tmp_path):
    make_store(tmp_path / "s")
    r = kd_inspect(tmp_path / "s", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["complete"] is True and rep["blocks"] == {"committed": 5, "total": 5}
    assert rep["samples_written"] == 50
    assert set(rep["arrays"]) == {"seed", "length", "logits", "committed"}
    assert rep["arrays"]["logits"]["shape"] == [50, 32] and rep["arrays"]["logits"]["dtype"] == "float16"
    assert rep["arrays"]["logits"]["chunks"] == [10, 32]
    assert rep["bytes_on_disk"] > 0 and rep["bytes_per_sample_original_layout"] == 8 * 32 * 2 + 32 * 4
    h = rep["length_histogram"]
    assert sum(h["counts"]) == 50
    t = rep["targets"]
    assert t["targets_read"] == 50 and t["collapsed"] is False and t["distinct_argmax"] > 10
    assert 0 < t["top1_mass"]["mean"] < 1 and t["entropy"]["max"] <= np.log(32) + 1e-3
    assert rep["teacher"]["fingerprint"] == "abc"


def test_inspect_warns_on_collapse(tmp_path):
    make_store(tmp_path / "s", collapse=True)
    rep = inspect_store(tmp_path / "s")
    assert rep["targets"]["collapsed"] is True
    assert rep["targets"]["top_argmax"][0][0] == 7 and rep["targets"]["top_argmax_share"] >= 0.85
    r = kd_inspect(tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "targets collapsed" in r.stdout and "token 7" in r.stdout


def test_inspect_topk_all_positions(tmp_path):
    lay = layout(logits="topk", positions="all", num_samples=20)
    store = Store.create(tmp_path / "s", lay, {"name": "s"})
    rng = np.random.default_rng(0)
    for b in range(2):
        logits = rng.normal(size=(10, 8, 32)).astype(np.float32)
        idx = np.argsort(-logits, -1)[..., :4]
        lse = np.log(np.exp(logits).sum(-1))
        store.write_block(b, {"seed": np.zeros(10, np.int64), "length": np.full(10, 3, np.int32),
                              "topk_values": np.take_along_axis(logits, idx, -1).astype(np.float16),
                              "topk_indices": idx.astype(np.uint16), "logsumexp": lse.astype(np.float32)})
    t = inspect_store(tmp_path / "s")["targets"]
    assert t["targets_read"] == 20 * 3  # valid positions only


def test_inspect_half_written_store(tmp_path):
    make_store(tmp_path / "s", blocks=2)
    rep = inspect_store(tmp_path / "s")
    assert rep["complete"] is False and rep["blocks"] == {"committed": 2, "total": 5}
    assert rep["samples_written"] == 20 and rep["targets"]["targets_read"] == 20
    r = kd_inspect(tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "incomplete" in r.stdout and "2/5" in r.stdout
    empty = make_store(tmp_path / "e", blocks=0)
    rep = inspect_store(empty.path)
    assert rep["blocks"]["committed"] == 0 and rep["targets"]["targets_read"] == 0


def corrupt(path: Path, how: str) -> None:
    if how == "missing array metadata":
        (path / "logits" / "zarr.json").unlink()
    elif how == "garbage array metadata":
        (path / "logits" / "zarr.json").write_text("{not json")
    elif how == "garbage group metadata":
        (path / "zarr.json").write_text("\x00\x01garbage")


@pytest.mark.parametrize("how", ["missing array metadata", "garbage array metadata", "garbage group metadata"])
def test_inspect_unreadable_store_is_a_clear_error(tmp_path, how):
    make_store(tmp_path / "s")
    corrupt(tmp_path / "s", how)
    with pytest.raises(StoreError):
        inspect_store(tmp_path / "s")
    r = kd_inspect(tmp_path / "s")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    msg = "".join(r.stderr.split())
    assert "error:" in msg and str(tmp_path / "s").replace(" ", "") in msg
    assert ("logits" in msg) if "array" in how else ("metadata" in msg)


def test_truncated_commit_flag_counts_as_uncommitted(tmp_path):
    make_store(tmp_path / "s", blocks=3)
    f = tmp_path / "s" / "committed" / "c" / "1"
    f.write_bytes(f.read_bytes()[:3])  # a kill while the flag was written
    again = Store.open(tmp_path / "s")
    assert again.committed().tolist() == [True, False, True, False, False]
    assert again.pending_blocks() == [1, 3, 4]  # resume redoes block 1
    rep = inspect_store(tmp_path / "s")
    assert rep["blocks"]["committed"] == 2 and any("block 1" in u for u in rep["unreadable"])
    r = kd_inspect(tmp_path / "s")
    assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout and "unreadable" in r.stdout


@pytest.mark.parametrize("array", ["logits", "length"])
def test_inspect_truncated_chunk_is_reported(tmp_path, array):
    make_store(tmp_path / "s")
    chunk = next(p for p in sorted((tmp_path / "s" / array / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    rep = inspect_store(tmp_path / "s")
    assert any("block 0" in u for u in rep["targets"]["unreadable"] + rep.get("unreadable", []))
    r = kd_inspect(tmp_path / "s")
    assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout
    assert "unreadable" in r.stdout


def test_inspect_missing_store(tmp_path):
    r = kd_inspect(tmp_path / "nope")
    assert r.returncode == 1 and "not a LlamaKD store" in r.stderr and "Traceback" not in r.stderr
