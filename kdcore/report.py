"""The table of evaluation metrics, one set of columns for every place that shows it: `kd eval`'s
summary and report.md, `kd compare` and `kd study` (terminal and markdown)."""

from __future__ import annotations

# (key, header, format); perplexity is also shown as a ratio to the unigram baseline's on the same text
COLUMNS = (
    ("top1_agreement", "top-1 agreement", "{:.3f}"),
    ("top1_agreement_in_context", "top-1, 2+ token context", "{:.3f}"),
    ("top5_overlap", "top-5 overlap", "{:.3f}"),
    ("kl_teacher_student", "KL(teacher‖student)", "{:.3f}"),
    ("perplexity", "perplexity", "{:.1f}"),
    ("ppl_vs_unigram", "ppl / unigram", "{:.2f}"),
    ("distinct_predicted", "distinct predicted", "{}"),
)


def with_derived_columns(rows: list[dict], unigram_perplexity: float) -> list[dict]:
    """Each row with the columns computed from its results: perplexity divided by the unigram model's
    (below 1: a better language model), and, for a row scored at every position, top-1 agreement
    past a window's first position. There the context is one token, where a teacher may answer
    nearly the same whatever the token (SmolLM2 does), which a student learns from any data whose
    windows start at ordinary tokens. Windows are whole, so every position counts the same."""
    def past_first(r):
        by = r.get("agreement_by_position")
        return {"top1_agreement_in_context": sum(by[1:]) / len(by[1:])} if by and len(by) > 1 else {}
    return [{**r, "ppl_vs_unigram": r["perplexity"] / unigram_perplexity, **past_first(r)} for r in rows]


def cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "" if value is None else fmt.format(value)


def markdown_table(rows: list[dict], first: str = "run") -> str:
    lines = ["| " + " | ".join([first] + [h for _, h, _ in COLUMNS]) + " |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        lines.append("| " + " | ".join([r["label"]] + [cell(r, k, f) for k, _, f in COLUMNS]) + " |")
    return "\n".join(lines)


def rich_table(rows: list[dict], title: str, first: str = "run"):
    from rich.table import Table

    table = Table(title=title)
    table.add_column(first)
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(r["label"], *(cell(r, k, f) for k, _, f in COLUMNS))
    return table


def teacher_row(teacher: dict) -> dict:
    """The teacher as a row: it agrees with itself."""
    return {"label": "teacher", "top1_agreement": 1.0, "top1_agreement_in_context": 1.0, "top5_overlap": 1.0,
            "kl_teacher_student": 0.0,
            "perplexity": teacher["perplexity"], "distinct_predicted": teacher["distinct_predicted"]}
