"""The shape of the code, held: the folders are layers and every import of kdcore runs down them (none
up, none in a cycle, none hidden in a function to dodge one); no function over 60 lines, no class
over 200; docs/DESIGN.md's map names every module; every package says what it is for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KDCORE = REPO / "kdcore"

# lowest first: a module may import from its own layer or a lower one
LAYERS = [
    ("kdcore.problems", "kdcore.system"),
    ("kdcore.texts",),
    ("kdcore.plugin",),
    ("kdcore.config",),
    ("kdcore.store",),
    ("kdcore.eval",),
    ("kdcore.run",),
    ("kdcore.report",),
    ("kdcore.stages",),
    ("kdcore.api", "kdcore.cli", "kdcore", "kdcore.__main__",
     "kdcore.components", "kdcore.hookspecs", "kdcore.params", "kdcore.errors"),  # the edges, and old import paths
]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(KDCORE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") and prefix != "kdcore":
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_structure.py: add it"
    return best[0]


def kdcore_imports(path: Path, name: str) -> list[tuple[str, int]]:
    """(imported kdcore module, line) of every import in the file, at any depth."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("kdcore")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("kdcore"):
                known = modules()
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
                out += [(m, node.lineno) for m in subs] or [(base, node.lineno)]
    return out


def test_imports_run_down_the_layers():
    known, wrong = modules(), []
    for name, path in known.items():
        for imported, line in kdcore_imports(path, name):
            if imported in known and layer(imported) > layer(name):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {imported} (layer {layer(imported)}) "
                             f"from layer {layer(name)}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    known = modules()
    graph = {name: {m for m, _ in kdcore_imports(path, name) if m in known and m != name} for name, path in known.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("folder", ["kdcore", "plugins"])
def test_functions_and_classes_stay_short(folder):
    long = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > 60:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} def {node.name}: {size} lines")
            if isinstance(node, ast.ClassDef) and size > 200:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} class {node.name}: {size} lines")
    assert not long, "\n".join(long)


def test_design_map_names_every_module():
    """docs/DESIGN.md opens with the map of the code: one line per file."""
    design = (REPO / "docs" / "DESIGN.md").read_text()
    modules = [p for p in sorted(KDCORE.rglob("*.py")) if p.name != "__init__.py"] + sorted((REPO / "plugins").glob("*.py"))
    missing = [str(p.relative_to(REPO)) for p in modules if f"`{p.relative_to(REPO)}`" not in design]
    assert not missing, f"docs/DESIGN.md's map lacks: {', '.join(missing)}"


def test_every_package_says_what_it_is_for():
    for init in sorted(KDCORE.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) > 8, f"{init.relative_to(REPO)} has no docstring saying what the folder holds"


def test_library_code_never_prints():
    """Output goes through the one reporter (kdcore.report.console); the CLI prints what commands return."""
    allowed = {KDCORE / "report" / "console.py", KDCORE / "cli.py", KDCORE / "texts" / "corpus.py"}
    found = []
    for path in sorted(KDCORE.rglob("*.py")):
        if path in allowed or "report" in path.parts and path.name.endswith("_view.py"):
            continue
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(?<![\w.])print\(|Console\(|\.print\(", line):
                found.append(f"{path.relative_to(REPO)}:{line_no}: {line.strip()}")
    assert not found, "\n".join(found)


def test_no_source_file_is_ignored_by_git():
    """A .gitignore pattern once hid kdcore/store/ (meant for the root store/ folder), so a clone lacked
    modules the working copy had; only a clean clone showed it."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("this test reads the checkout's .gitignore: run it in a git clone with git installed")
    sources = [str(p.relative_to(REPO)) for folder in ("kdcore", "plugins", "tests", "experiments", "bench", "docs")
               for p in sorted((REPO / folder).rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(sources),
                          capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    assert not done.stdout.split(), f"ignored by .gitignore, so missing from every clone: {done.stdout.split()}"
