"""`kd compare`: evaluation reports of several runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

from kdcore.errors import KDError

COLUMNS = ("top1_agreement", "top5_overlap", "kl_teacher_student", "perplexity", "distinct_predicted")


def load_report(ref: Path) -> dict:
    ref = Path(ref)
    if ref.suffix == ".toml":
        from kdcore.spec import load_spec

        ref = load_spec(ref).run_path
    path = ref / "eval" / "report.json" if ref.is_dir() else ref
    if not path.exists():
        raise KDError(f"{ref}: no evaluation report ({path}); run `kd eval` on its spec first")
    try:
        report = json.loads(path.read_text())
        report["results"]["student"], report["teacher"]["perplexity"]  # noqa: B018 (the keys read below)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise KDError(f"{path}: not a readable evaluation report ({type(e).__name__}: {e}); re-run `kd eval`") from None
    return report


def compare_rows(reports: list[dict]) -> list[dict]:
    """One row per run's student, then the baselines of the first run, then the teacher."""
    for key in ("text", "windows", "seq_len", "positions"):
        seen = {str(r.get(key)) for r in reports}
        if len(seen) > 1:
            raise KDError(f"runs were evaluated with different {key} ({', '.join(sorted(seen))}); compare like with like")
    rows = [{"label": r["experiment"], **r["results"]["student"]} for r in reports]
    base = reports[0]
    # baselines of the first run (its student architecture, for the untrained one)
    rows += [{"label": name if len(reports) == 1 else f"{name} ({base['experiment']})", **base["results"][name]}
             for name in ("untrained", "unigram")]
    rows.append({"label": "teacher", "top1_agreement": 1.0, "top5_overlap": 1.0, "kl_teacher_student": 0.0,
                 "perplexity": base["teacher"]["perplexity"], "distinct_predicted": base["teacher"]["distinct_predicted"]})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| run | top-1 agreement | top-5 overlap | KL(teacher‖student) | perplexity | distinct predicted |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['top1_agreement']:.3f} | {r['top5_overlap']:.3f} | "
                     f"{r['kl_teacher_student']:.3f} | {r['perplexity']:.1f} | {r['distinct_predicted']} |")
    return "\n".join(lines)


def compare_runs(refs: list[Path], out_dir: Path | None, console) -> list[dict]:
    from rich.table import Table

    from kdcore.plots import plot_bars

    reports = [load_report(r) for r in refs]
    rows = compare_rows(reports)
    table = Table(title=f"vs teacher on {reports[0]['text']} ({reports[0]['windows']} windows)")
    for col in ("run", "top-1 agree", "top-5 overlap", "KL(t‖s)", "ppl", "distinct"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        table.add_row(r["label"], f"{r['top1_agreement']:.3f}", f"{r['top5_overlap']:.3f}",
                      f"{r['kl_teacher_student']:.3f}", f"{r['perplexity']:.1f}", str(r["distinct_predicted"]))
    console.print(table)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare.json").write_text(json.dumps(rows, indent=2))
        (out_dir / "compare.md").write_text(markdown_table(rows) + "\n")
        plot_bars(rows, list(COLUMNS[:3]) + ["distinct_predicted"], out_dir / "compare.png", "runs vs teacher")
        console.print(f"written: {out_dir}/compare.md, compare.json, compare.png")
    return rows
