"""An evaluation report, rendered: the rows of its tables, report.md, its figures, and the summary
`kd eval` and `kd run` print (`kdcore.stages.evaluate` makes the report)."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Group
from rich.markup import escape
from rich.text import Text

from kdcore.eval.metrics import PLOTTED, teacher_row, with_derived_columns
from kdcore.report.plots import plot_bars, plot_by_position
from kdcore.report.tables import markdown_table, rich_table


def result_rows(text_report: dict, teacher: bool = False) -> list[dict]:
    """Rows for the metrics table: each predictor (the teacher first, if asked), with the derived
    columns (perplexity as a ratio to the unigram's on the same text; agreement, KL and that ratio past the
    first position)."""
    rows = [teacher_row(text_report["teacher"])] if teacher else []
    rows += [{"label": name, **r} for name, r in text_report["results"].items()]
    return with_derived_columns(rows, text_report["results"]["unigram"])


def texts_of(report: dict) -> dict:
    return report.get("texts", {report["text"]: report})


def markdown(report: dict) -> str:
    lines = [f"# Evaluation: {report['experiment']}", ""]
    for ref, text in texts_of(report).items():
        t = text["teacher"]
        lines += [f"Text `{ref}`, {text['windows']} windows of {report['seq_len']} tokens, positions: "
                  f"{report['positions']}. Teacher perplexity {t['perplexity']:.2f}, distinct predicted tokens "
                  f"{t['distinct_predicted']}.", "", markdown_table(result_rows(text), "predictor"), ""]
    lines += ["## Greedy continuations", ""]
    for s in report["samples"]:
        lines += [f"**{s['prompt']}**", "", f"- teacher: {s['teacher']!r}", f"- student: {s['student']!r}", ""]
    return "\n".join(lines)


def draw_figures(report: dict, folder: Path, training_plot: Path) -> None:
    """metrics.png, agreement_by_position.png (positions "all") and a copy of the training curves:
    the report's folder holds every figure of the run."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = result_rows(report)
    plot_bars(rows, PLOTTED, folder / "metrics.png", f"{report['experiment']}: vs teacher on {report['text']}")
    by_position = {r["label"]: r["agreement_by_position"] for r in rows if "agreement_by_position" in r}
    if by_position:
        plot_by_position(by_position, folder / "agreement_by_position.png", f"{report['experiment']}: agreement by position")
    if training_plot.exists():
        shutil.copyfile(training_plot, folder / "training.png")


def summary(report: dict) -> Group:
    """The tables of every text and the greedy continuations, for the terminal."""
    parts = []
    for ref, text in texts_of(report).items():
        title = f"{report['experiment']}: student vs teacher on {ref} ({text['windows']} windows, positions {report['positions']})"
        parts.append(rich_table(result_rows(text, teacher=True), escape(title), "predictor"))
    for s in report["samples"]:
        parts.append(Text.assemble((s["prompt"], "bold"), f"\n  teacher: {s['teacher']!r}\n  student: {s['student']!r}"))
    return Group(*parts)
