"""The `kd` command line. User mistakes become one clear message and exit code 1, never a traceback.

Imports of torch, transformers and zarr happen inside the commands, so `kd --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdcore.errors import KDError, SpecError, did_you_mean

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LlamaKD: data-free knowledge distillation of language models.")
out = Console()
err = Console(stderr=True)

SpecArg = typer.Argument(..., help="experiment spec (TOML)", show_default=False)


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if e.code == 2:  # a usage mistake (missing argument, unknown option) is a user mistake: exit 1
            raise SystemExit(1) from None
        raise
    except KDError as e:
        # the message quotes the user's keys and values: print them as they are, never as markup
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, markup=True, soft_wrap=True)
        raise SystemExit(1) from None


def _spec(path: Path):
    from kdcore.spec import load_spec

    return load_spec(path)


@app.command()
def validate(spec: Path = SpecArg, json_out: bool = typer.Option(False, "--json", help="print JSON")):
    """Validate a spec; print it resolved (defaults filled in) and the student's parameter count."""
    s = _spec(spec)  # before the heavy imports below: most mistakes are reported at once

    from kdcore.build import Builder
    from kdcore.train import count_parameters, student_seq_len

    builder = Builder(s)
    builder.teacher  # every check below needs the teacher's vocabulary and positions
    problems: list[tuple[str, str]] = []

    def check(build):  # collect the problems of every component, to report them all at once
        try:
            return build()
        except SpecError as e:
            problems.extend(e.problems)

    student = check(lambda: builder.student(student_seq_len(s)))  # the length training builds it with
    for name in s.datasets:
        check(lambda: builder.sampler(name))
    for i in range(len(s.phases)):
        check(lambda: builder.losses(i))
        if student is not None:
            check(lambda: builder.check_phase(i, student))
    check(builder.check_eval)
    if problems:
        raise SpecError(s.source, list(dict.fromkeys(problems)))
    info = {"spec": s.resolved(), "teacher_vocab": builder.teacher.vocab_size,
            "student_parameters": count_parameters(student)}
    if json_out:
        out.print_json(json.dumps(info))
        return
    out.print_json(json.dumps(info["spec"]))
    out.print(f"[green]{escape(str(spec))}: valid[/green] — teacher vocab {info['teacher_vocab']}, "
              f"student '{s.student.name}' has {info['student_parameters']:,} parameters")


@app.command()
def plugins(kind: Optional[str] = typer.Option(None, help="only this kind: teacher, sampler, student, loss")):
    """List every component: its kind, name, where it comes from and its parameters."""
    from kdcore.registry import KINDS, kind_plural, load_registry

    if kind is not None and kind not in KINDS:
        raise KDError(f"unknown kind '{kind}'{did_you_mean(kind, list(KINDS))}")
    registry = load_registry()
    for k in KINDS:
        if kind and k != kind:
            continue
        table = Table(title=kind_plural(k), show_lines=False)
        for col in ("name", "from", "parameters (default)", "description"):
            table.add_column(col, overflow="fold")  # a narrow terminal folds names instead of cutting them
        for name in registry.names(k):
            comp = registry.get(k, name)
            params = ", ".join(
                f"{f}={'required' if info.is_required() else repr(info.default)}"
                for f, info in comp.params.model_fields.items()
            )
            doc = (comp.params.__doc__ or "").strip().split("\n")[0]
            table.add_row(*map(escape, (name, comp.source, params, doc)))  # docs say "[low, high]": not markup
        out.print(table)


@app.command()
def generate(spec: Path = SpecArg, dataset: Optional[list[str]] = typer.Option(None, help="only these datasets"),
             overwrite: bool = typer.Option(False, help="regenerate a store made from a different spec"),
             repair: bool = typer.Option(False, help="verify every block's checksums and regenerate the damaged ones")):
    """Generate the spec's datasets into the store (resumes; skips complete ones)."""
    from kdcore.runner import Runner

    Runner(_spec(spec)).generate(dataset or None, overwrite=overwrite, repair=repair)


@app.command()
def train(spec: Path = SpecArg, restart: bool = typer.Option(False, help="discard checkpoints and train from scratch")):
    """Train the student through the spec's phases (resumes from the last checkpoint)."""
    from kdcore.runner import Runner

    Runner(_spec(spec)).train(restart=restart)


@app.command(name="eval")
def evaluate(spec: Path = SpecArg):
    """Revert the trained student and compare it with the teacher on real text."""
    from kdcore.runner import Runner

    Runner(_spec(spec)).evaluate()


@app.command()
def run(spec: Path = SpecArg, dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, run nothing"),
        overwrite: bool = typer.Option(False, help="regenerate stores made from a different spec")):
    """All stages: generate, train, revert, evaluate — each skipped when already complete."""
    from kdcore.runner import Runner

    runner = Runner(_spec(spec))
    if dry_run:
        runner.print_plan()
        return
    runner.run(overwrite=overwrite)


@app.command()
def inspect(store: Path = typer.Argument(..., help="a store folder, e.g. store/negten"),
            json_out: bool = typer.Option(False, "--json", help="print JSON"),
            verify: bool = typer.Option(True, help="read every block and check its checksums")):
    """Describe a generated store: spec, teacher, arrays, size, completion, damage and target diagnostics."""
    from kdcore.inspect import inspect_store, print_report

    report = inspect_store(store, verify=verify)
    if json_out:
        out.print_json(json.dumps(report))
    else:
        print_report(report, out)


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="run folders (runs/<experiment>) or specs"),
            output: Optional[Path] = typer.Option(None, "--out", help="write compare.md/.json/.png here")):
    """Evaluation metrics of several runs side by side, with the baselines."""
    from kdcore.compare import compare_runs

    compare_runs(runs, output, out)


@app.command()
def study(folder: Path = typer.Argument(..., help="a folder of specs, e.g. experiments/study"),
          output: Optional[Path] = typer.Option(None, "--out", help="default: <runs_dir>/study")):
    """Run every spec in a folder (resumable), then compare them in one table and one PNG."""
    from kdcore.study import run_study

    run_study(folder, output)


if __name__ == "__main__":
    main()
