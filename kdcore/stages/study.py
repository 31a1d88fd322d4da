"""A recipe study: run every spec in one or more folders (each stage resumable), then compare them.

    kd study experiments/study experiments/study_4x --out runs/study
    kd study experiments/study experiments/study_4x --complete-only   # compare what has run, run nothing

Writes compare.md (one table per evaluation text), compare.json, compare_texts.json, compare.png,
budget.png (where one recipe ran at several budgets) and timings.json into the output folder.
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
from kdcore.report.tables import rich_table
from kdcore.stages.runner import Runner



def run_study(folders: list[Path], out_dir: Path | None = None, complete_only: bool = False) -> dict[str, list[dict]]:
    """`complete_only`: compare the specs whose runs are complete and up to date, run nothing, and
    name the others (a study spanning sessions, read part-way)."""
    specs = [p for folder in folders for p in sorted(Path(folder).glob("*.toml"))]
    if not specs:
        raise KDError(f"{', '.join(map(str, folders))}: no *.toml specs")
    loaded = [load_spec(p) for p in specs]  # every spec validated before anything runs
    out_dir = Path(out_dir or Path(loaded[0].runs_dir) / "study")
    timings_file = out_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    done, pending = [], []
    for path, spec in zip(specs, loaded):
        reporter.show(Rule(str(path)))
        runner = Runner(spec)
        if runner.up_to_date():  # its time stays the one measured when it ran
            runner.evaluate(force=False)
            done.append(spec)
            continue
        if complete_only:
            pending.append(str(path))
            continue
        start = time.perf_counter()
        runner.run()
        timings[spec.name] = round(time.perf_counter() - start, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        timings_file.write_text(json.dumps(timings, indent=2))  # a long study is interrupted: keep what ran
        done.append(spec)
    if not done:
        raise KDError(f"{', '.join(map(str, folders))}: no spec has a complete run yet")
    reports = [load_report(s.run_path) for s in done]
    tables = {text: compare_rows(reports, text) for text in common_texts(reports)}
    for text, rows in tables.items():
        reporter.show(rich_table(rows, f"vs teacher on {text}"))
    timed = [s.name for s in done if s.name in timings]
    footer = (f"Wall time of the {len(timed)} specs `kd study` ran, each as measured when it last ran: "
              f"{sum(timings[n] for n in timed) / 60:.1f} min; per spec in timings.json." if timed else "")
    if pending:
        footer += f" Not run yet (left out above): {', '.join(pending)}."
    write_comparison(reports, tables, out_dir, footer)
    reporter.note(f"study: {len(done)} of {len(specs)} specs compared; tables in {out_dir / 'compare.md'}")
    return tables
