"""Evaluation: the reverted student against the teacher on real text it never trained on.

Both read the same windows of teacher-tokenised text. Reported next to two baselines: an untrained
student of the same architecture, and a unigram predictor (token frequencies of the evaluation text
itself: an optimistic baseline, since it peeks at the text).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from kdcore.build import Builder
from kdcore.components import Inputs
from kdcore.errors import KDError, SpecError
from kdcore.spec import Spec, spec_hash
from kdcore.texts import read_text

METRICS = ("top1_agreement", "top5_overlap", "kl_teacher_student", "perplexity", "next_token_accuracy", "distinct_predicted")


class Accumulator:
    """Streams metrics of one predictor against the teacher over batches of positions."""

    def __init__(self):
        self.n = 0
        self.sums = {"top1_agreement": 0.0, "top5_overlap": 0.0, "kl_teacher_student": 0.0, "nll": 0.0, "next_token_accuracy": 0.0}
        self.predicted: set[int] = set()
        self.by_position: list[list[float]] = []

    def add(self, logits: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, position: torch.Tensor | None = None):
        """logits, teacher: (n, V) float; target: (n,) next tokens; position: (n,) index in window."""
        logq = torch.log_softmax(logits.float(), -1)
        logp = torch.log_softmax(teacher.float(), -1)
        s_top, t_top = logq.argmax(-1), logp.argmax(-1)
        agree = (s_top == t_top).float()
        s5, t5 = logq.topk(5, -1).indices, logp.topk(5, -1).indices
        overlap = (s5[:, :, None] == t5[:, None, :]).any(-1).float().mean(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        nll = -logq.gather(1, target[:, None]).squeeze(1)
        self.sums["top1_agreement"] += agree.sum().item()
        self.sums["top5_overlap"] += overlap.sum().item()
        self.sums["kl_teacher_student"] += kl.sum().item()
        self.sums["nll"] += nll.sum().item()
        self.sums["next_token_accuracy"] += (s_top == target).float().sum().item()
        self.predicted.update(s_top.tolist())
        self.n += len(target)
        if position is not None:
            for pos, a in zip(position.tolist(), agree.tolist()):
                while len(self.by_position) <= pos:
                    self.by_position.append([])
                self.by_position[pos].append(a)

    def result(self) -> dict:
        n = max(1, self.n)
        out = {k: v / n for k, v in self.sums.items() if k != "nll"}
        out["perplexity"] = math.exp(self.sums["nll"] / n)
        out["distinct_predicted"] = len(self.predicted)
        out["positions_scored"] = self.n
        if self.by_position:
            out["agreement_by_position"] = [sum(v) / len(v) for v in self.by_position]
        return out


def text_windows(tokens: list[int], seq_len: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` evenly spaced windows (count, S) and the token after each position (count, S)."""
    if len(tokens) < seq_len + 2:
        raise KDError(f"the evaluation text has {len(tokens)} tokens, fewer than a window of {seq_len} + 1")
    last = len(tokens) - seq_len - 1
    starts = torch.linspace(0, last, steps=min(count, last + 1)).round().long().unique()
    t = torch.tensor(tokens)
    windows = torch.stack([t[s : s + seq_len] for s in starts])
    nexts = torch.stack([t[s + 1 : s + seq_len + 1] for s in starts])
    return windows, nexts


class UnigramPredictor(torch.nn.Module):
    """Always the same distribution: token frequencies of the evaluation text (add-one smoothed)."""

    def __init__(self, tokens: list[int], vocab_size: int):
        super().__init__()
        counts = torch.ones(vocab_size)
        counts.index_add_(0, torch.tensor(tokens), torch.ones(len(tokens)))
        self.register_buffer("log_probs", (counts / counts.sum()).log())

    def forward(self, ids, lengths, positions="last"):
        shape = (ids.shape[0], self.log_probs.numel()) if positions == "last" else (*ids.shape, self.log_probs.numel())
        return self.log_probs.expand(shape)


