"""Fault injection: a finished store damaged in every way a disk, a copy or a kill can damage it.

For each array kind (dense logits, top-k values/indices/logsumexp, dense inputs, ids, length, seed,
commit flags, commit records) a chunk file is deleted, truncated (for zstd chunks: a truncated
frame), or has random bytes flipped; each array's zarr.json is replaced with garbage. Each case
checks that `kd inspect` names the damaged block (or array), that `kd train` stops with exit 1
naming the store and the block without a traceback, and that `kd generate --repair` restores
arrays and commit records identical to an undamaged copy. The figures of README's "What survives
what" table are this suite's case counts.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import zarr

from conftest import TINY_SPEC, kd_in_process as kd
from kdcore.stages.generate import generate
from kdcore.store.inspect import inspect_store
from kdcore.config.load import load_spec

BLOCK = 1  # the damaged block (of 3)

# two stores cover every array kind: ids + dense logits (seed mode), and dense inputs + top-k
KINDS = {
    "ids": {"samples": 24, "max_seq_len": 6, "batch_size": 8, "block_size": 8, "seed": 2,
            "sampler": {"name": "random-ids"}},
    "topk": {"samples": 24, "max_seq_len": 6, "batch_size": 8, "block_size": 8, "seed": 3, "inputs": "dense",
             "logits": "topk", "topk": 5, "positions": "all",
             "sampler": {"name": "uniform", "low": -10.0, "high": 10.0}},
}
ARRAYS = {"ids": ["seed", "length", "ids", "logits", "committed"],
          "topk": ["inputs", "topk_values", "topk_indices", "logsumexp"]}
CHUNK_FAULTS = ["delete", "truncate", "flip"]
CASES = [(kind, array, fault) for kind, names in ARRAYS.items() for array in names
         for fault in [*CHUNK_FAULTS, "garbage zarr.json"]]
RECORD_FAULTS = ["delete", "garbage", "float checksum", "infinite checksum", "string checksum", "wrong row checksums",
                 "another block's", "an extra entry"]
CASES += [("ids", "commit record", fault) for fault in RECORD_FAULTS]
CASES += [("ids", "group", "garbage zarr.json")]


def spec_data(kind: str, root: Path) -> dict:
    return {**copy.deepcopy(TINY_SPEC), "datasets": {"d": copy.deepcopy(KINDS[kind])},
            "phases": [{"dataset": "d", "epochs": 1, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 1,
                        "losses": [{"name": "kl"}]}],
            "store_dir": str(root / "store"), "runs_dir": str(root / "runs")}


def write(data: dict, path: Path) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """An undamaged, complete store of each kind (never modified: cases damage copies)."""
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(kind)
        generate(load_spec(write(spec_data(kind, root), root / "spec.toml")), "d")
        out[kind] = root / "store" / "d"
    return out


def chunk(store: Path, array: str, b: int = BLOCK) -> Path:
    if array == "commit record":
        return store / "commits" / f"{b}.json"
    ndim = len(json.loads((store / array / "zarr.json").read_text())["shape"])
    return store.joinpath(array, "c", str(b), *["0"] * (ndim - 1))


def damage(store: Path, array: str, fault: str) -> None:
    if fault == "garbage zarr.json":
        (store / ("" if array == "group" else array) / "zarr.json").write_text("{garbage")
        return
    f = chunk(store, array)
    data = f.read_bytes()
    if array == "commit record" and fault not in ("delete", "garbage"):
        f.write_text(malformed(json.loads(data), fault, store))
    elif fault == "delete":
        f.unlink()
    elif fault == "truncate":  # a raw chunk cut short, or a zstd frame cut short
        f.write_bytes(data[: len(data) // 2])
    elif fault == "garbage":
        f.write_bytes(b"\x00garbage")
    else:  # random bytes flipped, somewhere in the file
        rng = np.random.default_rng(len(data))
        flipped = bytearray(data)
        for at in rng.choice(len(data), size=min(3, len(data)), replace=False):
            flipped[at] ^= int(rng.integers(1, 256))
        f.write_bytes(bytes(flipped))


def malformed(record: dict, fault: str, store: Path) -> str:
    """A commit record that still parses as JSON, but is not the one generation wrote."""
    logits = record["arrays"]["logits"]
    if fault == "float checksum":
        logits["crc32c"] = float(logits["crc32c"])
    elif fault == "infinite checksum":
        return json.dumps(record).replace(f'"crc32c": {logits["crc32c"]}', '"crc32c": 1e999', 1)
    elif fault == "string checksum":
        logits["crc32c"] = str(logits["crc32c"])
    elif fault == "wrong row checksums":  # well formed, every value a checksum: of other rows
        logits["row_crc32c"] = list(reversed(logits["row_crc32c"]))
    elif fault == "another block's":
        return (store / "commits" / f"{BLOCK + 1}.json").read_text()
    else:
        record["arrays"]["extra"] = {"crc32c": 0, "file_bytes": 0}
    return json.dumps(record)


def other_blocks(store: Path) -> dict[str, int]:
    """The modification times of every chunk file and commit record of the blocks not damaged."""
    files = [p for p in store.glob("*/c/*") if p.name != str(BLOCK)]
    files = [f for p in files for f in ([p] if p.is_file() else p.rglob("*"))]
    files += [p for p in (store / "commits").glob("*.json") if p.name != f"{BLOCK}.json"]
    return {str(p): p.stat().st_mtime_ns for p in files}


def contents(store: Path) -> dict[str, bytes]:
    """Every array's values and every commit record, as bytes."""
    group = zarr.open_group(str(store), mode="r")
    out = {k: np.asarray(group[k][:]).tobytes() for k in sorted(group.array_keys())}
    out.update({f"commits/{p.name}": p.read_bytes() for p in sorted((store / "commits").glob("*.json"))})
    return out


