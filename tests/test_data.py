"""Training batches from a store: the epoch plan, what StoreBatches reads, seed-mode inputs, rank splits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tomli_w
import torch

from conftest import TINY_SPEC
from kdcore.stages.builder import Builder
from kdcore.api import Inputs
from kdcore.stages.batches import StoreBatches, epoch_plan, loader, pad_to
from kdcore.stages.generate import generate
from kdcore.config.load import load_spec
from kdcore.problems import KDError
from kdcore.store.store import Store

# --- the epoch plan (pure numpy) ------------------------------------------------------------------


@pytest.mark.parametrize("N,B,batch,chunks", [(40, 8, 8, 2), (37, 5, 6, 3), (10, 16, 3, 8), (64, 4, 7, 1)])
def test_epoch_plan_covers_every_row_once(N, B, batch, chunks):
    for epoch in range(3):
        plan = epoch_plan(N, B, batch, chunks, seed=5, epoch=epoch)
        rows = np.concatenate(plan)
        assert sorted(rows.tolist()) == list(range(N))
        assert all(len(b) == batch for b in plan[:-1]) and 1 <= len(plan[-1]) <= batch
        assert len(plan) == -(-N // batch)


def test_epoch_plan_is_deterministic_and_epochs_differ():
    a = epoch_plan(200, 10, 16, 4, seed=3, epoch=0)
    b = epoch_plan(200, 10, 16, 4, seed=3, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = epoch_plan(200, 10, 16, 4, seed=3, epoch=1)
    d = epoch_plan(200, 10, 16, 4, seed=4, epoch=0)
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    assert not np.array_equal(np.concatenate(a), np.concatenate(d))


@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_epoch_plan_reads_whole_blocks_into_the_buffer(chunks):
    """Each buffer of `chunks` blocks is emptied before the next is read: consecutive runs of
    chunks * block_rows rows of the stream come from at most `chunks` blocks, all of each."""
    N, B = 96, 8
    stream = np.concatenate(epoch_plan(N, B, 5, chunks, seed=1, epoch=0))
    size = chunks * B
    for lo in range(0, N, size):
        part = stream[lo : lo + size]
        blocks = np.unique(part // B)
        assert len(blocks) <= chunks
        assert sorted(part.tolist()) == sorted(r for b in blocks for r in range(b * B, (b + 1) * B))
    # and the rows inside a buffer are shuffled, not read in block order
    assert not np.array_equal(stream[:size], np.sort(stream[:size]))


# --- stores --------------------------------------------------------------------------------------


def _make_store(tmp, **dataset):
    data = copy.deepcopy(TINY_SPEC)
    data["datasets"]["noise"].update(dataset)
    data["store_dir"], data["runs_dir"] = str(tmp / "store"), str(tmp / "runs")
    path = tmp / "spec.toml"
    path.write_text(tomli_w.dumps(data))
    spec = load_spec(path)
    builder = Builder(spec)
    store = generate(spec, "noise", builder)
    return spec, builder, store


@pytest.fixture(scope="module")
def seed_store(tmp_path_factory):
    return _make_store(tmp_path_factory.mktemp("seed"))


@pytest.fixture(scope="module")
def dense_store(tmp_path_factory):
    return _make_store(tmp_path_factory.mktemp("dense"), inputs="dense", positions="all",
                       logits="topk", topk=5, samples=30, block_size=7)


def _read(store: Store, name: str, rows) -> np.ndarray:
    return np.asarray(store.array(name)[:])[rows]


@pytest.mark.parametrize("cache_blocks", [16, 1])
def test_store_batches_match_direct_reads(seed_store, cache_blocks):
    """Through the loader: its I/O thread fills the block cache while its helper builds batches
    from it (with one block cached, each evicts what the other may be using)."""
    spec, builder, store = seed_store
    plan = epoch_plan(store.layout.num_samples, store.layout.block_rows, 8, 2, seed=0, epoch=1)
    batches = StoreBatches(store.path, plan, 6, lambda: builder.sampler("noise"), spec.datasets["noise"].seed,
                           cache_blocks=cache_blocks)
    for k, batch in enumerate(loader(batches)):
        rows = np.sort(plan[k])
        assert np.array_equal(batch.rows, rows)
        expected = torch.from_numpy(_read(store, "logits", rows))
        assert batch.targets.logits.dtype == torch.float16 and torch.equal(batch.targets.logits, expected)
        on_device = batch.to("cpu")  # float32 targets for the losses, the same values
        assert on_device.targets.logits.dtype == torch.float32 and torch.equal(on_device.targets.logits, expected.float())
        assert torch.equal(batch.inputs.lengths, torch.from_numpy(_read(store, "length", rows).astype(np.int64)))
        assert batch.weight == 1.0 and batch.global_size == len(plan[k])
    assert k == len(plan) - 1
    # resuming at batch 3: a Subset keeps the plan's order
    tail = [b.rows.tolist() for b in loader(torch.utils.data.Subset(batches, range(3, len(plan))))]
    assert tail == [np.sort(r).tolist() for r in plan[3:]]


@pytest.mark.parametrize("which", ["seed", "dense"])
def test_batches_from_rows_from_cached_blocks_and_in_a_worker_agree(which, seed_store, dense_store):
    """A batch whose blocks are not read yet takes the raw arrays' rows from their files (only the
    compressed arrays' blocks are decoded and cached); one built after `warm` takes every array
    from cached blocks. Both equal zarr's rows, as does one built from a pickled copy (what a
    DataLoader worker gets: settings, no open store or cache)."""
    spec, builder, store = seed_store if which == "seed" else dense_store
    plan = epoch_plan(store.layout.num_samples, store.layout.block_rows, 8, 2, seed=0, epoch=0)
    make = lambda: builder.sampler("noise")  # noqa: E731
    raw = [n for n in ("logits", "inputs") if n in store.layout.arrays()]
    assert raw  # each store has a vocab-sized array stored raw
    for k in range(len(plan)):
        rows = np.sort(plan[k])
        fresh = StoreBatches(store.path, plan, 6, make, spec.datasets["noise"].seed)
        by_rows = fresh[k]
        assert fresh.rows.cache.keys() and not any(is_raw for _, is_raw in fresh.rows.cache.keys())  # raw rows were read alone
        warmed = StoreBatches(store.path, plan, 6, make, spec.datasets["noise"].seed)
        warmed.warm(k)
        assert {b for b, is_raw in warmed.rows.cache.keys() if is_raw} == set((rows // store.layout.block_rows).tolist())
        from_blocks = warmed[k]
        copied = copy.deepcopy(warmed)  # through __getstate__, as pickling for a spawned worker
        assert copied._rows is None and copied._store is None
        for batch in (by_rows, from_blocks, copied[k]):
            for name in raw:
                got = batch.inputs.soft if name == "inputs" else batch.targets.logits
                expected = torch.from_numpy(_read(store, name, rows))
                if name == "inputs":
                    expected = torch.nn.functional.pad(expected.float(), (0, 0, 0, 6 - expected.shape[1]))
                assert torch.equal(got, expected), (k, name)
            if store.layout.logits == "topk":
                assert torch.equal(batch.targets.indices, torch.from_numpy(_read(store, "topk_indices", rows).astype(np.int64))[:, :6])


def test_seed_mode_regenerates_the_inputs_the_teacher_saw(seed_store):
    spec, builder, store = seed_store
    assert "inputs" not in store.layout.arrays()  # nothing but seeds and lengths are stored
    plan = epoch_plan(store.layout.num_samples, store.layout.block_rows, 8, 2, seed=0, epoch=0)
    batches = StoreBatches(store.path, plan, 6, lambda: builder.sampler("noise"), spec.datasets["noise"].seed)
    for batch in (batches[0], batches[3]):
        # padding positions are zero rows (length-mix), as generated
        assert torch.all(batch.inputs.soft[~batch.inputs.mask()] == 0)
        assert batch.inputs.soft.abs().max() > 1  # uniform in [-10, 10], really regenerated
        logits = builder.teacher.logits(batch.inputs, "last")
        # other batches than at generation, the same logits: the teacher is batch-invariant (ALIGN)
        assert torch.equal(logits.half(), batch.targets.logits)
    # a wrong dataset seed gives other inputs than the targets were made from: refused, never trained on
    wrong = StoreBatches(store.path, plan, 6, lambda: builder.sampler("noise"), spec.datasets["noise"].seed + 1)
    with pytest.raises(KDError, match="sampler 'length-mix' draws now for sample .* are not those its targets were made from"):
        wrong[0]


def test_a_sampler_whose_code_changed_is_not_trained_on_silently(seed_store, monkeypatch):
    """The same spec, the sampler's code changed since generation (its draws moved by 1e-3): its
    regenerated inputs no longer match the checksums generation recorded, and the batch is refused."""
    from kd_plugins import samplers

    spec, builder, store = seed_store
    plan = epoch_plan(store.layout.num_samples, store.layout.block_rows, 8, 2, seed=0, epoch=0)
    draw = samplers.Uniform.sample

    def changed(self, indices, seed):
        inputs = draw(self, indices, seed)
        inputs.soft += 1e-3 * (inputs.soft != 0)
        return inputs

    monkeypatch.setattr(samplers.Uniform, "sample", changed)
    batches = StoreBatches(store.path, plan, 6, lambda: builder.sampler("noise"), spec.datasets["noise"].seed)
    with pytest.raises(KDError, match=f"{store.path}: the inputs sampler 'length-mix'"):
        batches[0]


def test_dense_inputs_topk_all_positions_and_pad_to(dense_store):
    spec, builder, store = dense_store
    plan = epoch_plan(30, 7, 4, 2, seed=0, epoch=0)
    batches = StoreBatches(store.path, plan, 9, None, 0)  # student length 9 > stored 6
    batch = batches[2]
    rows = np.sort(plan[2])
    stored = torch.from_numpy(_read(store, "inputs", rows)).float()
    assert batch.inputs.soft.shape == (4, 9, 64)
    assert torch.equal(batch.inputs.soft[:, :6], stored)
    assert torch.all(batch.inputs.soft[:, 6:] == 0)
    t = batch.to("cpu").targets  # float32, as the losses get them
    assert t.values.shape == (4, 9, 5) and t.indices.shape == (4, 9, 5) and t.logsumexp.shape == (4, 9)
    assert torch.equal(t.values[:, :6], torch.from_numpy(_read(store, "topk_values", rows)).float())
    assert torch.equal(t.indices[:, :6], torch.from_numpy(_read(store, "topk_indices", rows).astype(np.int64)))
    assert torch.equal(t.logsumexp[:, :6], torch.from_numpy(_read(store, "logsumexp", rows)))
    assert torch.all(t.values[:, 6:] == 0)
    # the teacher on the stored (float16) inputs reproduces the stored top-k
    logits = builder.teacher.logits(Inputs(batch.inputs.lengths, soft=stored), "all")
    mask = batch.inputs.mask()[:, :6]
    top = logits.topk(5, -1)
    assert torch.allclose(top.values[mask].half().float(), t.values[:, :6][mask], atol=1e-2, rtol=1e-3)


def test_pad_to():
    lengths = torch.tensor([2, 3])
    ids = Inputs(lengths, ids=torch.tensor([[4, 5, 0], [1, 2, 3]]))
    padded = pad_to(ids, 5)
    assert padded.ids.tolist() == [[4, 5, 0, 0, 0], [1, 2, 3, 0, 0]]
    assert torch.equal(padded.mask()[:, :3], ids.mask()) and not padded.mask()[:, 3:].any()
    soft = Inputs(lengths, soft=torch.rand(2, 3, 4))
    ps = pad_to(soft, 4)
    assert ps.soft.shape == (2, 4, 4) and torch.equal(ps.soft[:, :3], soft.soft) and torch.all(ps.soft[:, 3] == 0)
    assert pad_to(soft, 3) is soft and pad_to(soft, 2) is soft


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_each_global_batch(seed_store, dense_store, world):
    for spec, builder, store in (seed_store, dense_store):
        N, B = store.layout.num_samples, store.layout.block_rows
        plan = epoch_plan(N, B, 7, 2, seed=2, epoch=0)
        sampler = (lambda: builder.sampler("noise")) if store.layout.inputs == "seed" else None
        per_rank = [StoreBatches(store.path, plan, 6, sampler, 1, rank=r, world=world) for r in range(world)]
        single = StoreBatches(store.path, plan, 6, sampler, 1)
        for k in range(len(plan)):
            parts = [ds[k] for ds in per_rank]
            # a rank left without rows borrows one with weight 0: only weighted rows count
            union = np.concatenate([p.rows for p in parts if p.weight > 0])
            assert sorted(union.tolist()) == sorted(plan[k].tolist())  # disjoint, and all of it
            # DDP averages gradients over ranks: the weights make that the global batch's mean
            assert sum(p.weight for p in parts) == pytest.approx(world)
            whole = single[k]
            for p in parts:
                at = np.searchsorted(whole.rows, p.rows)
                if p.targets.logits is not None:
                    assert torch.equal(p.targets.logits, whole.targets.logits[at])
                else:
                    assert torch.equal(p.targets.values, whole.targets.values[at])
                assert torch.equal(p.inputs.soft, whole.inputs.soft[at])
            if store.layout.positions == "all":
                counts = [int(p.inputs.lengths.sum()) if p.weight else 0 for p in parts]
                assert [p.weight for p in parts] == pytest.approx([world * c / sum(counts) for c in counts])


def test_rank_without_rows_gets_weight_zero(seed_store):
    spec, builder, store = seed_store
    plan = [np.array([5, 9, 2]), np.array([7])]
    parts = [StoreBatches(store.path, plan, 6, lambda: builder.sampler("noise"), 1, rank=r, world=2)[1] for r in (0, 1)]
    assert parts[0].rows.tolist() == [7] and parts[0].weight == 2.0
    assert parts[1].weight == 0.0 and parts[1].inputs.batch_size == 1  # still computes, contributes nothing
