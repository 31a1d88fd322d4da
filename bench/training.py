"""Training-data benchmark: student steps fed from the Zarr store, against the same steps on tensors
already in memory, and against a replica of the 2023 loader (one torch.save file of float16 inputs
and one of float32 targets per 100 samples, each loaded whole) on identical data.

    python bench/training.py                 # tiny teacher with Llama-2's vocabulary (32000), S = 64

Two datasets: random token ids (the store keeps ids; the student takes them through its embedding)
and uniform[-10, 10] noise (the store keeps seeds; the noise is regenerated from (seed, index)).
Each path runs the same student, optimizer, loss (the trainer's `kl` plugin) and batches, one epoch
per run, read cold: the data's pages are evicted from the page cache before each run (the 2023
data did not fit in RAM: 655 GB). Store and in-memory runs alternate in --rounds rounds and their
ratio is the median of the per-round ratios, because a shared machine's speed drifts by more than
the effects measured; the slow 2023 loader runs in every --original-every-th round. One uncounted
run of each of the two fast paths comes first.
Targets: store >= 0.9x of in-memory; store >= 20x of the 2023 loader.

The cost of the store's integrity checks (a CRC-32C per block and per row read alone, against its
commit record) is measured two ways: a third side in every round reads the store with the checks
skipped (paired ratio), and the checksums' own time is summed over the checked runs.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

from kdcore.stages.builder import Builder  # noqa: E402
from kdcore.system.tuning import tune_process  # noqa: E402
from kdcore.plugin.data import Inputs, Targets  # noqa: E402
from kdcore.stages.batches import Batch, StoreBatches, epoch_plan, loader  # noqa: E402
from kdcore.stages.generate import generate  # noqa: E402
from kdcore.config.load import parse_spec  # noqa: E402
import kdcore.store.store  # noqa: E402
from kdcore.store.chunkio import drop_from_page_cache as evict  # noqa: E402


def step(student, optimizer, loss_fn, batch: Batch):
    """One training step as the trainer takes it: to the device (float32 targets), forward, loss, update."""
    batch = batch.to("cpu")
    loss = loss_fn(student(batch.inputs, positions="last"), batch.targets, None)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class _Unchecked:
    """A checksum that equals every record: the store's reads with their checks skipped."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False


CHECKSUM = kdcore.store.store.checksum
checksum_seconds = [0.0]


def timed_checksum(values):
    start = time.thread_time()  # CPU time: what the check costs, whatever else the machine runs
    try:
        return CHECKSUM(values)
    finally:
        checksum_seconds[0] += time.thread_time() - start


