"""The table of evaluation metrics, one set of columns for every place that shows it: `kd eval`'s
summary and report.md, `kd compare` and `kd study` (terminal and markdown). The columns are the
metrics `kdcore.eval.metrics` defines."""

from __future__ import annotations

from rich.table import Table

from kdcore.eval.metrics import SHOWN


def cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "" if value is None else fmt.format(value)


def markdown_table(rows: list[dict], first: str = "run") -> str:
    lines = ["| " + " | ".join([first] + [m.header for m in SHOWN]) + " |", "|" + "---|" * (len(SHOWN) + 1)]
    for r in rows:
        lines.append("| " + " | ".join([r["label"]] + [cell(r, m.key, m.fmt) for m in SHOWN]) + " |")
    return "\n".join(lines)


def rich_table(rows: list[dict], title: str, first: str = "run") -> Table:
    table = Table(title=title)
    table.add_column(first)
    for m in SHOWN:
        table.add_column(m.header, justify="right")
    for r in rows:
        table.add_row(r["label"], *(cell(r, m.key, m.fmt) for m in SHOWN))
    return table
