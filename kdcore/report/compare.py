"""`kd compare`: evaluation reports of several runs side by side, on each text they were evaluated on,
and, where one recipe ran at several budgets, agreement and KL against the budget."""

from __future__ import annotations

import json
from pathlib import Path

from kdcore.config.load import load_spec
from kdcore.eval.metrics import PLOTTED, teacher_row, with_derived_columns
from kdcore.problems import KDError
from kdcore.report.console import reporter
from kdcore.report.plots import plot_bars, plot_budget
from kdcore.report.tables import markdown_table, rich_table
from kdcore.run.folder import RunFolder


def load_report(ref: Path) -> dict:
    """The evaluation report of a run folder, a spec's run, or a report.json itself."""
    ref = Path(ref)
    if ref.suffix == ".toml":
        ref = load_spec(ref).run_path
    path = RunFolder(ref).report_json if ref.is_dir() else ref
    if not path.exists():
        raise KDError(f"{ref}: no evaluation report ({path}); run `kd eval` on its spec first")
    try:
        report = json.loads(path.read_text())
        report["results"]["student"], report["teacher"]["perplexity"]  # noqa: B018 (the keys read below)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise KDError(f"{path}: not a readable evaluation report ({type(e).__name__}: {e}); re-run `kd eval`") from None
    report.setdefault("texts", {report["text"]: {k: report[k] for k in ("windows", "teacher", "results")}})
    return report


def common_texts(reports: list[dict]) -> list[str]:
    """The texts every run was evaluated on, the first run's order."""
    return [t for t in reports[0]["texts"] if all(t in r["texts"] for r in reports)]


def compare_rows(reports: list[dict], text: str | None = None) -> list[dict]:
    """One row per run's student, then each distinct untrained student, the unigram baseline, and the
    teacher, on `text` (default: the first run's main text); perplexity also as a ratio to the unigram's."""
    text = text or reports[0]["text"]
    for key in ("seq_len", "positions"):
        seen = {str(r.get(key)) for r in reports}
        if len(seen) > 1:
            raise KDError(f"runs were evaluated with different {key} ({', '.join(sorted(seen))}); compare like with like")
    missing = [r["experiment"] for r in reports if text not in r["texts"]]
    if missing:
        raise KDError(f"runs {', '.join(missing)} were not evaluated on {text}")
    windows = {r["texts"][text]["windows"] for r in reports}
    if len(windows) > 1:
        raise KDError(f"runs were evaluated on different windows of {text} ({sorted(windows)}); compare like with like")
    on = [r["texts"][text] for r in reports]
    rows = [{"label": r["experiment"], **t["results"]["student"]} for r, t in zip(reports, on)]
    base, first = reports[0], on[0]
    name = lambda kind, r: kind if len(reports) == 1 else f"{kind} ({r['experiment']})"  # noqa: E731
    # one untrained row per distinct starting student (another width, or weights cut from the
    # teacher: the subclone before training), named by the first run that has it; the unigram's
    seen = []
    for r, t in zip(reports, on):
        if t["results"]["untrained"] not in seen:
            seen.append(t["results"]["untrained"])
            rows.append({"label": name("untrained", r), **t["results"]["untrained"]})
    rows.append({"label": name("unigram", base), **first["results"]["unigram"]})
    rows.append(teacher_row(first["teacher"]))
    return with_derived_columns(rows, first["results"]["unigram"])


def compare_runs(refs: list[Path], out_dir: Path | None) -> dict[str, list[dict]]:
    """Print (and with `out_dir`, write) one table per common text; returns {text: rows}."""
    reports = [load_report(r) for r in refs]
    tables = {text: compare_rows(reports, text) for text in common_texts(reports)}
    for text, rows in tables.items():
        reporter.show(rich_table(rows, f"vs teacher on {text} ({reports[0]['texts'][text]['windows']} windows)"))
    if out_dir is not None:
        write_comparison(reports, tables, Path(out_dir))
        reporter.note(f"written: {out_dir}/compare.md, compare.json, compare.png")
    return tables


def write_comparison(reports: list[dict], tables: dict[str, list[dict]], out_dir: Path, footer: str = "") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    main = reports[0]["text"]
    (out_dir / "compare.json").write_text(json.dumps(tables[main], indent=2))
    (out_dir / "compare_texts.json").write_text(json.dumps(tables, indent=2))
    sections = [f"### {text}\n\n{markdown_table(rows)}\n" for text, rows in tables.items()]
    (out_dir / "compare.md").write_text("\n".join(sections) + (f"\n{footer}\n" if footer else ""))
    plot_bars(tables[main], PLOTTED, out_dir / "compare.png", f"runs vs teacher on {main}")
    if len({json.dumps(r.get("budget")) for r in reports}) > 1:
        plot_budget(reports, out_dir / "budget.png")
