"""Evaluation: the shipped student against the teacher on real text it never trained on.

What is measured is what a user gets: the reverted student loaded back from `runs/<name>/reverted`
by `kdcore.artifact.load_student`. Student and teacher read the same windows of teacher-tokenised
text, on `eval.text` and each of `eval.extra_texts`. Reported next to two baselines: the student
before training (random, or its teacher-derived initial weights) and a unigram predictor (token
frequencies of the evaluation text itself: an optimistic baseline, since it peeks at the text).
"""

from __future__ import annotations

import json
import math
import shutil
import time

import torch

from kdcore.build import Builder
from kdcore.components import Inputs
from kdcore.errors import KDError, SpecError
from kdcore.report import markdown_table, rich_table, teacher_row, with_derived_columns
from kdcore.runfolder import RunFolder, write_atomic
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

    positions = ("last", "all")

    def __init__(self, tokens: list[int], vocab_size: int):
        super().__init__()
        counts = torch.ones(vocab_size)
        counts.index_add_(0, torch.tensor(tokens), torch.ones(len(tokens)))
        self.register_buffer("log_probs", (counts / counts.sum()).log())

    def forward(self, ids, lengths, positions="last"):
        shape = (ids.shape[0], self.log_probs.numel()) if positions == "last" else (*ids.shape, self.log_probs.numel())
        return self.log_probs.expand(shape)


def greedy_student(model, ids: list[int], seq_len: int, steps: int) -> list[int]:
    """The student's greedy continuation: its own `generate` (a causal LM's KV cache) where it has one,
    else re-reading the last `seq_len` tokens (a fixed-length student's window) for every new token."""
    if hasattr(model, "generate"):
        return model.generate(ids, steps)
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


def eval_identity(spec: Spec) -> str:
    """What a report depends on: the trained student, the evaluation settings and the texts' content."""
    from kdcore.texts import text_hash

    texts = {ref: text_hash(ref, spec.base_dir, "eval.text") for ref in spec.eval.texts}
    return spec_hash({"train": RunFolder(spec).identity_hash, "eval": spec.eval.model_dump(mode="json"), "texts": texts})


def trained_student(spec: Spec, run: RunFolder):
    """The shipped student, or an error that says what is missing: the training, or a store it
    depends on (the student itself is kept)."""
    from kdcore.artifact import load_student

    record = run.trained()
    if record is None:
        raise KDError(f"no trained student for {spec.source} in {spec.run_path}; run `kd train {spec.source}` first")
    if not run.is_complete():
        gone = [k for k, v in run.identity["store_teachers"].items() if v is None]
        if gone:
            raise KDError(f"{spec.run_path} holds a trained student, but the store of datasets.{gone[0]} it depends on "
                          f"({spec.store_path(gone[0])}) is missing or unreadable; regenerate it with "
                          f"`kd generate {spec.source}` (the student is kept)")
        raise KDError(f"the student in {spec.run_path} was trained from a different spec or stores "
                      f"({run.teacher_changes(record)}); run `kd train {spec.source}`")
    return load_student(run.reverted)


def fresh_student(spec: Spec, builder: Builder, seq_len: int):
    """The student before any training (as `kd train` starts it: random, or subcloned), reverted, and
    where its weights come from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.phases[0].seed)
        student = builder.student(seq_len)
    builder.init_student(student)
    return student.revert().eval(), getattr(student, "init_source", "random")


def score_text(ref: str, spec: Spec, teacher, predictors: dict, seq_len: int, positions: str) -> dict:
    """Every predictor against the teacher on windows of one text."""
    ev = spec.eval
    tokens = teacher.tokenizer().encode(read_text(ref, spec.base_dir))
    windows, nexts = text_windows(tokens, seq_len, ev.windows)
    predictors = {**predictors, "unigram": UnigramPredictor(tokens, teacher.vocab_size)}
    acc = {name: Accumulator() for name in predictors}
    teacher_acc = Accumulator()
    with torch.inference_mode():
        for lo in range(0, len(windows), ev.batch_size):
            ids, nxt = windows[lo : lo + ev.batch_size], nexts[lo : lo + ev.batch_size]
            lengths = torch.full((len(ids),), seq_len, dtype=torch.long)
            t_logits = teacher.logits(Inputs(lengths, ids=ids), positions).float().cpu()
            if positions == "all":
                flat_t, target = t_logits.reshape(-1, t_logits.shape[-1]), nxt.reshape(-1)
                pos = torch.arange(seq_len).repeat(len(ids))
            else:
                flat_t, target, pos = t_logits, nxt[:, -1], None
            teacher_acc.add(flat_t, flat_t, target, pos)
            for name, model in predictors.items():
                logits = model(ids, lengths, positions=positions).float()
                acc[name].add(logits.reshape(flat_t.shape), flat_t, target, pos)
    t = teacher_acc.result()
    return {"windows": len(windows),
            "teacher": {k: t[k] for k in ("perplexity", "distinct_predicted", "next_token_accuracy")},
            "results": {name: a.result() for name, a in acc.items()}}


def evaluate(spec: Spec, builder: Builder | None = None) -> dict:
    run = RunFolder(spec)
    with run.lock():  # one writer per run folder: the report and metrics
        return _evaluate(spec, builder or Builder(spec), run)


def _evaluate(spec: Spec, builder: Builder, run: RunFolder) -> dict:
    from kdcore.train import student_seq_len

    student = trained_student(spec, run)
    builder.check_eval()
    seq_len = student_seq_len(spec)
    untrained, untrained_init = fresh_student(spec, builder, seq_len)
    teacher = builder.teacher
    ev = spec.eval
    positions = ev.positions or spec.datasets[spec.phases[-1].dataset].positions
    if positions not in student.positions:
        if ev.positions:
            raise SpecError(spec.source, [("eval.positions", f"student '{spec.student.name}' predicts only "
                                           f"{', '.join(student.positions)}")])
        positions = "last"  # what a fixed-length student predicts; the report says which was used

    start = time.perf_counter()
    predictors = {"student": student, "untrained": untrained}
    texts = {ref: score_text(ref, spec, teacher, predictors, seq_len, positions) for ref in ev.texts}
    main = texts[ev.text]
    report = {
        "experiment": spec.name, "recipe": spec_recipe(spec), "budget": training_budget(spec),
        "text": ev.text, "positions": positions, "seq_len": seq_len,
        "windows": main["windows"], "teacher": main["teacher"], "results": main["results"],
        "texts": texts, "untrained_init": untrained_init,
        "samples": continuations(spec, teacher, student, seq_len),
        "seconds": round(time.perf_counter() - start, 2),
        "identity_hash": eval_identity(spec),
    }
    write_report(spec, report)
    from kdcore.metrics import MetricsLog

    MetricsLog(run.metrics, spec.registry).write("eval", {
        "text": ev.text, "positions": positions, "windows": main["windows"],
        **{f"{name}_{m}": res[m] for name, res in main["results"].items() for m in METRICS},
    })
    return report


def continuations(spec: Spec, teacher, student, seq_len: int) -> list[dict]:
    """Greedy continuations of the spec's prompts by teacher and student."""
    ev, tok = spec.eval, teacher.tokenizer()
    out = []
    for prompt in ev.prompts:
        ids = tok.chat(prompt) if ev.chat_template else tok.encode(prompt)
        out.append({"prompt": prompt, "teacher": tok.decode(greedy_teacher(teacher, ids, ev.max_new_tokens)),
                    "student": tok.decode(greedy_student(student, ids, seq_len, ev.max_new_tokens))})
    return out


