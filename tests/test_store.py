"""The store on its own (kdcore.store.store) and `kd inspect`: complete, half-written, collapsed, corrupt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdcore.problems import KDError
from kdcore.store.inspect import inspect_store
from kdcore.store.layout import Layout
from kdcore.store.lifecycle import create_store
from kdcore.store.store import Store
from conftest import small_layout as layout, write_committed as write


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
    store = create_store(path, lay, {"name": path.name, "experiment": "t", "spec": {"sampler": {"name": "x"}},
                                      "teacher": {"name": "tiny-llama", "fingerprint": "abc"}})
    for b in range(lay.num_blocks if blocks is None else blocks):
        write(store, b, block(lay, b, collapse))
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
    with pytest.raises(KDError, match="uncommitted"):
        store.mark_complete()
    again = Store.open(tmp_path / "s")
    got = again.read_block(1)
    want = block(lay, 1)
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    with pytest.raises(ValueError, match="rows"):
        write(store, 2, {"length": np.ones(3, dtype=np.int32)})
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


def test_open_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(KDError, match="not a LlamaKD store"):
        Store.open(tmp_path / "missing")
    import zarr

    zarr.open_group(str(tmp_path / "other"), mode="w").attrs["hello"] = 1
    with pytest.raises(KDError, match="format"):
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
    store = create_store(tmp_path / "s", lay, {"name": "s"})
    rng = np.random.default_rng(0)
    for b in range(2):
        logits = rng.normal(size=(10, 8, 32)).astype(np.float32)
        idx = np.argsort(-logits, -1)[..., :4]
        lse = np.log(np.exp(logits).sum(-1))
        write(store, b, {"seed": np.zeros(10, np.int64), "length": np.full(10, 3, np.int32),
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
    with pytest.raises(KDError):
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
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout and "unreadable" in r.stdout


@pytest.mark.parametrize("array", ["logits", "length"])
def test_inspect_truncated_chunk_is_reported(tmp_path, array):
    make_store(tmp_path / "s")
    chunk = next(p for p in sorted((tmp_path / "s" / array / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    rep = inspect_store(tmp_path / "s")
    assert any("block 0" in u for u in rep["targets"]["unreadable"] + rep.get("unreadable", []))
    r = kd_inspect(tmp_path / "s")
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    assert "unreadable" in r.stdout


def test_inspect_missing_store(tmp_path):
    r = kd_inspect(tmp_path / "nope")
    assert r.returncode == 1 and "not a LlamaKD store" in r.stderr and "Traceback" not in r.stderr


def test_inspect_a_path_that_does_not_exist_says_so(tmp_path):
    r = kd_inspect(tmp_path / "nope")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "does not exist" in " ".join(r.stderr.split()) and "no zarr.json" not in r.stderr


def test_inspect_topk_entropy_is_given_as_bounds(tmp_path):
    """A top-k store keeps k probabilities and the logsumexp, not how the rest of the mass is
    spread: for a near-uniform teacher (entropy ~ log V) the tail-as-one-token figure is far too
    low. The report gives both bounds, says which is which, and the truth lies between them."""
    V, k = 512, 4
    lay = layout(logits="topk", topk=k, vocab_size=V, num_samples=20)
    store = create_store(tmp_path / "s", lay, {"name": "s"})
    rng = np.random.default_rng(0)
    truth = []
    for b in range(2):
        logits = rng.normal(scale=0.1, size=(10, V)).astype(np.float32)  # nearly uniform
        idx = np.argsort(-logits, -1)[..., :k]
        lse = np.log(np.exp(logits).sum(-1))
        p = np.exp(logits - lse[:, None])
        truth.append(-(p * np.log(p)).sum(-1))
        write(store, b, {"seed": np.zeros(10, np.int64), "length": np.full(10, 3, np.int32),
                              "topk_values": np.take_along_axis(logits, idx, -1).astype(np.float16),
                              "topk_indices": idx.astype(np.uint16), "logsumexp": lse.astype(np.float32)})
    store.mark_complete()
    t = inspect_store(tmp_path / "s")["targets"]
    true_mean = float(np.concatenate(truth).mean())
    assert true_mean > 6  # log(512) = 6.24
    assert not t["entropy_exact"]
    assert t["entropy"]["mean"] < 1 < true_mean - 0.05 < t["entropy_upper"]["mean"] < true_mean + 0.05
    r = kd_inspect(tmp_path / "s")
    assert r.returncode == 0, r.stderr
    line = " ".join(r.stdout.split())
    assert "lower bound" in line and f"{t['entropy_upper']['mean']:.3f}" in line


def test_inspect_names_damaged_blocks_and_skips_them(tmp_path):
    """Every committed block is read and checked: a changed byte is named by block and array, and
    the report's figures come from the intact blocks only."""
    make_store(tmp_path / "s")
    chunk = tmp_path / "s" / "logits" / "c" / "3" / "0"
    data = bytearray(chunk.read_bytes())
    data[7] ^= 1
    chunk.write_bytes(bytes(data))
    rep = inspect_store(tmp_path / "s")
    assert rep["damaged"] == {"3": ["logits: checksum mismatch (the data is not what was written)"]}
    assert rep["targets"]["targets_read"] == 40
    assert inspect_store(tmp_path / "s", verify=False)["damaged"] == {}  # a stat cannot see it
    r = kd_inspect(tmp_path / "s")
    assert r.returncode == 1 and "damaged" in r.stdout and "block 3: logits: checksum mismatch" in r.stdout
    assert kd_inspect(tmp_path / "s", "--no-verify").returncode == 0  # nothing seen, nothing reported
