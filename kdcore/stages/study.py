"""A recipe study: run every spec in one or more folders (each stage resumable), then compare them.

    kd study experiments/study experiments/study_4x --out docs/results/study
    kd study experiments/study experiments/study_4x --complete-only --out docs/results/study

Writes compare.md (one table per evaluation text), compare.json, compare_texts.json, compare.png,
budget.png (where one recipe ran at several budgets), timings.json and, with `--reference RECIPE`,
shares.md and shares.json (each run against that recipe at its budget) into the output folder, and a
copy of each run's report in its `reports/` folder. A study spans sessions, and a session's run
folders may be gone by the next (another machine, a fresh clone): a spec whose run is not here is
taken from its copied report where that report is this spec's (the same identity, with the teacher
fingerprints its stores recorded), so committed reports are results that need no re-run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.rule import Rule

from kdcore.config.load import load_spec
from kdcore.problems import KDError
from kdcore.report.compare import common_texts, compare_rows, load_report, write_comparison
from kdcore.report.console import reporter
from kdcore.report.shares import write_shares
from kdcore.report.tables import rich_table
from kdcore.run.folder import RunFolder
from kdcore.stages.evaluate import EvaluateStage
from kdcore.stages.runner import Runner
from kdcore.system.files import write_atomic


def run_study(folders: list[Path], out_dir: Path | None = None, complete_only: bool = False,
              reference: str | None = None) -> dict[str, list[dict]]:
    """`complete_only`: compare the specs whose results are here (a current run, or a report copied
    into `out_dir/reports`), run nothing, and name the others (a study read part-way). `reference`:
    a recipe every run is set against at its budget (shares.md)."""
    paths = [p for folder in folders for p in sorted(Path(folder).glob("*.toml"))]
    if not paths:
        raise KDError(f"{', '.join(map(str, folders))}: no *.toml specs")
    specs = [load_spec(p) for p in paths]  # every spec validated before anything runs
    recipes = sorted({s.recipe or s.name for s in specs})
    if reference is not None and reference not in recipes:
        raise KDError(f"--reference {reference}: no spec of that recipe in {', '.join(map(str, folders))} "
                      f"(recipes: {', '.join(recipes)})")
    out_dir = Path(out_dir or Path(specs[0].runs_dir) / "study")
    timings_file = out_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    reports, pending = [], []
    for path, spec in zip(paths, specs):
        reporter.show(Rule(str(path)))
        report = result(spec, out_dir, complete_only, timings)
        if report is None:
            pending.append(str(path))
        else:
            reports.append(report)
        if timings:
            out_dir.mkdir(parents=True, exist_ok=True)
            timings_file.write_text(json.dumps(timings, indent=2))  # a long study is interrupted: keep what ran
    if not reports:
        raise KDError(f"{', '.join(map(str, folders))}: no spec has a complete run yet")
    tables = {text: compare_rows(reports, text) for text in common_texts(reports)}
    for text, rows in tables.items():
        reporter.show(rich_table(rows, f"vs teacher on {text}"))
    write_comparison(reports, tables, out_dir, footer(reports, timings, pending))
    if reference is not None:
        write_shares(out_dir, reports, tables, reference)
    reporter.note(f"study: {len(reports)} of {len(specs)} specs compared; tables in {out_dir / 'compare.md'}")
    return tables


def result(spec, out_dir: Path, complete_only: bool, timings: dict) -> dict | None:
    """The spec's report: its current run's (run first, unless `complete_only`), else a copy kept
    in `out_dir/reports` that is this spec's; None when there is neither."""
    runner, kept = Runner(spec), out_dir / "reports" / f"{spec.name}.json"
    if not runner.up_to_date() and not complete_only:
        start = time.perf_counter()
        runner.run()
        timings[spec.name] = round(time.perf_counter() - start, 1)
    if runner.up_to_date():  # its time stays the one measured when it ran
        report = runner.evaluate(force=False)
        kept_report = json.loads(RunFolder(spec).report_json.read_text())
        kept_report.setdefault("store_teachers", EvaluateStage(spec).train.store_teachers())  # older reports lack it
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(kept, json.dumps(kept_report, indent=2))
        return report
    if kept.exists() and EvaluateStage(spec).recorded(json.loads(kept.read_text())):
        reporter.note(f"{spec.name}: no current run here; its recorded report {kept}")
        return load_report(kept)
    return None


def footer(reports: list[dict], timings: dict, pending: list[str]) -> str:
    timed = [r["experiment"] for r in reports if r["experiment"] in timings]
    text = (f"Wall time of the {len(timed)} specs `kd study` ran, each as measured when it last ran: "
            f"{sum(timings[n] for n in timed) / 60:.1f} min; per spec in timings.json." if timed else "")
    return text + (f" Not run yet (left out above): {', '.join(pending)}." if pending else "")