@pytest.mark.parametrize("kind,array,fault", CASES, ids=[f"{k}-{a}-{f}" for k, a, f in CASES])
def test_damage_is_found_named_and_repaired(kind, array, fault, pristine, tmp_path):
    spec = write(spec_data(kind, tmp_path), tmp_path / "spec.toml")
    store = tmp_path / "store" / "d"
    shutil.copytree(pristine[kind], store)
    damage(store, array, fault)
    before = other_blocks(store)
    metadata = fault == "garbage zarr.json"
    named = ("metadata" if array == "group" else array) if metadata else f"block {BLOCK}"

    code, out = kd("inspect", store, "--json")
    if metadata:  # the store cannot be described without its metadata: said, not crashed on
        assert code == 1 and named in out and "Traceback" not in out, out
    else:  # the report, then exit 1 (a script can tell a damaged store from an intact one)
        assert code == 1, out
        report = json.loads(out)
        assert list(report["damaged"]) == [str(BLOCK)], report["damaged"]  # that block, and only it

    code, out = kd("train", spec)
    if (array, fault) == ("seed", "flip"):
        # training never reads the seeds (it regenerates noise from the dataset's seed and the
        # index): their changed values cannot reach the student; inspect and --repair see them
        assert code == 0, out
    else:
        assert code == 1, out
        assert str(store) in out.replace("\n", ""), out
        assert named in " ".join(out.split()) and "Traceback" not in out, out
        assert not (tmp_path / "runs" / "tiny" / "student").exists()

    code, out = kd("generate", "--repair", spec)
    assert code == 0, out
    assert contents(store) == contents(pristine[kind])
    assert other_blocks(store) == before  # exactly the damaged block was written again
    report = inspect_store(store)
    assert report["complete"] and not report["damaged"]


def test_every_array_of_both_stores_is_damaged_in_every_way(pristine):
    """The cases cover every array the two stores' layouts hold (read from the stores, not this file),
    each with every chunk fault and broken metadata."""
    for kind, store in pristine.items():
        layout = json.loads((store / "zarr.json").read_text())["attributes"]["layout"]
        from kdcore.store.layout import Layout

        arrays = set(Layout(**layout).arrays())
        assert arrays <= set(ARRAYS["ids"] + ARRAYS["topk"]), arrays
        for array in arrays:
            assert {f for k, a, f in CASES if a == array} == {*CHUNK_FAULTS, "garbage zarr.json"}, array


DAMAGER = '''
import os
from pathlib import Path

from kdcore.plugin.hookspecs import hookimpl


@hookimpl
def kd_on_metrics(stage, record):
    """Flip a byte of block 1's logits at the end of the first epoch (once: a marker file says so)."""
    marker = Path(os.environ["KD_TEST_DAMAGE"])
    if stage == "train_epoch" and record["epoch"] == 0 and not marker.exists():
        marker.touch()
        chunk = Path(os.environ["KD_TEST_CHUNK"])
        data = bytearray(chunk.read_bytes())
        data[11] ^= 0x40
        chunk.write_bytes(bytes(data))
'''


@pytest.mark.slow
def test_damage_found_mid_training_stops_it_and_keeps_the_last_checkpoint(pristine, tmp_path, monkeypatch):
    """Bytes flipped while training runs (after the check before its first step): the next read of
    that block fails its checksum, and training stops with exit 1 naming store and block; the
    checkpoint of the last step taken stays, and after a repair training resumes from it."""
    (tmp_path / "damager.py").write_text(DAMAGER)
    data = spec_data("ids", tmp_path)
    data["plugins"] = ["damager.py"]
    data["phases"][0]["epochs"] = 3  # three steps each; block 1 is read again in epoch 2
    spec = write(data, tmp_path / "spec.toml")
    store = tmp_path / "store" / "d"
    shutil.copytree(pristine["ids"], store)
    monkeypatch.setenv("KD_TEST_DAMAGE", str(tmp_path / "damaged"))
    monkeypatch.setenv("KD_TEST_CHUNK", str(chunk(store, "logits")))
    code, out = kd("train", spec)
    assert (tmp_path / "damaged").exists()
    assert code == 1 and f"block {BLOCK}: logits: checksum mismatch" in out and "Traceback" not in out, out
    assert str(store) in out.replace("\n", "")
    import torch

    last = torch.load(tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt", weights_only=True)
    assert 3 <= last["state"]["global_step"] < 9  # the first epoch's steps were taken and kept
    code, out = kd("generate", "--repair", spec)
    assert code == 0 and contents(store) == contents(pristine["ids"]), out
    code, out = kd("train", spec)
    assert code == 0, out


def test_damage_found_in_a_loader_worker_reads_as_in_process(pristine, tmp_path):
    """With `workers`, blocks are read in DataLoader processes: the error still names store and
    block, without the worker's traceback (which torch puts into the message)."""
    data = spec_data("ids", tmp_path)
    data["phases"][0]["workers"] = 1
    spec = write(data, tmp_path / "spec.toml")
    store = tmp_path / "store" / "d"
    shutil.copytree(pristine["ids"], store)
    damage(store, "logits", "flip")
    code, out = kd("train", spec)
    assert code == 1 and f"block {BLOCK}: logits: checksum mismatch" in out, out
    assert "Traceback" not in out and "worker" not in out, out
