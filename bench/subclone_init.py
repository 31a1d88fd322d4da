"""How close an untrained subclone of SmolLM2 starts to the teacher, for the choices docs/DESIGN.md names.

Rows: which residual dims are kept (weight-norm ranking, the first d, d at random), how the RMSNorm
weights are rescaled (x1, x sqrt(D/d), x sqrt(f*D/d) with f the kept share of the embedding's energy),
at three student shapes, and a random-init student of the same shape as the baseline. Scored on
every position of windows of random token ids (what a data-free run can see) and of the evaluation
text: KL(teacher || student) and top-1 agreement.

    python bench/subclone_init.py [--windows 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

SHAPES = [  # hidden, layers, heads, KV heads, intermediate
    (192, 2, 3, 3, 512),
    (192, 30, 3, 3, 512),
    (384, 30, 6, 3, 1024),
]


def windows(tokens: list[int], count: int, length: int) -> torch.Tensor:
    starts = torch.linspace(0, len(tokens) - length - 1, count).long()
    t = torch.tensor(tokens)
    return torch.stack([t[s : s + length] for s in starts])


def score(student, teacher_logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    from kdcore.plugin.data import Inputs

    lengths = torch.full((len(ids),), ids.shape[1])
    with torch.no_grad():
        logq = torch.log_softmax(student.eval()(Inputs(lengths, ids=ids), positions="all"), -1)
    logp = torch.log_softmax(teacher_logits, -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
    return kl, (logp.argmax(-1) == logq.argmax(-1)).float().mean().item()


def variants(model, config):
    """(label, Selection) for each choice of kept dims and norm rescale."""
    from kd_plugins import subclone as sc

    D, d = model.config.hidden_size, config.hidden_size
    energy = model.model.embed_tokens.weight.float().pow(2).sum(0)
    chosen = {
        "weight norms": sc._top(sc.residual_scores(model), d),
        "first d": torch.arange(d),
        "random d": torch.randperm(D, generator=torch.Generator().manual_seed(0))[:d].sort().values,
    }
    for how, dims in chosen.items():
        base = sc.select(model, config)
        blocks = [model.model.layers[b] for b in base.blocks]
        group = config.num_attention_heads // config.num_key_value_heads
        picked = [sc.select_heads(b, dims, model.config, config.num_key_value_heads, group) for b in blocks]
        sel = dataclasses.replace(base, dims=dims, kv_heads=[k for k, _ in picked], heads=[h for _, h in picked],
                                  neurons=[sc.select_neurons(b, dims, config.intermediate_size) for b in blocks])
        f = (energy[dims].sum() / energy.sum()).item()
        for scale_name, scale in (("x1", 1.0), ("x sqrt(D/d)", math.sqrt(D / d)), ("x sqrt(fD/d)", math.sqrt(f * D / d))):
            yield f"{how}, norms {scale_name}", dataclasses.replace(sel, norm_scale=scale)


def main() -> None:
    from kd_plugins import subclone as sc
    from kd_plugins.students import LlamaParams, LlamaStudent
    from kd_plugins.teachers import SmolLM2Params, smollm2
    from kdcore.api import BuildContext, Inputs
    from kdcore.texts import read_text

    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--length", type=int, default=16)
    args = parser.parse_args()
    print(describe())
    teacher = smollm2(SmolLM2Params())
    model, V = teacher.model, teacher.vocab_size
    texts = {
        "random ids": torch.randint(0, V, (args.windows, args.length), generator=torch.Generator().manual_seed(0)),
        "eval text": windows(teacher.tokenizer().encode(read_text("builtin:eval.txt", Path("."))), args.windows, args.length),
    }
    lengths = torch.full((args.windows,), args.length)
    targets = {k: teacher.logits(Inputs(lengths, ids=ids), positions="all") for k, ids in texts.items()}
    ctx = BuildContext(vocab_size=V, max_seq_len=args.length)
    print(f"{'student':<22} {'init':<34} " + " ".join(f"{k + ' KL':>14} {'top-1':>6}" for k in texts))
    for hidden, layers, heads, kv_heads, inter in SHAPES:
        torch.manual_seed(0)
        params = LlamaParams(hidden_size=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                             intermediate_size=inter, rope_theta=100000.0, rms_norm_eps=1e-5)
        student = LlamaStudent(params, ctx)
        assert not sc.shape_problems(student.body.model.config, model.config)
        shape = f"{hidden} wide, {layers} blocks"
        rows = [("random init", None)] + list(variants(model, student.body.model.config))
        for label, sel in rows:
            start = time.perf_counter()
            if sel is not None:
                sc.copy_into(student, model, sel)
            cells = [score(student, targets[k], ids) for k, ids in texts.items()]
            print(f"{shape:<22} {label:<34} " + " ".join(f"{kl:>14.3f} {top1:>6.3f}" for kl, top1 in cells)
                  + f"   ({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
