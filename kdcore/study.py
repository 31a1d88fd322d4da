"""A recipe study: run every spec in one or more folders (each stage resumable), then compare them.

    kd study experiments/study experiments/study_4x --out runs/study

Writes compare.md (one table per evaluation text), compare.json, compare_texts.json, compare.png,
budget.png (where one recipe ran at several budgets) and timings.json into the output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from kdcore.errors import KDError

console = Console()


def run_study(folders: list[Path], out_dir: Path | None = None) -> dict[str, list[dict]]:
    from kdcore.compare import common_texts, compare_rows, load_report, write_comparison
    from kdcore.report import rich_table
    from kdcore.runner import Runner
    from kdcore.spec import load_spec

    specs = [p for folder in folders for p in sorted(Path(folder).glob("*.toml"))]
    if not specs:
        raise KDError(f"{', '.join(map(str, folders))}: no *.toml specs")
    loaded = [load_spec(p) for p in specs]  # every spec validated before anything runs
    out_dir = Path(out_dir or Path(loaded[0].runs_dir) / "study")
    timings_file = out_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for path, spec in zip(specs, loaded):
        console.rule(f"{path}")
        runner = Runner(spec)
        if runner.up_to_date():  # its time stays the one measured when it ran
            runner.evaluate(force=False)
            continue
        start = time.perf_counter()
        runner.run()
        timings[spec.name] = round(time.perf_counter() - start, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        timings_file.write_text(json.dumps(timings, indent=2))  # a long study is interrupted: keep what ran
    reports = [load_report(s.run_path) for s in loaded]
    tables = {text: compare_rows(reports, text) for text in common_texts(reports)}
    for text, rows in tables.items():
        console.print(rich_table(rows, f"vs teacher on {text}"))
    total = sum(timings.get(s.name, 0) for s in loaded)
    write_comparison(reports, tables, out_dir, f"Wall time of all specs, each as measured when it last ran: "
                     f"{total / 60:.1f} min; per spec in timings.json.")
    console.print(f"study: {len(specs)} specs; tables in {out_dir / 'compare.md'}")
    return tables
