"""`kd plugins`' tables: a table per kind, a row per component (`kdcore.plugin.registry.describe`)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from kdcore.plugin.registry import kind_plural


def plugin_tables(listing: list[dict]) -> list[Table]:
    tables = {}
    for comp in listing:
        table = tables.get(comp["kind"])
        if table is None:
            table = tables[comp["kind"]] = Table(title=kind_plural(comp["kind"]), show_lines=False)
            for col in ("name", "from", "parameters (default)", "description"):
                table.add_column(col, overflow="fold")  # a narrow terminal folds names instead of cutting them
        params = ", ".join(f"{p['name']}={'required' if p['required'] else repr(p['default'])}"
                           + (f" ({p['description']})" if p["description"] else "") for p in comp["parameters"])
        package = comp.get("package")
        source = comp["from"] + (f" ({package['name']} {package['version']})" if package else "")
        about = comp["description"] + (f" — UNUSABLE: {comp['unusable']}" if comp.get("unusable") else "")
        table.add_row(*map(escape, (comp["name"], source, params, about)))  # docs hold "[a, b]"
    return list(tables.values())
