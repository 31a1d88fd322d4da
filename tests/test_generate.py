"""Generation into the store: layout, target kinds, reproducibility, refusal, kill -9 resume, torchrun."""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from kdcore.stages.builder import Builder
from kdcore.api import Inputs
from kdcore.stages.generate import generate
from kdcore.config.load import load_spec, parse_spec
from kdcore.problems import KDError
from kdcore.store.layout import Layout
from kdcore.store.lifecycle import create_store
from kdcore.store.store import FORMAT_VERSION, Store
from conftest import held_elsewhere, kd_in_process

BIN = Path(sys.executable).parent


def gen(spec_path: Path, dataset: str = "noise", **kw) -> Store:
    return generate(load_spec(spec_path), dataset, **kw)


def arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][:]) for k in sorted(g.array_keys())}


def assert_same_store(a: Path, b: Path, value_tol: float = 0.0) -> None:
    x, y = arrays(a), arrays(b)
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, k
        if value_tol and x[k].dtype.kind == "f":
            np.testing.assert_allclose(x[k].astype(np.float32), y[k].astype(np.float32), atol=value_tol, rtol=0, err_msg=k)
        else:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()}


def kd(*args, cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcore", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def with_dataset(spec: dict, **changes) -> dict:
    spec = copy.deepcopy(spec)
    spec["datasets"]["noise"].update(changes)
    return spec


def regenerate_inputs(store: Store, spec_path: Path) -> tuple[Inputs, torch.Tensor]:
    """The inputs a trainer would rebuild from (seed, index), and the teacher's logits on them."""
    spec = load_spec(spec_path)
    builder = Builder(spec)
    sampler = builder.sampler("noise")
    ds = spec.datasets["noise"]
    x = sampler.sample(range(ds.samples), ds.seed)
    return x, builder.teacher.logits(x, ds.positions)


# --- layout ----------------------------------------------------------------------------------------


def test_store_layout(tiny_spec, write_spec, tmp_path):
    path = write_spec(tiny_spec)
    store = gen(path)
    assert store.path == tmp_path / "store" / "noise" and store.complete
    N, S, V, B = 40, 6, 64, 8
    want = {"seed": ((N,), (B,), "int64"), "length": ((N,), (B,), "int32"),
            "logits": ((N, V), (B, V), "float16"), "committed": ((N // B,), (1,), "uint8")}
    g = zarr.open_group(str(store.path), mode="r")
    assert set(g.array_keys()) == set(want)  # seed inputs: no inputs array
    for name, (shape, chunks, dtype) in want.items():
        assert (g[name].shape, g[name].chunks, str(g[name].dtype)) == (shape, chunks, dtype), name
    assert (g["committed"][:] == 1).all()
    attrs = dict(g.attrs)
    assert attrs["format_version"] == FORMAT_VERSION and attrs["complete"] is True
    assert attrs["spec"]["seed"] == 1 and attrs["spec"]["sampler"]["name"] == "length-mix"
    assert attrs["teacher"]["name"] == "tiny-llama"
    assert attrs["teacher"]["fingerprint"] == Builder(load_spec(path)).teacher.fingerprint()
    assert attrs["vocab_size"] == V and attrs["identity_hash"]
    assert attrs["layout"]["block_rows"] == B and attrs["layout"]["num_samples"] == N
    # per-sample seeds and lengths, all written
    from kdcore.api import sample_seed

    assert g["seed"][:].tolist() == [sample_seed(1, i) for i in range(N)]
    assert ((g["length"][:] >= 1) & (g["length"][:] <= S)).all() and (g["length"][:] < S).any()
    # a complete store re-run does nothing (no file touched)
    before = snapshot(store.path)
    time.sleep(0.01)
    gen(path)
    assert snapshot(store.path) == before


def test_stored_targets_equal_teacher_logits(tiny_spec, write_spec):
    path = write_spec(tiny_spec)
    store = gen(path)
    x, logits = regenerate_inputs(store, path)
    data = arrays(store.path)
    assert np.array_equal(data["length"], x.lengths.numpy())
    np.testing.assert_allclose(data["logits"].astype(np.float32), logits.numpy(), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_topk_targets_give_exact_probabilities(tiny_spec, write_spec, positions):
    spec = with_dataset(tiny_spec, logits="topk", topk=5, positions=positions)
    path = write_spec(spec)
    store = gen(path)
    g = zarr.open_group(str(store.path), mode="r")
    pos = (6,) if positions == "all" else ()
    assert g["topk_values"].shape == (40, *pos, 5) and str(g["topk_values"].dtype) == "float16"
    assert g["topk_indices"].shape == (40, *pos, 5) and str(g["topk_indices"].dtype) == "uint16"
    assert g["logsumexp"].shape == (40, *pos) and str(g["logsumexp"].dtype) == "float32"
    assert "logits" not in set(g.array_keys())
    x, logits = regenerate_inputs(store, path)
    probs = torch.softmax(logits, -1)
    idx = torch.from_numpy(g["topk_indices"][:].astype(np.int64))
    kept = torch.from_numpy(g["topk_values"][:].astype(np.float32))
    lse = torch.from_numpy(g["logsumexp"][:])
    if positions == "all":  # padding positions are not targets
        m = x.mask()
        probs, idx, kept, lse, logits = probs[m], idx[m], kept[m], lse[m], logits[m]
    assert torch.equal(idx, logits.topk(5, -1).indices)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1), atol=1e-5, rtol=0)
    exact = torch.exp(kept - lse[..., None])
    torch.testing.assert_close(exact, probs.gather(-1, idx), atol=1e-4, rtol=2e-3)


def test_positions_all_contains_last(tiny_spec, write_spec, tmp_path):
    last = gen(write_spec(tiny_spec, "last.toml"))
    spec = with_dataset(tiny_spec, positions="all")
    spec["store_dir"] = str(tmp_path / "store_all")
    full = gen(write_spec(spec, "all.toml"))
    a, b = arrays(last.path), arrays(full.path)
    assert b["logits"].shape == (40, 6, 64)
    assert np.array_equal(a["length"], b["length"])
    picked = b["logits"][np.arange(40), a["length"] - 1]
    np.testing.assert_allclose(picked.astype(np.float32), a["logits"].astype(np.float32), atol=1e-2)


def test_dense_inputs_match_the_seeds(tiny_spec, write_spec, tmp_path):
    seed_store = gen(write_spec(tiny_spec, "seed.toml"))
    spec = with_dataset(tiny_spec, inputs="dense")
    spec["store_dir"] = str(tmp_path / "store_dense")
    path = write_spec(spec, "dense.toml")
    dense_store = gen(path)
    d, s = arrays(dense_store.path), arrays(seed_store.path)
    assert d["inputs"].shape == (40, 6, 64) and d["inputs"].dtype == np.float16
    assert zarr.open_group(str(dense_store.path))["inputs"].chunks == (8, 6, 64)
    x, _ = regenerate_inputs(dense_store, path)
    assert np.array_equal(d["inputs"], x.soft.half().numpy())  # padding rows stored as zeros
    for k in ("seed", "length", "logits"):
        assert np.array_equal(d[k], s[k]), k


TEACHER_GENERATED = {"name": "teacher-generated", "group": 6, "top_p": 0.9}
MIX = {"name": "mix", "weights": [0.7, 0.3], "samplers": [TEACHER_GENERATED, {"name": "random-ids"}]}


@pytest.mark.parametrize("sampler, positions", [
    ({"name": "length-mix", "sampler": {"name": "random-ids"}}, "last"),
    (TEACHER_GENERATED, "all"),  # the decode's own logits are stored: no second forward
    ({"name": "length-mix", "min_len": 2, "sampler": TEACHER_GENERATED}, "last"),
    (MIX, "all"),  # decode logits for some rows, a forward for the random ones
    ({**TEACHER_GENERATED, "burn_in": 3}, "all"),  # a forward of each window, the decode's logits dropped
], ids=["random-ids", "teacher-generated", "length-mix-teacher-generated", "mix", "teacher-generated-burn-in"])
def test_ids_sampler_stores_ids_and_the_teachers_logits(tiny_spec, write_spec, sampler, positions):
    spec = with_dataset(tiny_spec, sampler=sampler, positions=positions)
    path = write_spec(spec)
    store = gen(path)
    x, logits = regenerate_inputs(store, path)  # the teacher's full forward on the stored ids
    data = arrays(store.path)
    assert data["ids"].dtype == np.int32 and np.array_equal(data["ids"], x.ids.numpy())
    stored = torch.from_numpy(data["logits"].astype(np.float32))
    if positions == "all":  # padding positions are not targets
        stored, logits = stored[x.mask()], logits[x.mask()]
    torch.testing.assert_close(stored, logits, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("sampler", [{"name": "length-mix", "sampler": {"name": "uniform"}}, TEACHER_GENERATED],
                         ids=["forward", "decode"])
def test_non_finite_teacher_logits_are_refused(tiny_spec, write_spec, sampler):
    from kdcore.problems import KDError

    spec = load_spec(write_spec(with_dataset(tiny_spec, sampler=sampler)))
    builder = Builder(spec)
    with torch.no_grad():
        builder.teacher.model.lm_head.weight[3, 0] = float("nan")
    with pytest.raises(KDError, match=r"datasets\.noise: the teacher's logits hold NaN or inf"):
        generate(spec, "noise", builder)
    assert not Store.open(spec.store_path("noise")).committed().any()


def test_teacher_generated_group_is_part_of_the_dataset(tiny_spec, write_spec):
    gen(write_spec(with_dataset(tiny_spec, sampler=TEACHER_GENERATED, samples=8)))
    from kdcore.problems import KDError

    with pytest.raises(KDError, match="group: 6 -> 4"):  # other groups, other samples: not mixed into it
        gen(write_spec(with_dataset(tiny_spec, sampler={**TEACHER_GENERATED, "group": 4}, samples=8), "g4.toml"))


def test_batch_size_does_not_change_the_store(tiny_spec, write_spec, tmp_path):
    spec = with_dataset(tiny_spec, logits="topk", topk=4, positions="all", batch_size=3)
    a = gen(write_spec(spec, "a.toml"))
    spec = with_dataset(spec, batch_size=8)
    spec["store_dir"] = str(tmp_path / "store_b")
    b = gen(write_spec(spec, "b.toml"))
    assert_same_store(a.path, b.path, value_tol=1e-3)


@pytest.mark.parametrize("sampler, targets", [
    ({"name": "teacher-generated", "group": 4, "top_k": 8}, {}),
    # groups of 6 straddle the blocks of 8: a resumed block decodes its groups again, whole
    ({**TEACHER_GENERATED, "top_k": 8}, {"positions": "all", "logits": "topk", "topk": 4}),
    (MIX, {}),
    ({**TEACHER_GENERATED, "burn_in": 5}, {"positions": "all"}),
], ids=["teacher-generated", "teacher-generated-straddling-topk-all", "mix", "teacher-generated-burn-in"])
def test_new_samplers_give_the_same_store_for_any_batch_size_and_resume_point(tiny_spec, write_spec, tmp_path,
                                                                               sampler, targets):
    spec = with_dataset(tiny_spec, sampler=sampler, samples=24, block_size=8, batch_size=3, **targets)
    a = gen(write_spec(spec, "a.toml"))
    spec = with_dataset(spec, batch_size=8)
    spec["store_dir"] = str(tmp_path / "store_b")
    b = gen(write_spec(spec, "b.toml"))
    assert_same_store(a.path, b.path, value_tol=1e-3)  # ids exact; logits within float16 batching noise
    # a resume point: block 1 lost (flag unset, rows zeroed), then generation resumes in a fresh process state
    lost = Store.open(b.path, mode="r+")
    lost.array("ids")[8:16] = 0
    lost.array("committed")[1] = 0
    lost.group.attrs["complete"] = False
    gen(write_spec(spec, "b.toml"))
    assert_same_store(a.path, b.path, value_tol=1e-3)


# --- refusing another spec's store -------------------------------------------------------------------


@pytest.mark.slow
def test_different_spec_is_refused_then_overwritten(tiny_spec, write_spec, tmp_path):
    path = write_spec(tiny_spec)
    store = gen(path)
    before = snapshot(store.path)
    changed = with_dataset(tiny_spec, seed=2, samples=48)
    path2 = write_spec(changed, "changed.toml")
    r = kd("generate", path2, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    msg = " ".join(r.stderr.split())
    assert "dataset.seed: 1 -> 2" in msg and "dataset.samples: 40 -> 48" in msg and "--overwrite" in msg
    assert snapshot(store.path) == before  # untouched

    r = kd("generate", "--overwrite", path2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    g = zarr.open_group(str(store.path), mode="r")
    assert g.attrs["spec"]["seed"] == 2 and g["seed"].shape == (48,) and g.attrs["complete"]
    # and now the same spec again is a no-op
    before = snapshot(store.path)
    gen(path2)
    assert snapshot(store.path) == before


def test_different_teacher_is_refused(tiny_spec, write_spec):
    path = write_spec(tiny_spec)
    gen(path)
    other = copy.deepcopy(tiny_spec)
    other["teacher"]["seed"] = 1
    from kdcore.problems import KDError

    with pytest.raises(KDError, match="teacher"):
        gen(write_spec(other, "other.toml"))


@pytest.mark.slow
def test_overwrite_never_deletes_what_is_not_a_store(tiny_spec, write_spec, tmp_path):
    """A folder at store_dir/<dataset> that the tool cannot prove is a LlamaKD store (a thesis, say)
    is refused, --overwrite or not, with nothing deleted; an empty folder is simply used."""
    (tmp_path / "store" / "noise").mkdir(parents=True)
    (tmp_path / "store" / "noise" / "thesis.tex").write_text("x")
    path = write_spec(tiny_spec)
    for args in (["generate", path], ["generate", "--overwrite", path]):
        r = kd(*args, cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
        assert "not a LlamaKD store" in r.stderr and "nothing was changed" in " ".join(r.stderr.split())
        assert (tmp_path / "store" / "noise" / "thesis.tex").read_text() == "x"
    (tmp_path / "store" / "noise" / "thesis.tex").unlink()
    assert gen(path).complete


@pytest.mark.slow
def test_a_store_of_the_old_format_is_refused_and_may_be_overwritten(tiny_spec, write_spec, tmp_path):
    """Format 1 had no checksums: it is refused with what to do, and is provably a LlamaKD store,
    so --overwrite replaces it."""
    path = write_spec(tiny_spec)
    store = gen(path)
    meta = store.path / "zarr.json"
    data = json.loads(meta.read_text())
    data["attributes"]["format_version"] = 1
    meta.write_text(json.dumps(data))
    shutil.rmtree(store.path / "commits")  # format 1 had none
    r = kd("train", path, cwd=tmp_path)
    assert r.returncode == 1 and "format 1" in r.stderr and "--overwrite" in r.stderr, r.stderr
    r = kd("generate", path, cwd=tmp_path)
    assert r.returncode == 1 and "format 1" in r.stderr and "--overwrite" in r.stderr, r.stderr
    r = kd("generate", "--overwrite", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Store.open(store.path).attrs["format_version"] == FORMAT_VERSION


@pytest.mark.slow
def test_two_generates_on_one_store_the_second_names_the_first(tiny_spec, write_spec, tmp_path):
    """One writer per store: a second `kd generate` stops at once, naming the process that holds
    the store (pid and host), and changes nothing; once the first ends, the lock is free."""
    from kdcore.system.locks import hold

    path = write_spec(tiny_spec)
    store = tmp_path / "store" / "noise"
    with held_elsewhere(store, "store") as holder:
        r = kd("generate", path, cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        msg = " ".join(r.stderr.split())
        assert f"pid {holder.pid}" in msg and "in use by another process" in msg and str(store) in msg.replace(" ", "")
        assert not store.exists()
    assert gen(path).complete  # the dead holder's lock went with it
    with hold(store, "store"):  # and the finished run released its own
        pass


@pytest.mark.slow
def test_leftovers_of_a_kill_are_not_counted_and_are_removed(tiny_spec, write_spec, tmp_path):
    """zarr writes a chunk to `*.partial` and renames it: a kill leaves the temporary file. It is
    not part of the store's size, inspect says so, and the next `kd generate` removes it."""
    from kdcore.store.inspect import inspect_store

    path = write_spec(tiny_spec)
    store = gen(path)
    size = store.bytes_on_disk()
    junk = store.path / "logits" / "c" / "2" / "0.1234abcd.partial"
    junk.write_bytes(b"\0" * 5000)
    rep = inspect_store(store.path)
    assert rep["bytes_on_disk"] == size and rep["leftover_files"] == {"count": 1, "bytes": 5000}
    r = kd("generate", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not junk.exists() and Store.open(store.path).bytes_on_disk() == size


@pytest.mark.slow
def test_plain_resume_regenerates_blocks_whose_files_are_missing(tiny_spec, write_spec, tmp_path):
    """A resume checks the committed blocks' chunk files (a stat each) and regenerates exactly
    the blocks whose files are gone or cut short: the same arrays as before."""
    path = write_spec(tiny_spec)
    store = gen(path)
    before = arrays(store.path)
    (store.path / "logits" / "c" / "3" / "0").unlink()
    f = store.path / "length" / "c" / "1"
    f.write_bytes(f.read_bytes()[:5])
    r = kd("generate", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert "block 1: length: chunk file is 5 bytes" in said and "block 3: logits: chunk file missing" in said
    assert "regenerating blocks 1, 3" in said
    after = arrays(store.path)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert Store.open(store.path).complete


def test_batch_size_change_resumes_the_same_store(tiny_spec, write_spec):
    """batch_size is not part of the dataset's identity: changing it reuses the store."""
    store = gen(write_spec(tiny_spec))
    before = snapshot(store.path)
    gen(write_spec(with_dataset(tiny_spec, batch_size=5), "b5.toml"))
    assert snapshot(store.path) == before


# --- kill -9 and resume ----------------------------------------------------------------------------

SLOW_PLUGIN = '''
import time
from kdcore.plugin.hookspecs import hookimpl
from kd_plugins.samplers import Uniform, UniformParams


class Slow(Uniform):
    """uniform noise, drawn slowly: room to kill a run part-way"""

    def sample(self, indices, seed):
        time.sleep(0.03 * len(indices))
        return super().sample(indices, seed)


@hookimpl
def kd_register_samplers(register):
    register("slow-uniform", Slow, UniformParams)
'''


def kill_spec(tiny_spec, tmp_path: Path) -> dict:
    (tmp_path / "slow_plugin.py").write_text(SLOW_PLUGIN)
    spec = with_dataset(tiny_spec, samples=120, block_size=4, batch_size=4, positions="all", logits="topk", topk=8,
                        sampler={"name": "length-mix", "sampler": {"name": "slow-uniform"}})
    spec["plugins"] = ["slow_plugin.py"]
    return spec


def committed_count(store: Path) -> int:
    folder = store / "committed" / "c"
    return len(list(folder.iterdir())) if folder.exists() else 0


@pytest.mark.slow
def test_kill9_resume_equals_uninterrupted(tiny_spec, write_spec, tmp_path):
    spec = kill_spec(tiny_spec, tmp_path)
    path = write_spec(spec)
    store = tmp_path / "store" / "noise"
    rng = random.Random(1234)
    kills = 0
    for target in (3, 12, 21):  # kill after at least this many of the 30 blocks are committed
        proc = subprocess.Popen([sys.executable, "-m", "kdcore", "generate", str(path)], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while committed_count(store) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.06))  # somewhere inside the next block's work or write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read()
        assert committed_count(store) < 30 or proc.returncode == 0
    assert kills >= 2, "the run finished before it could be killed: make the sampler slower"
    partial = zarr.open_group(str(store), mode="r")
    assert not partial.attrs["complete"]
    r = kd("generate", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert zarr.open_group(str(store), mode="r").attrs["complete"]

    ref = copy.deepcopy(spec)
    ref["store_dir"] = str(tmp_path / "ref")
    gen(write_spec(ref, "ref.toml"))
    assert_same_store(store, tmp_path / "ref" / "noise")


# --- torchrun ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("group, want", [(None, [[0, 2, 4], [1, 3]]), (16, [[0, 1, 4], [2, 3]]), (64, [[0, 1, 2, 3, 4], []]),
                                         (4, [[0, 2, 4], [1, 3]])])  # groups inside a block: by block, not all on rank 0
def test_a_decoded_group_belongs_to_one_rank(tmp_path, monkeypatch, group, want):
    from kdcore.system import dist
    from kdcore.stages.generate import owned_blocks
    from kdcore.store.layout import Layout

    layout = Layout(num_samples=40, max_seq_len=6, vocab_size=64, positions="last", logits="dense", topk=4,
                    inputs="seed", produces="ids", block_rows=8)
    store = create_store(tmp_path / "s", layout, {})
    monkeypatch.setattr(dist, "world", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(dist, "rank", lambda: rank)
        assert owned_blocks(store, layout, group) == want[rank]


def test_rows_a_sampler_brought_without_logits_do_not_change_its_tensor(tiny_spec):
    """Generation fills the forward's logits into a copy: the sampler's tensor may be a view of its cache."""
    from kdcore.stages.generate import teacher_logits

    teacher = Builder(parse_spec(tiny_spec)).teacher
    ids = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(0))
    brought = torch.full((3, 6, 64), 7.0)
    x = Inputs(torch.full((3,), 6), ids=ids, logits=brought, has_logits=torch.tensor([True, False, True]))
    out = teacher_logits(teacher, x, "all")
    assert (brought == 7.0).all()  # untouched
    torch.testing.assert_close(out[1], teacher.logits(Inputs(torch.full((1,), 6), ids=ids[1:2]), "all")[0])
    assert (out[[0, 2]] == 7.0).all()


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [None, MIX], ids=["length-mix-uniform", "mix-teacher-generated"])
def test_torchrun_two_processes_equal_single_process(tiny_spec, write_spec, tmp_path, sampler):
    # 6 blocks, the last one short; the mix's groups of 6 straddle blocks of 8 that the two ranks share
    spec = with_dataset(tiny_spec, samples=44, logits="topk", topk=4, **({"sampler": sampler} if sampler else {}))
    path = write_spec(spec)
    env = {**os.environ, "KD_BACKEND": "gloo", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "kdcore",
                        "generate", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    store = tmp_path / "store" / "noise"
    assert zarr.open_group(str(store), mode="r").attrs["complete"]
    ref = copy.deepcopy(spec)
    ref["store_dir"] = str(tmp_path / "ref")
    gen(write_spec(ref, "ref.toml"))
    assert_same_store(store, tmp_path / "ref" / "noise")


def test_a_block_is_never_longer_than_the_dataset(tiny_spec, write_spec):
    store = gen(write_spec(with_dataset(tiny_spec, samples=10, block_size=2**40)))  # was an 8 TiB allocation
    assert store.layout.block_rows == 10 and store.complete and store.layout.num_blocks == 1


def test_too_little_disk_space_is_refused_before_any_teacher_work(tiny_spec, write_spec, monkeypatch):
    import shutil as real

    from kdcore.store import lifecycle as module

    path = write_spec(with_dataset(tiny_spec, samples=20, block_size=8))  # the last block: 4 rows, written whole
    spec = load_spec(path)
    free = {"bytes": 0}
    monkeypatch.setattr(module.shutil, "disk_usage", lambda p: real._ntuple_diskusage(10**12, 0, free["bytes"]))
    builder = Builder(spec)
    ran = []
    forward = type(builder.teacher.inner).logits
    monkeypatch.setattr(type(builder.teacher.inner), "logits", lambda self, *a: ran.append(1) or forward(self, *a))
    with pytest.raises(KDError) as e:
        generate(spec, "noise", builder)
    layout = Layout.of(spec.datasets["noise"], 64, "soft")
    whole, per_block = layout.disk_bytes(), layout.disk_bytes(1, new=False)  # what its files take on this disk
    where = spec.store_path("noise")
    assert (f"not enough disk space for {path}: datasets.noise: {module.human_bytes(whole)} for 20 samples in "
            f"{where} (on disk, about {module.human_bytes(whole)} in all), and 0.0 B is free on that "
            "disk. Nothing was generated, deleted or created") in str(e.value)
    assert not ran and not where.exists()  # no empty store left to be refused later as "another spec's"
    # a resumed store needs room for its missing blocks only, a complete one for nothing
    free["bytes"] = 10**12
    generate(spec, "noise", builder)
    free["bytes"] = 0
    assert generate(spec, "noise", builder).complete
    lost = Store.open(spec.store_path("noise"), mode="r+")
    lost.array("committed")[1] = 0
    free["bytes"] = per_block
    assert generate(spec, "noise", builder).complete
    lost.array("committed")[1:] = 0
    with pytest.raises(KDError, match=r"for 12 samples in .* about .* and \d+\.\d KiB is free"):
        generate(spec, "noise", builder)
    # --overwrite with a larger dataset that does not fit even in the space the old store frees: the old one stays
    lost.array("committed")[:] = 1
    ran.clear()
    bigger = load_spec(write_spec(with_dataset(tiny_spec, samples=400, block_size=8)))
    with pytest.raises(KDError, match="for 400 samples"):
        generate(bigger, "noise", overwrite=True)
    assert Store.open(spec.store_path("noise")).committed().all() and not ran


def test_a_run_checks_room_for_all_its_datasets_before_the_first(tiny_spec, write_spec, monkeypatch):
    """Two datasets that fit one at a time but not together: refused before the first is generated."""
    import shutil as real

    from kdcore.store import lifecycle as module

    tiny_spec["datasets"]["more"] = copy.deepcopy(tiny_spec["datasets"]["noise"])
    tiny_spec["phases"].append({**tiny_spec["phases"][0], "dataset": "more"})
    path = write_spec(tiny_spec)
    spec = load_spec(path)
    layout = Layout.of(spec.datasets["noise"], 64, "soft")
    one = layout.num_blocks * layout.block_rows * layout.bytes_per_sample()
    monkeypatch.setattr(module.shutil, "disk_usage", lambda p: real._ntuple_diskusage(10**12, 0, one + one // 2))
    code, out = kd_in_process("generate", str(path))
    assert code == 1, out
    assert "not enough disk space" in out and "datasets.noise" in out and "datasets.more" in out
    assert not spec.store_path("noise").exists() and not spec.store_path("more").exists()


@pytest.mark.parametrize("kind", [
    {"sampler": {"name": "uniform"}},  # float rows kept as seeds, dense last-position logits
    {"inputs": "dense", "sampler": {"name": "uniform"}},  # the float rows stored
    {"logits": "topk", "topk": 8, "positions": "all", "sampler": {"name": "random-ids"}},  # top-k at every position
    {"positions": "all", "sampler": {"name": "random-ids"}},  # ids, dense logits at every position
], ids=["seed", "dense-inputs", "topk", "ids"])
def test_the_disk_estimate_is_what_the_files_take(tiny_spec, write_spec, kind):
    """The disk check counts what a store's files and folders really take on this disk (blocks of
    files, zarr's folders, commit records and flags), within 10%: it once said 1.4 MiB for 108 MiB."""
    import os

    data = with_dataset(tiny_spec, samples=200, block_size=16, **kind)
    data["teacher"]["vocab_size"] = 256
    store = gen(write_spec(data))
    taken = sum(os.lstat(p).st_blocks * 512 for p in [store.path, *store.path.rglob("*")])
    estimate = store.layout.disk_bytes(fs_block=os.statvfs(store.path).f_frsize)
    assert 0.9 * taken <= estimate <= 1.1 * taken, (estimate, taken)


def test_a_full_disk_during_generation_is_one_line_and_the_store_resumes(tiny_spec, write_spec, monkeypatch, tmp_path):
    """ENOSPC part-way: one line naming the store, the free space and what it still needs, exit 1;
    the blocks committed before it stay, and the next run finishes the same store."""
    import errno

    from conftest import kd_in_process

    path = write_spec(with_dataset(tiny_spec, samples=40, block_size=8))
    real_write = Store.write_block
    written = []

    def fill_up(self, b, data, rows=None):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(b)
        return real_write(self, b, data, rows)

    monkeypatch.setattr(Store, "write_block", fill_up)
    code, output = kd_in_process("generate", path)
    said = " ".join(output.split())
    store_path = load_spec(path).store_path("noise")
    assert code == 1 and "Traceback" not in output
    assert f"{store_path}: the disk is full (" in said and "while writing the store; it still needs about" in said
    assert Store.open(store_path).committed().sum() == 2
    monkeypatch.setattr(Store, "write_block", real_write)
    assert gen(path).complete
    reference = gen(write_spec({**with_dataset(tiny_spec, samples=40, block_size=8), "store_dir": str(tmp_path / "ref")},
                               "ref.toml"))
    resumed, whole = arrays(store_path), arrays(reference.path)
    assert resumed.keys() == whole.keys() and all(np.array_equal(resumed[k], whole[k]) for k in whole)
