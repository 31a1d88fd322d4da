"""Evaluation: the shipped student against the teacher on real text it never trained on.

What is measured is what a user gets: the reverted student loaded back from `runs/<name>/reverted`
by `kdcore.run.artifact.load_student`. Student and teacher read the same windows of teacher-tokenised
text, on `eval.text` and each of `eval.extra_texts`. Reported next to two baselines: the student
before training (random, or its teacher-derived initial weights) and a unigram predictor (token
frequencies of the evaluation text itself: an optimistic baseline, since it peeks at the text).
A report depends on the trained student, the evaluation settings and the texts' content
(`EvaluateStage.identity`): change any of them and `kd run` evaluates again.
"""

from __future__ import annotations

import time

import torch

from kdcore.config.spec import Spec, spec_hash
from kdcore.eval.baselines import UnigramPredictor
from kdcore.eval.decoding import greedy_student, greedy_teacher
from kdcore.eval.metrics import LOGGED, Accumulator
from kdcore.eval.windows import text_windows
from kdcore.plugin.calls import plugin_code
from kdcore.plugin.data import Inputs
from kdcore.problems import KDError, Problem
from kdcore.report.console import reporter
from kdcore.report.evaluation import draw_figures, markdown, summary
from kdcore.run.artifact import load_student
from kdcore.run.folder import RunFolder
from kdcore.run.metrics_log import MetricsLog
from kdcore.stages import checks
from kdcore.stages.builder import Builder
from kdcore.stages.stage import PlanRow, Status
from kdcore.stages.train import TrainStage
from kdcore.system.files import disk_full
from kdcore.texts import read_text, text_hash