def greedy_student(model, ids: list[int], seq_len: int, steps: int) -> list[int]:
    out = list(ids)
    for _ in range(steps):
        window = out[-seq_len:]
        x = torch.zeros(1, seq_len, dtype=torch.long)
        x[0, : len(window)] = torch.tensor(window)
        logits = model(x, torch.tensor([len(window)]), positions="last")
        out.append(int(logits[0].argmax()))
    return out[len(ids):]


def greedy_teacher(teacher, ids: list[int], steps: int) -> list[int]:
    if steps == 0:
        return []
    full = teacher.generate(torch.tensor([ids]), steps, lambda logits, step: logits.argmax(-1))
    return full[0, len(ids):].tolist()


def evaluate(spec: Spec, builder: Builder | None = None, student=None, untrained=None, seq_len: int | None = None) -> dict:
    from kd_plugins.students import load_reverted

    from kdcore.train import Trainer

    builder = builder or Builder(spec)
    trainer = Trainer(spec, builder, progress=False)
    if student is None:
        if not trainer.is_complete():
            raise KDError(f"no trained student for {spec.source} in {spec.run_path}; run `kd train {spec.source}` first")
        student = load_reverted(spec.run_path / "reverted")
    seq_len = seq_len or trainer.seq_len
    builder.check_eval()
    fresh = trainer.build_student()
    if untrained is None:
        builder.init_student(fresh)  # the baseline is the student as training starts (e.g. subcloned)
        untrained = fresh.revert()
    teacher = builder.teacher
    tok = teacher.tokenizer()
    ev = spec.eval
    supported = tuple(getattr(fresh, "positions", ("last",)))
    positions = ev.positions or spec.datasets[spec.phases[-1].dataset].positions
    if positions not in supported:
        if ev.positions:
            raise SpecError(spec.source, [("eval.positions", f"student '{spec.student.name}' predicts only "
                                           f"{', '.join(supported)}")])
        positions = "last"  # what a fixed-length student predicts; the report says which was used

    tokens = tok.encode(read_text(ev.text, spec.base_dir))
    windows, nexts = text_windows(tokens, seq_len, ev.windows)
    predictors = {"student": student.eval(), "untrained": untrained.eval(), "unigram": UnigramPredictor(tokens, teacher.vocab_size)}
    acc = {name: Accumulator() for name in predictors}
    teacher_acc = Accumulator()
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(windows), ev.batch_size):
            ids, nxt = windows[lo : lo + ev.batch_size], nexts[lo : lo + ev.batch_size]
            lengths = torch.full((len(ids),), seq_len, dtype=torch.long)
            t_logits = teacher.logits(Inputs(lengths, ids=ids), positions).float().cpu()
            if positions == "all":
                V = t_logits.shape[-1]
                flat_t, target = t_logits.reshape(-1, V), nxt.reshape(-1)
                pos = torch.arange(seq_len).repeat(len(ids))
            else:
                flat_t, target, pos = t_logits, nxt[:, -1], None
            teacher_acc.add(flat_t, flat_t, target, pos)
            for name, model in predictors.items():
                logits = model(ids, lengths, positions=positions).float()
                acc[name].add(logits.reshape(flat_t.shape), flat_t, target, pos)

    samples = []
    for prompt in ev.prompts:
        ids = tok.chat(prompt) if ev.chat_template else tok.encode(prompt)
        samples.append({
            "prompt": prompt,
            "teacher": tok.decode(greedy_teacher(teacher, ids, ev.max_new_tokens)),
            "student": tok.decode(greedy_student(student, ids, seq_len, ev.max_new_tokens)),
        })
    report = {
        "experiment": spec.name,
        "text": ev.text,
        "positions": positions,
        "seq_len": seq_len,
        "windows": len(windows),
        "teacher": {"perplexity": teacher_acc.result()["perplexity"],
                    "distinct_predicted": teacher_acc.result()["distinct_predicted"],
                    "next_token_accuracy": teacher_acc.result()["next_token_accuracy"]},
        "untrained_init": getattr(fresh, "init_source", "random"),
        "results": {name: a.result() for name, a in acc.items()},
        "samples": samples,
        "seconds": round(time.perf_counter() - start, 2),
        "identity_hash": eval_identity(spec, trainer),
    }
    write_report(spec, report)
    from kdcore.metrics import MetricsLog

    MetricsLog(spec.run_path / "metrics.jsonl", spec.registry).write("eval", {
        "text": ev.text, "positions": positions, "windows": len(windows),
        **{f"{name}_{m}": res[m] for name, res in report["results"].items() for m in METRICS},
    })
    return report