def main() -> None:
    tune_process()  # as the kd command does, so the figures are those `kd run` sees
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=3000, help="random-ids dataset (an epoch per run: its start, "
                    "which reads a shuffle group's blocks before the first step, should not dominate)")
    ap.add_argument("--noise-samples", type=int, default=400, help="uniform-noise dataset (2023 files: 4 MB each)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--original-every", type=int, default=3, help="run the (slow) 2023 loader every n-th round")
    ap.add_argument("--only", choices=["ids", "noise"], help="one of the two datasets")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-train-"))
    print(f"machine: {describe()}")
    print(f"{args.samples} (ids) / {args.noise_samples} (noise) samples x {args.seq_len} positions, vocab {args.vocab}, batch {args.batch_size}, "
          f"student crossbaby (word_embed 50, the 2023 default), SGD")
    print("the store's and the 2023 files' pages are evicted from the page cache before each of their runs")

    for kind, sampler, samples in (("random ids", {"name": "random-ids"}, args.samples),
                                   ("uniform noise", {"name": "uniform"}, args.noise_samples)):
        if args.only and not kind.startswith({"ids": "random", "noise": "uniform"}[args.only]):
            continue
        data = {
            "name": "bench", "store_dir": str(tmp / "store"), "runs_dir": str(tmp / "runs"),
            "teacher": {"name": "tiny-llama", "vocab_size": args.vocab, "hidden_size": 64},
            "datasets": {"d": {"samples": samples, "max_seq_len": args.seq_len, "batch_size": 50,
                               "block_size": 100, "sampler": sampler}},
            "student": {"name": "crossbaby", "word_embed": 50},
            "phases": [{"dataset": "d", "batch_size": args.batch_size, "optimizer": "sgd", "lr": 1e-4,
                        "losses": [{"name": "kl"}]}],
        }
        spec = parse_spec(copy.deepcopy(data), source="bench")
        builder = Builder(spec)
        shutil.rmtree(tmp / "store", ignore_errors=True)
        store = generate(spec, "d", builder)
        smp = builder.sampler("d")
        [(_, _, loss_fn)] = builder.losses(0)
        plan = epoch_plan(samples, 100, args.batch_size, 8, seed=0, epoch=0)

        def fresh():
            torch.manual_seed(0)
            student = builder.student(args.seq_len)
            return student, torch.optim.SGD(student.parameters(), lr=1e-4)

        # 1. the store, through the trainer's own data path (checked, or with the checks skipped)
        def from_store(checked: bool = True) -> float:
            kdcore.store.store.checksum = timed_checksum if checked else (lambda values: _Unchecked())
            student, opt = fresh()
            evict(store.path)
            start = time.perf_counter()
            make = (lambda: builder.sampler("d")) if store.layout.produces == "soft" else None
            for batch in loader(StoreBatches(store.path, plan, args.seq_len, make, 0)):
                step(student, opt, loss_fn, batch)
            return samples / (time.perf_counter() - start)

        # the loader alone, no student: its CPU time (all threads) per epoch, which other processes
        # on a shared machine do not change the way they change wall time
        def loader_cpu(checked: bool) -> float:
            kdcore.store.store.checksum = CHECKSUM if checked else (lambda values: _Unchecked())
            evict(store.path)
            make = (lambda: builder.sampler("d")) if store.layout.produces == "soft" else None
            start = time.process_time()
            for _ in loader(StoreBatches(store.path, plan, args.seq_len, make, 0)):
                pass
            return time.process_time() - start

        # 2. the same batches, already in memory as tensors
        mem = [StoreBatches(store.path, plan, args.seq_len, lambda: builder.sampler("d"), 0)[k] for k in range(len(plan))]

        def in_memory() -> float:
            student, opt = fresh()
            start = time.perf_counter()
            for batch in mem:
                step(student, opt, loss_fn, batch)
            return samples / (time.perf_counter() - start)

        # 3. the 2023 layout: per 100 samples, input{i}.pt (100, S, V) float16 + target{i}.pt (100, V) float32
        orig = tmp / "original"
        shutil.rmtree(orig, ignore_errors=True)
        orig.mkdir()
        rows = np.concatenate(plan)
        for f, lo in enumerate(range(0, samples, 100)):
            idx = sorted(rows[lo : lo + 100].tolist())
            sample = smp.sample(idx, 0)
            # the 2023 index data kept ids and made one-hot rows in the loader; its noise data kept float16 rows
            x = sample.ids if sample.ids is not None else sample.soft.half()
            t = np.concatenate([store.read_block(int(b))["logits"] for b in range(store.layout.num_blocks)])[idx]
            torch.save(x, orig / f"input{f}.pt")
            torch.save(torch.from_numpy(t).float(), orig / f"target{f}.pt")

        def original() -> float:
            student, opt = fresh()
            evict(orig)
            start = time.perf_counter()
            for f in range(-(-samples // 100)):
                x = torch.load(orig / f"input{f}.pt")
                t = torch.load(orig / f"target{f}.pt")
                for lo in range(0, len(x), args.batch_size):
                    xb = x[lo : lo + args.batch_size]
                    xb = torch.nn.functional.one_hot(xb, args.vocab).float() if xb.dtype == torch.int64 else xb.float()
                    inputs = Inputs(torch.full((len(xb),), args.seq_len), soft=xb)
                    step(student, opt, loss_fn, Batch(inputs, Targets(logits=t[lo : lo + args.batch_size]), None))
            return samples / (time.perf_counter() - start)

        # store and in-memory alternate (ABBA) in every round; the slow 2023 loader runs in every
        # --original-every-th round, just before the pair
        in_memory(), from_store(), from_store(False)  # warm-up, not counted: first allocations and imports
        rates = {"memory": [], "store": [], "unchecked": [], "original": []}
        cpu = {True: [], False: []}
        checksum_seconds[0], checked_seconds = 0.0, 0.0
        for r in range(args.rounds):
            if r % args.original_every == 0:
                rates["original"].append(original())
            sides = (("memory", in_memory), ("store", from_store), ("unchecked", lambda: from_store(False)))
            for k, run in (sides if r % 2 == 0 else sides[::-1]):
                rates[k].append(run())
                checked_seconds += samples / rates[k][-1] if k == "store" else 0
            for checked in ((True, False) if r % 2 == 0 else (False, True)):
                cpu[checked].append(loader_cpu(checked))
        kdcore.store.store.checksum = CHECKSUM
        med = {k: statistics.median(v) for k, v in rates.items()}
        disk = sum(p.stat().st_size for p in orig.iterdir())
        print(f"\n[{kind}]  (2023 files: {disk / 2**20:.0f} MiB; store: {store.bytes_on_disk() / 2**20:.1f} MiB)")
        for k, label in (("memory", "in-memory tensors"), ("store", "LlamaKD store"),
                         ("unchecked", "store, checks skipped"), ("original", "2023 loader replica")):
            print(f"  {label:22s}: {med[k]:8.1f} samples/s  (runs: {', '.join(f'{r:.1f}' for r in rates[k])})")
        ratios = [s / m for s, m in zip(rates["store"], rates["memory"])]
        print(f"  store / in-memory     : {statistics.median(ratios):8.2f}x  median of {args.rounds} paired rounds "
              f"(range {min(ratios):.2f} .. {max(ratios):.2f}; target >= 0.9x)")
        print(f"  store / 2023 loader   : {med['store'] / med['original']:8.2f}x  ratio of the medians (target >= 20x)")
        checks = [s / u for s, u in zip(rates["store"], rates["unchecked"])]
        print(f"  checked / unchecked   : {statistics.median(checks):8.3f}x  median of {args.rounds} paired rounds "
              f"(range {min(checks):.3f} .. {max(checks):.3f}); checksums took {checksum_seconds[0] / args.rounds * 1e3:.1f} ms "
              f"of CPU per epoch, {100 * checksum_seconds[0] / checked_seconds:.1f}% of the checked runs' wall time")
        cpu_ratio = [c / u for c, u in zip(cpu[True], cpu[False])]
        print(f"  loader alone, CPU     : {statistics.median(cpu[True]) * 1e3:8.0f} ms per epoch checked, "
              f"{statistics.median(cpu[False]) * 1e3:.0f} ms unchecked: {statistics.median(cpu_ratio):.3f}x, median of "
              f"{args.rounds} paired rounds (range {min(cpu_ratio):.3f} .. {max(cpu_ratio):.3f})")
        print(f"  (ceiling: in-memory / 2023 loader = {med['memory'] / med['original']:.2f}x: no loader can beat "
              f"the student's own step)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
