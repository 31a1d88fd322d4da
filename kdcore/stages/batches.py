"""Training batches from a store, read by whole chunks.

The batch plan of an epoch is a pure function of (seed, epoch): blocks are shuffled, taken a few at
a time into a buffer (`shuffle_chunks`), and the buffer's rows are permuted and cut into batches
(whole chunks, because random single-row reads are far slower). Because the plan is known up
front, resuming at step k of an epoch just starts at batch k, and rank r of W takes rows r::W of every
global batch, so data-parallel training sees the same global batches as a single process.
"""

from __future__ import annotations

from collections import deque
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from kdcore.plugin.data import Inputs, Targets
from kdcore.problems import KDError
from kdcore.store.chunkio import StoreRows
from kdcore.store.store import Store
from kdcore.system.threads import background


def epoch_plan(num_samples: int, block_rows: int, batch_size: int, shuffle_chunks: int,
               seed: int, epoch: int) -> list[np.ndarray]:
    """Global row indices of every batch of one epoch (the last batch may be short)."""
    rng = np.random.default_rng([seed, epoch])
    num_blocks = -(-num_samples // block_rows)
    order = rng.permutation(num_blocks)
    stream = []
    for g in range(0, num_blocks, shuffle_chunks):
        rows = np.concatenate([np.arange(b * block_rows, min((b + 1) * block_rows, num_samples))
                               for b in order[g : g + shuffle_chunks]])
        stream.append(rows[rng.permutation(len(rows))])
    rows = np.concatenate(stream)
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


@dataclass
class Batch:
    """This rank's rows of one global batch.

    `weight` is what this rank's loss (a mean over its own rows, or valid positions) is multiplied by
    so that DDP's gradient average equals the gradient of the mean over the whole global batch:
    world * (this rank's count) / (global count). It is exactly 1.0 in a single process, and 0 for a
    rank that got no rows (it computes on one borrowed row so it still joins the all-reduce).
    """

    inputs: Inputs
    targets: Targets
    rows: np.ndarray
    weight: float = 1.0
    global_size: int = 0  # rows in the global batch

    def to(self, device) -> "Batch":
        """On `device`, with float32 targets (they travel as the store keeps them: float16 values are
        half the bytes to move, and the upcast runs where the loss does)."""
        t = self.targets.to(device)
        up = lambda x: None if x is None else x.float()  # noqa: E731
        targets = Targets(up(t.logits), up(t.values), t.indices, up(t.logsumexp))
        return Batch(self.inputs.to(device), targets, self.rows, self.weight, self.global_size)


class StoreBatches(torch.utils.data.Dataset):
    """Item k is batch k of the plan, for this rank; opens the store lazily (inside each worker).
    Rows come through `chunkio.StoreRows`: `warm` and `hint` let the loader read ahead."""

    def __init__(self, path, plan: list[np.ndarray], seq_len: int, make_sampler: Callable | None = None,
                 dataset_seed: int = 0, rank: int = 0, world: int = 1, cache_blocks: int = 16):
        self.path, self.plan, self.seq_len = path, plan, seq_len
        self.make_sampler, self.dataset_seed = make_sampler, dataset_seed
        self.rank, self.world, self.cache_blocks = rank, world, cache_blocks
        self._reset()

    def _reset(self) -> None:
        self._store, self._sampler, self._rows = None, None, None

    def __getstate__(self):  # for DataLoader workers: the settings, not the open store or cache
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __len__(self):
        return len(self.plan)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.path)
        return self._store

    @property
    def rows(self) -> StoreRows:
        if self._rows is None:
            names = [n for n in self.store.layout.data_arrays() if n != "seed"]
            self._rows = StoreRows(self.store, names, self.cache_blocks, _empty)
        return self._rows

    def warm(self, k: int) -> None:
        """Read the blocks batch k will need into the cache."""
        self.rows.warm(self._blocks_of(k))

    def hint(self, k: int) -> None:
        """Ask the OS to start reading the blocks batch k will need: the disk works while the student does."""
        self.rows.hint(self._blocks_of(k))

    def _blocks_of(self, k: int) -> list[int]:
        """The blocks batch k's rows come from (none past the plan's end)."""
        if not 0 <= k < len(self.plan):
            return []
        return np.unique(self.plan[k] // self.store.layout.block_rows).tolist()

    def _weight(self, batch_rows: np.ndarray, rows: np.ndarray, lengths: np.ndarray) -> float:
        if self.world == 1:
            return 1.0
        if self.store.layout.positions == "all":  # losses average over valid positions
            local = int(lengths.sum())
            total = int(self.rows.gather(np.sort(batch_rows), ["length"])["length"].sum())
        else:  # losses average over rows
            local, total = len(rows), len(batch_rows)
        return self.world * local / total

    def __getitem__(self, k: int) -> Batch:
        batch_rows = self.plan[k]
        rows = np.sort(batch_rows[self.rank :: self.world])
        empty = len(rows) == 0
        if empty:  # fewer rows than ranks: borrow one, weighted 0
            rows = np.sort(batch_rows)[:1]
        layout = self.store.layout
        arr = self.rows.gather(rows)
        weight = 0.0 if empty else self._weight(batch_rows, rows, arr["length"])
        lengths = torch.from_numpy(arr["length"].astype(np.int64))
        if "ids" in arr:
            inputs = Inputs(lengths, ids=torch.from_numpy(arr["ids"].astype(np.int64)))
        elif "inputs" in arr:
            inputs = Inputs(lengths, soft=torch.from_numpy(arr["inputs"]).float())
        else:  # seed mode: regenerate the noise from (seed, index)
            if self._sampler is None:
                self._sampler = self.make_sampler()
            inputs = self._sampler.sample([int(r) for r in rows], self.dataset_seed)
            self.store.check_regenerated(rows, inputs.soft)  # the inputs the targets were made from
            inputs = Inputs(lengths, soft=inputs.soft)
        inputs = pad_to(inputs, self.seq_len)
        if "logits" in arr:  # float16 until Batch.to(device)
            targets = Targets(logits=torch.from_numpy(arr["logits"]))
        else:
            targets = Targets(values=torch.from_numpy(arr["topk_values"]),
                              indices=torch.from_numpy(arr["topk_indices"].astype(np.int64)),
                              logsumexp=torch.from_numpy(arr["logsumexp"]))
        if layout.positions == "all" and self.seq_len > layout.max_seq_len:
            targets = _pad_positions(targets, self.seq_len)
        return Batch(inputs, targets, rows, weight, len(batch_rows))


def _empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A numpy view of a fresh torch tensor (which keeps it alive): torch backs large allocations
    with huge pages (kdcore/__init__.py), so filling it page-faults less than a fresh numpy array."""
    return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype).numpy()


def pad_to(inputs: Inputs, seq_len: int) -> Inputs:
    """Right-pad to a student's fixed length with id 0 / zero rows (padding, masked by length)."""
    extra = seq_len - inputs.seq_len
    if extra <= 0:
        return inputs
    if inputs.ids is not None:
        return Inputs(inputs.lengths, ids=torch.nn.functional.pad(inputs.ids, (0, extra)))
    return Inputs(inputs.lengths, soft=torch.nn.functional.pad(inputs.soft, (0, 0, 0, extra)))


def _pad_positions(t: Targets, seq_len: int) -> Targets:
    def pad(x, dim_from_end):
        if x is None:
            return None
        extra = seq_len - x.shape[1]
        widths = [0, 0] * (dim_from_end) + [0, extra]
        return torch.nn.functional.pad(x, widths)

    return Targets(pad(t.logits, 1), pad(t.values, 1), pad(t.indices, 1), pad(t.logsumexp, 0))


def loader(dataset, workers: int = 0, ahead: int = 1, warm_ahead: int = 8, hint_ahead: int = 24):
    """Batches in order. With workers, a DataLoader (worker processes); without, an idle-priority
    helper thread (kdcore.system.threads) builds the next `ahead` batches while the caller trains on this
    one, and an I/O thread reads the store blocks of the batch `warm_ahead` steps on and asks the
    OS to fetch those of the batch `hint_ahead` steps on: disk reads, copies and decoding overlap the
    student's steps, and built batches (a seed-mode noise batch can be hundreds of MB) stay few.
    Items are pure in k: the order of work changes nothing. The DataLoader gets its own generator:
    by default each new iterator draws its base seed from torch's global RNG, which would make a
    resumed run's RNG stream (dropout, the sld-cosine shuffle) differ from an uninterrupted one's."""
    if workers == 0:
        return _read_ahead(dataset, ahead, warm_ahead, max(hint_ahead, warm_ahead))
    return _worker_errors_plain(torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, persistent_workers=False,
        generator=torch.Generator().manual_seed(0)))


