"""Generation benchmark: the full pipeline (sampling + teacher forward + store write) against the bare
batched teacher forward on the same inputs, and the store's bytes per sample against the 2023 layout.

    python bench/generation.py                       # SmolLM2-135M on CPU, uniform[-10,10] noise
    python bench/generation.py --device cuda --samples 2048 --batch-size 64 --rounds 6

The two alternate in --rounds short rounds (which goes first alternates too), so both see the same
machine load; the ratio is the median of the per-round ratios, with its quartiles, because a shared
machine's speed drifts by more than the effect measured. Target: pipeline >= 0.95x of the bare forward.
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

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

from kdcore.build import Builder  # noqa: E402
from kdcore.generate import generate  # noqa: E402
from kdcore.spec import parse_spec  # noqa: E402
from kdcore.store import Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="smollm2", help="smollm2 or tiny-llama")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=256,
                    help="per round; each pipeline run also pays ~0.15 s once (the first batch's draw, "
                         "creating the store, the last write), which short rounds overweight")
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sampler", default="uniform", help="uniform (soft rows) or random-ids")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    sampler = {"name": "uniform", "low": -10.0, "high": 10.0} if args.sampler == "uniform" else {"name": args.sampler}
    data = {
        "name": "bench", "store_dir": str(tmp / "store"), "runs_dir": str(tmp / "runs"),
        "teacher": {"name": args.teacher, "device": args.device},
        "datasets": {"bench": {"samples": args.samples, "max_seq_len": args.seq_len, "batch_size": args.batch_size,
                               "block_size": 64, "sampler": sampler}},
        "student": {"name": "llama"},
        "phases": [{"dataset": "bench", "losses": [{"name": "kl"}]}],
    }
    spec = parse_spec(copy.deepcopy(data), source="bench")
    builder = Builder(spec)
    teacher, smp = builder.teacher, builder.sampler("bench")
    print(f"machine: {describe(args.device)}")
    print(f"teacher {args.teacher} on {args.device}, {args.samples} samples x {args.seq_len} tokens per round, "
          f"batch {args.batch_size}, sampler {args.sampler}")

    batches = [list(range(i, min(i + args.batch_size, args.samples))) for i in range(0, args.samples, args.batch_size)]
    inputs = [smp.sample(b, 0) for b in batches]  # made once, outside the timing

    def bare() -> float:
        start = time.perf_counter()
        for x in inputs:
            teacher.logits(x.to(teacher.device), "last")
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return args.samples / (time.perf_counter() - start)

    def pipeline() -> float:
        shutil.rmtree(tmp / "store", ignore_errors=True)
        start = time.perf_counter()
        generate(spec, "bench", builder, progress=False)
        return args.samples / (time.perf_counter() - start)

    bare()  # warm-up (allocator, kernels)
    b_rates, p_rates = [], []
    for r in range(args.rounds):
        first, second = (bare, pipeline) if r % 2 == 0 else (pipeline, bare)
        one, two = first(), second()
        b_rates.append(one if first is bare else two)
        p_rates.append(two if first is bare else one)
    ratios = [p / b for p, b in zip(p_rates, b_rates)]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    show = lambda rates: ", ".join(f"{r:.1f}" for r in rates)  # noqa: E731
    print(f"bare batched forward      : {statistics.median(b_rates):8.2f} samples/s  (rounds: {show(b_rates)})")
    print(f"full pipeline (sample+fwd+write): {statistics.median(p_rates):8.2f} samples/s  (rounds: {show(p_rates)})")
    print(f"pipeline / bare           : {statistics.median(ratios):8.3f}x  median of {args.rounds} paired rounds "
          f"(quartiles {q1:.3f} .. {q3:.3f}; target >= 0.95x)")

    store = Store.open(tmp / "store" / "bench")
    disk = store.bytes_on_disk() / args.samples
    orig = store.layout.original_bytes_per_sample()
    print(f"store bytes per sample    : {disk:10.0f} on disk ({store.layout.bytes_per_sample()} raw)")
    print(f"2023 layout bytes/sample  : {orig:10.0f}  (float16 inputs S x V + float32 logits V): {orig / disk:.0f}x larger")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
