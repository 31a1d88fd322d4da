"""Generation benchmark: the full pipeline (sampling + teacher forward + store write) against the bare
batched teacher forward on the same inputs, and the store's bytes per sample against the 2023 layout.

    python bench/generation.py                       # SmolLM2-135M on CPU, uniform[-10,10] noise
    python bench/generation.py --sampler teacher-generated   # the teacher writes the sequences
    python bench/generation.py --sampler mix --positions all --topk 64   # as the study's datasets store it
    python bench/generation.py --device cuda --samples 2048 --batch-size 64 --rounds 6

The two alternate in --rounds short rounds (which goes first alternates too), so both see the same
machine load; the ratio is the median of the per-round ratios, with its quartiles, because a shared
machine's speed drifts by more than the effect measured. Target: pipeline >= 0.95x of the bare forward
for samplers of noise; for teacher-generated (and a mix with it: 70% teacher-generated, 30% random
ids, as the recipe study) the pipeline decodes the sequences with the KV cache and stores the decode's
logits, against one bare forward over the same number of id sequences and positions: >= 0.7x. The
decode needs the head's logits at every position to draw the next token, so with `--positions last`
it does ~1.27x the bare forward's multiply-adds on SmolLM2 (the 28M-parameter head at 16 positions
instead of 1, beside the 106M of the blocks); `--positions all` compares like with like.
`--burn-in N` (teacher-generated and mix): the teacher writes N more tokens per sample, which are
dropped, and forwards the stored window again: no target, the figure says what the recipe costs.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

from kdcore.stages.builder import Builder  # noqa: E402
from kdcore.system.tuning import tune_process  # noqa: E402
from kdcore.plugin.data import Inputs  # noqa: E402
from kdcore.stages.generate import generate  # noqa: E402
from kdcore.config.load import parse_spec  # noqa: E402
from kdcore.store.store import Store  # noqa: E402

SAMPLERS = {
    "uniform": {"name": "uniform", "low": -10.0, "high": 10.0},
    "random-ids": {"name": "random-ids"},
    "zipf-ids": {"name": "zipf-ids"},
    "teacher-unigram-ids": {"name": "teacher-unigram-ids", "temperature": 1.5, "low": 17},  # as the study's
    "teacher-generated": {"name": "teacher-generated"},
    "mix": {"name": "mix", "weights": [0.7, 0.3], "samplers": [{"name": "teacher-generated"}, {"name": "random-ids"}]},
}


def main() -> None:
    tune_process()  # as the kd command does, so the figures are those `kd run` sees
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="smollm2", help="smollm2 or tiny-llama")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=256,
                    help="per round; each pipeline run also pays ~0.15 s once (the first batch's draw, "
                         "creating the store, the last write), which short rounds overweight")
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sampler", default="uniform", choices=sorted(SAMPLERS),
                    help="uniform (soft rows), random-ids, zipf-ids, teacher-unigram-ids (T = 1.5, as the study's), "
                         "teacher-generated, or mix (of teacher-generated and random ids)")
    ap.add_argument("--group", type=int, help="teacher-generated: samples decoded together (default: the sampler's)")
    ap.add_argument("--burn-in", type=int, default=0, help="teacher-generated: tokens written and dropped before each window")
    ap.add_argument("--positions", default="last", choices=["last", "all"], help="target positions (both sides)")
    ap.add_argument("--topk", type=int, default=0,
                    help="store top-k logits + logsumexp (the study's datasets: --positions all --topk 64); 0: dense")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    sampler = copy.deepcopy(SAMPLERS[args.sampler])
    for ref in [sampler, *sampler.get("samplers", [])]:
        if ref["name"] == "teacher-generated":
            ref.update({"group": args.group} if args.group else {}, **({"burn_in": args.burn_in} if args.burn_in else {}))
    target = 0.7 if args.sampler in ("teacher-generated", "mix") else 0.95
    target = "none: the burn-in's extra tokens and forward are the recipe's cost" if args.burn_in else f">= {target}x"
    data = {
        "name": "bench", "store_dir": str(tmp / "store"), "runs_dir": str(tmp / "runs"),
        "teacher": {"name": args.teacher, "device": args.device},
        "datasets": {"bench": {"samples": args.samples, "max_seq_len": args.seq_len, "batch_size": args.batch_size,
                               "block_size": 64, "positions": args.positions, "sampler": sampler,
                               **({"logits": "topk", "topk": args.topk} if args.topk else {})}},
        "student": {"name": "llama"},
        "phases": [{"dataset": "bench", "losses": [{"name": "kl"}]}],
    }
    spec = parse_spec(copy.deepcopy(data), source="bench")
    builder = Builder(spec)
    teacher, smp = builder.teacher, builder.sampler("bench")
    print(f"machine: {describe(args.device)}")
    print(f"teacher {args.teacher} on {args.device}, {args.samples} samples x {args.seq_len} tokens per round, "
          f"batch {args.batch_size}, positions {args.positions}, {f'top-{args.topk}' if args.topk else 'dense'} logits, sampler {json.dumps(sampler)}")

    batches = [list(range(i, min(i + args.batch_size, args.samples))) for i in range(0, args.samples, args.batch_size)]
    # made once, outside the timing; the bare forward gets the inputs alone, not the decode's logits
    inputs = [Inputs(x.lengths, x.ids, x.soft) for x in (smp.sample(b, 0) for b in batches)]
    del smp

    def bare() -> float:
        start = time.perf_counter()
        for x in inputs:
            teacher.logits(x.to(teacher.device), args.positions)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return args.samples / (time.perf_counter() - start)

    def pipeline() -> float:
        shutil.rmtree(tmp / "store", ignore_errors=True)
        start = time.perf_counter()
        generate(spec, "bench", builder)
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
          f"(quartiles {q1:.3f} .. {q3:.3f}; target {target})")

    store = Store.open(tmp / "store" / "bench")
    disk = store.bytes_on_disk() / args.samples
    orig = store.layout.original_bytes_per_sample()
    print(f"store bytes per sample    : {disk:10.0f} on disk ({store.layout.bytes_per_sample()} raw)")
    print(f"2023 layout bytes/sample  : {orig:10.0f}  (float16 inputs S x V + float32 logits V): {orig / disk:.0f}x larger")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
