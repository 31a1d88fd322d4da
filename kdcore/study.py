"""A recipe study: run every spec in a folder (each stage resumable), then compare them in one table.

    kd study experiments/study          (or: python -m kdcore.study experiments/study)

Writes runs/study/compare.md, compare.json, compare.png and timings.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console

from kdcore.errors import KDError

console = Console()


def run_study(folder: Path, out_dir: Path | None = None) -> list[dict]:
    from kdcore.compare import compare_runs, markdown_table
    from kdcore.runner import Runner
    from kdcore.spec import load_spec

    specs = sorted(Path(folder).glob("*.toml"))
    if not specs:
        raise KDError(f"{folder}: no *.toml specs")
    loaded = [load_spec(p) for p in specs]  # every spec validated before anything runs
    out_dir = Path(out_dir or Path(loaded[0].runs_dir) / "study")
    timings = {}
    for path, spec in zip(specs, loaded):
        console.rule(f"{path}")
        start = time.perf_counter()
        Runner(spec).run()
        timings[spec.name] = round(time.perf_counter() - start, 1)
    rows = compare_runs([s.run_path for s in loaded], out_dir, console)
    (out_dir / "timings.json").write_text(json.dumps(timings, indent=2))
    total = sum(timings.values())
    (out_dir / "compare.md").write_text(markdown_table(rows) + f"\n\nWall time of this invocation: {total / 60:.1f} min "
                                        f"(stages already complete are skipped, so a re-run is faster).\n")
    console.print(f"study: {len(specs)} specs, {total / 60:.1f} min; table in {out_dir / 'compare.md'}")
    return rows


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m kdcore.study FOLDER", file=sys.stderr)
        raise SystemExit(2)
    try:
        run_study(Path(sys.argv[1]))
    except KDError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
