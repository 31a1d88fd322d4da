"""`kd run --dry-run`'s table: a row per stage, with the figures its stage computes."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

COLUMNS = ("stage", "what", "teacher forwards", "tokens (at most)", "store size", "status")


def plan_table(rows: list, title: str) -> Table:
    """`rows`: the stages' PlanRows."""
    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*map(escape, (r.stage, r.what, r.teacher_forwards, r.tokens, r.size, r.status)))
    return table