def spec_recipe(spec: Spec) -> str:
    """The recipe a run measures, for `kd compare`'s lines over budgets (default: the run's name)."""
    return spec.recipe or spec.name


def training_budget(spec: Spec) -> dict:
    """What the student trained on: samples and tokens of the datasets its phases use."""
    used = {p.dataset for p in spec.phases}
    samples = sum(spec.datasets[d].samples for d in used)
    return {"samples": samples, "tokens": sum(spec.datasets[d].samples * spec.datasets[d].max_seq_len for d in used)}


def report_dir(spec: Spec):
    return spec.run_path / "eval"


def result_rows(text_report: dict, teacher: bool = False) -> list[dict]:
    """Rows for the metrics table: each predictor (the teacher first, if asked), with perplexity as a
    ratio to the unigram's on the same text."""
    rows = [teacher_row(text_report["teacher"])] if teacher else []
    rows += [{"label": name, **r} for name, r in text_report["results"].items()]
    return with_derived_columns(rows, text_report["results"]["unigram"]["perplexity"])


def write_report(spec: Spec, report: dict) -> None:
    from kdcore.plots import plot_bars, plot_by_position

    out = report_dir(spec)
    out.mkdir(parents=True, exist_ok=True)
    rows = result_rows(report)
    plot_bars(rows, ["top1_agreement", "top5_overlap", "kl_teacher_student", "distinct_predicted"],
              out / "metrics.png", f"{spec.name}: vs teacher on {report['text']}")
    if any("agreement_by_position" in r for r in rows):
        plot_by_position({r["label"]: r["agreement_by_position"] for r in rows if "agreement_by_position" in r},
                         out / "agreement_by_position.png", f"{spec.name}: agreement by position")
    curves = spec.run_path / "training.png"
    if curves.exists():  # the report folder holds every figure of the run
        shutil.copyfile(curves, out / "training.png")
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    write_atomic(out / "report.md", markdown(report))


def markdown(report: dict) -> str:
    lines = [f"# Evaluation: {report['experiment']}", ""]
    for ref, text in report.get("texts", {report["text"]: report}).items():
        t = text["teacher"]
        lines += [f"Text `{ref}`, {text['windows']} windows of {report['seq_len']} tokens, positions: "
                  f"{report['positions']}. Teacher perplexity {t['perplexity']:.2f}, distinct predicted tokens "
                  f"{t['distinct_predicted']}.", "", markdown_table(result_rows(text), "predictor"), ""]
    lines += ["## Greedy continuations", ""]
    for s in report["samples"]:
        lines += [f"**{s['prompt']}**", "", f"- teacher: {s['teacher']!r}", f"- student: {s['student']!r}", ""]
    return "\n".join(lines)


def print_summary(report: dict, console) -> None:
    for ref, text in report.get("texts", {report["text"]: report}).items():
        title = (f"{report['experiment']}: student vs teacher on {ref} ({text['windows']} windows, "
                 f"positions {report['positions']})")
        console.print(rich_table(result_rows(text, teacher=True), title, "predictor"))
    for s in report["samples"]:
        console.print(f"[bold]{s['prompt']}[/bold]\n  teacher: {s['teacher']!r}\n  student: {s['student']!r}", highlight=False)