def _worker_errors_plain(batches):
    """A KDError from a worker (a damaged store block) arrives with the worker's traceback in its
    message: re-raise it with its own message only, as it would read in-process."""
    try:
        yield from batches
    except KDError as e:
        text, marker = str(e), f"{type(e).__module__}.{type(e).__qualname__}: "
        if "Original Traceback" not in text or marker not in text:
            raise
        raise type(e)(text.split(marker, 1)[1].rstrip()) from None


def _by_batch(dataset, method: str) -> Callable[[int], None]:
    """dataset.method(k) (warm, hint) where the dataset has it, through Subsets; else nothing."""
    if isinstance(dataset, torch.utils.data.Subset):
        inner = _by_batch(dataset.dataset, method)
        return lambda k: inner(dataset.indices[k]) if k < len(dataset.indices) else None
    return getattr(dataset, method, lambda k: None)


def _read_ahead(dataset, ahead: int, warm_ahead: int, hint_ahead: int):
    def wait(item):  # for the first item, not its result: its error reaches the caller through it
        if item is not None:
            futures.wait([item])

    n, warm, hint = len(dataset), _by_batch(dataset, "warm"), _by_batch(dataset, "hint")
    # Two threads. The helper builds batches at idle priority. The I/O thread, at normal priority,
    # reads blocks ahead: it mostly waits for the disk, and would otherwise only get to ask for
    # them once the student waits for a batch (both cores are the student's while it steps).
    with background("read") as helper, background("io", idle=False) as io:
        first = range(min(warm_ahead, n))
        for k in first:  # the disk fetches the first blocks together, not one read after another
            io.submit(hint, k)
        pending = deque(helper.submit(dataset.__getitem__, k) for k in range(min(ahead, n)))
        # the first batch reads its own rows, before the whole blocks of its group queue on the disk
        io.submit(wait, pending[0] if pending else None)
        for k in first:
            io.submit(warm, k)
        for k in range(warm_ahead, min(hint_ahead, n)):
            io.submit(hint, k)
        for k in range(n):
            item = pending.popleft().result()
            if k + ahead < n:
                pending.append(helper.submit(dataset.__getitem__, k + ahead))
            if k + warm_ahead < n:
                io.submit(warm, k + warm_ahead)
            if k + hint_ahead < n:
                io.submit(hint, k + hint_ahead)
            yield item