class EvaluateStage:
    """The report of the trained student against the teacher on the evaluation texts."""

    name = "evaluate"

    def __init__(self, spec: Spec, builder: Builder | None = None):
        self.spec, self.builder = spec, builder or Builder(spec)
        self.run_folder = RunFolder(spec)
        self.train = TrainStage(spec, builder)

    def identity(self, store_teachers: dict | None = None) -> dict:
        texts = {ref: text_hash(ref, self.spec.base_dir, "eval.text") for ref in self.spec.eval.texts}
        return {"train": self.train.identity_hash(store_teachers), "eval": self.spec.eval.model_dump(mode="json"),
                "texts": texts}

    def identity_hash(self, store_teachers: dict | None = None) -> str:
        return spec_hash(self.identity(store_teachers))

    def recorded(self, report: dict) -> bool:
        """Whether a report kept elsewhere (a study's results, committed) is this spec's: its identity
        with the teacher fingerprints its stores recorded, as the report says them."""
        teachers = report.get("store_teachers")
        return teachers is not None and report.get("identity_hash") == self.identity_hash(teachers)

    def status(self) -> Status:
        report = self.run_folder.report()
        if report is not None and report.get("identity_hash") == self.identity_hash():
            return Status("done", str(self.run_folder.report_json))
        return Status("stale" if report is not None else "todo")

    def plan(self) -> list[PlanRow]:
        return [PlanRow("eval", f"{self.spec.eval.windows} windows of {', '.join(self.spec.eval.texts)}",
                        status=str(self.status()))]

    def run(self, force: bool = True) -> dict:
        """The report: evaluated now, or (unless `force`) the one there if it is current."""
        if not force and self.status().done:
            reporter.done(f"{self.run_folder.report_json}: evaluation up to date (skipped)")
            report = self.run_folder.report()
        else:
            with self.run_folder.lock(), disk_full(self.run_folder.eval_dir, "the report"):
                report = self.evaluate()
            reporter.note(f"report: {self.run_folder.report_md}")
        reporter.show(summary(report))
        return report

    def evaluate(self) -> dict:
        spec, teacher = self.spec, self.builder.teacher
        student = self.trained_student()
        checks.raise_any(checks.eval_text_problems(spec))
        untrained, untrained_init = self.fresh_student()
        positions = self.positions(student)
        start, seq_len = time.perf_counter(), spec.student_seq_len
        predictors = {"student": student, "untrained": untrained}
        # the student's failures on real text name it and its line, as in training (the teacher's are its own)
        with plugin_code(self.builder.origin(spec.student), "evaluation on real text"):
            texts = {ref: score_text(ref, spec, teacher, predictors, seq_len, positions) for ref in spec.eval.texts}
            samples = continuations(spec, teacher, student, seq_len)
        main = texts[spec.eval.text]
        report = {
            "experiment": spec.name, "recipe": spec.recipe or spec.name, "budget": spec.budget(),
            "text": spec.eval.text, "positions": positions, "seq_len": seq_len,
            "windows": main["windows"], "teacher": main["teacher"], "results": main["results"],
            "texts": texts, "untrained_init": untrained_init,
            "samples": samples,
            "seconds": round(time.perf_counter() - start, 2), "identity_hash": self.identity_hash(),
            "store_teachers": self.train.store_teachers(),  # so a copy of the report can be recognised later
        }
        draw_figures(report, self.run_folder.eval_dir, self.run_folder.training_plot)
        self.run_folder.write_report(report, markdown(report))
        MetricsLog(self.run_folder.metrics, spec.registry).write("eval", {
            "text": spec.eval.text, "positions": positions, "windows": main["windows"],
            **{f"{name}_{m}": res[m] for name, res in main["results"].items() for m in LOGGED}})
        return report

    def positions(self, student) -> str:
        """The positions scored: `eval.positions`, else the last phase's targets, else "last" for a
        fixed-length student that predicts only that one (the report says which was used)."""
        ev = self.spec.eval
        positions = ev.positions or self.spec.datasets[self.spec.phases[-1].dataset].positions
        if positions in student.positions:
            return positions
        if ev.positions:
            raise KDError(Problem(f"student '{self.spec.student.name}' predicts only {', '.join(student.positions)}",
                                  "eval.positions", self.spec.source))
        return "last"

    def trained_student(self):
        """The shipped student, or an error that says what is missing: the training, or a store it
        depends on (the student itself is kept)."""
        spec, record = self.spec, self.run_folder.trained()
        if record is None:
            raise KDError(f"no trained student for {spec.source} in {spec.run_path}; run `kd train {spec.source}` first")
        if not self.train.status().done:
            gone = [k for k, v in self.train.store_teachers().items() if v is None]
            if gone:
                raise KDError(f"{spec.run_path} holds a trained student, but the store of datasets.{gone[0]} it depends "
                              f"on ({spec.store_path(gone[0])}) is missing or unreadable; regenerate it with "
                              f"`kd generate {spec.source}` (the student is kept)")
            raise KDError(f"the student in {spec.run_path} was trained from a different spec or stores "
                          f"({self.train.teacher_changes(record)}); run `kd train {spec.source}`")
        return load_student(self.run_folder.reverted)

    def fresh_student(self):
        """The student before any training (as `kd train` starts it: random, or subcloned), reverted,
        and where its weights come from."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.phases[0].seed)
            student = self.builder.student()
        self.builder.init_student(student)
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
            "teacher": {k: t[k] for k in ("perplexity", "distinct_predicted", "next_token_accuracy", "nll_by_position") if k in t},
            "results": {name: a.result() for name, a in acc.items()}}


def continuations(spec: Spec, teacher, student, seq_len: int) -> list[dict]:
    """Greedy continuations of the spec's prompts by teacher and student."""
    ev, tok = spec.eval, teacher.tokenizer()
    out = []
    for prompt in ev.prompts:
        ids = tok.chat(prompt) if ev.chat_template else tok.encode(prompt)
        out.append({"prompt": prompt, "teacher": tok.decode(greedy_teacher(teacher, ids, ev.max_new_tokens)),
                    "student": tok.decode(greedy_student(student, ids, seq_len, ev.max_new_tokens))})
    return out