def eval_identity(spec: Spec, trainer) -> str:
    return spec_hash({"train": trainer.identity_hash, "eval": spec.eval.model_dump(mode="json")})


def report_dir(spec: Spec) -> Path:
    return spec.run_path / "eval"


def write_report(spec: Spec, report: dict) -> None:
    from kdcore.plots import plot_bars, plot_by_position

    out = report_dir(spec)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"label": name, **res} for name, res in report["results"].items()]
    plot_bars(rows, ["top1_agreement", "top5_overlap", "kl_teacher_student", "distinct_predicted"],
              out / "metrics.png", f"{spec.name}: vs teacher on {report['text']}")
    if any("agreement_by_position" in r for r in rows):
        plot_by_position({r["label"]: r["agreement_by_position"] for r in rows if "agreement_by_position" in r},
                         out / "agreement_by_position.png", f"{spec.name}: agreement by position")
    curves = spec.run_path / "training.png"
    if curves.exists():  # the report folder holds every figure of the run
        shutil.copyfile(curves, out / "training.png")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    t = report["teacher"]
    lines = [
        f"# Evaluation: {report['experiment']}",
        "",
        f"Text `{report['text']}`, {report['windows']} windows of {report['seq_len']} tokens, "
        f"positions: {report['positions']}. Teacher perplexity {t['perplexity']:.2f}, "
        f"distinct predicted tokens {t['distinct_predicted']}.",
        "",
        "| predictor | top-1 agreement | top-5 overlap | KL(teacher‖student) | perplexity | next-token acc. | distinct predicted |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['top1_agreement']:.3f} | {r['top5_overlap']:.3f} | {r['kl_teacher_student']:.3f} | "
                     f"{r['perplexity']:.1f} | {r['next_token_accuracy']:.3f} | {r['distinct_predicted']} |")
    lines += ["", "## Greedy continuations", ""]
    for s in report["samples"]:
        lines += [f"**{s['prompt']}**", "", f"- teacher: {s['teacher']!r}", f"- student: {s['student']!r}", ""]
    return "\n".join(lines)


def print_summary(report: dict, console) -> None:
    from rich.table import Table

    t = report["teacher"]
    table = Table(title=f"{report['experiment']}: student vs teacher on {report['text']} "
                        f"({report['windows']} windows, positions {report['positions']})")
    for col in ("predictor", "top-1 agree", "top-5 overlap", "KL(t‖s)", "ppl", "distinct"):
        table.add_column(col, justify="right" if col != "predictor" else "left")
    table.add_row("teacher", "1.000", "1.000", "0.000", f"{t['perplexity']:.1f}", str(t["distinct_predicted"]))
    for name, r in report["results"].items():
        table.add_row(name, f"{r['top1_agreement']:.3f}", f"{r['top5_overlap']:.3f}", f"{r['kl_teacher_student']:.3f}",
                      f"{r['perplexity']:.1f}", str(r["distinct_predicted"]))
    console.print(table)
    for s in report["samples"]:
        console.print(f"[bold]{s['prompt']}[/bold]\n  teacher: {s['teacher']!r}\n  student: {s['student']!r}", highlight=False)
