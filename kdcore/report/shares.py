"""Each run of a study against a reference recipe at the same budget (`kd study --reference RECIPE`):
the question a recipe study asks ("how far is data-free from a student distilled on real text?")
as one table per evaluation text, so that no share is worked out by hand from rounded figures.

A row is a run: its budget, agreement with the teacher and that agreement as a share of the
reference run's at the same budget (computed from the unrounded figures), KL and perplexity over the
unigram's, each past a window's first position where the report has it, and distinct predictions.
Rows go by budget, then by agreement, the reference first.
"""

from __future__ import annotations

import json

from kdcore.eval.metrics import METRICS
from kdcore.report.plots import IN_CONTEXT, recipe_of

COLUMNS = tuple(IN_CONTEXT.values())  # agreement, KL, perplexity / unigram past the first position
FALLBACK = {past: overall for overall, past in IN_CONTEXT.items()}  # a run scored at its last position only


def share_rows(reports: list[dict], tables: dict[str, list[dict]], reference: str) -> dict[str, list[dict]]:
    """{text: rows}: every run's student on `text` beside the `reference` recipe's run at its budget
    (share None where the reference did not run at that budget)."""
    refs = {r["budget"]["samples"]: r["experiment"] for r in reports if recipe_of(r) == reference and r.get("budget")}
    out = {}
    for text, rows in tables.items():
        student = {r["label"]: r for r in rows}  # compare_rows labels each run's student by its experiment
        table = []
        for r in reports:
            row, samples = student[r["experiment"]], (r.get("budget") or {}).get("samples")
            ref = student[refs[samples]] if samples in refs else None
            table.append({"label": r["experiment"], "recipe": recipe_of(r), "samples": samples,
                          **{c: row.get(c, row.get(FALLBACK[c])) for c in COLUMNS},
                          "all_positions": [c for c in COLUMNS if c not in row],  # no per-position split
                          "share": _share(row, ref), "distinct_predicted": row["distinct_predicted"]})
        table.sort(key=lambda t: (t["samples"] or 0, t["recipe"] != reference, -t[COLUMNS[0]]))
        out[text] = table
    return out


def _share(row: dict, ref: dict | None) -> float | None:
    """Agreement over the reference's, past the first position where both have it."""
    if ref is None:
        return None
    key = COLUMNS[0] if COLUMNS[0] in row and COLUMNS[0] in ref else FALLBACK[COLUMNS[0]]
    return row[key] / ref[key] if ref[key] else None


def markdown(rows: list[dict], reference: str) -> str:
    """One table, in the metrics' own headers and formats; a figure over every position (a report
    without the split past the first) is marked *."""
    header, fmt = {m.key: m.header for m in METRICS}, {m.key: m.fmt for m in METRICS}
    heads = ["run", "samples", header[COLUMNS[0]], f"% of {reference}", header[COLUMNS[1]], header[COLUMNS[2]],
             header["distinct_predicted"]]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = {c: fmt[c].format(r[c]) + ("*" if c in r["all_positions"] else "") for c in COLUMNS}
        lines.append("| " + " | ".join([
            r["label"], f"{r['samples']:,}" if r["samples"] else "", cells[COLUMNS[0]],
            "" if r["share"] is None else f"{100 * r['share']:.1f}%", cells[COLUMNS[1]], cells[COLUMNS[2]],
            str(r["distinct_predicted"])]) + " |")
    return "\n".join(lines)


def write_shares(out_dir, reports: list[dict], tables: dict[str, list[dict]], reference: str) -> dict[str, list[dict]]:
    """shares.md (a table per text) and shares.json in `out_dir`; the rows."""
    rows = share_rows(reports, tables, reference)
    sections = [f"### {text}: each run against {reference} at its budget\n\n{markdown(r, reference)}\n"
                for text, r in rows.items()]
    note = ("Agreement, KL and perplexity / unigram past a window's first position; * marks a figure over "
            "every position (a report from before KL and perplexity were split by position). Shares are of "
            "the unrounded figures.")
    (out_dir / "shares.md").write_text("\n".join(sections) + f"\n{note}\n")
    (out_dir / "shares.json").write_text(json.dumps(rows, indent=2))
    return rows
