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

from kdcore.errors import KDError, SpecError, did_you_mean, missing_package

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LlamaKD: data-free knowledge distillation of language models.")
out = Console()
err = Console(stderr=True)

SpecArg = typer.Argument(..., help="experiment spec (TOML)", show_default=False)


def _version(value: bool) -> None:
    if value:
        from kdcore import __version__

        out.print(f"llamakd {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="print the version and exit")) -> None:
    """LlamaKD: data-free knowledge distillation of language models."""


def main() -> None:
    from kdcore.tuning import tune_process

    tune_process()  # the long-running commands' allocator settings (kdcore/tuning.py)
    try:
        app()
    except SystemExit as e:
        if e.code == 2:  # a usage mistake (missing argument, unknown option) is a user mistake: exit 1
            raise SystemExit(1) from None
        raise
    except KDError as e:
        _fail(e)
    except ImportError as e:  # a package a feature needs is not installed: say which, not where
        missing = missing_package(e)
        if missing is None:
            raise
        _fail(missing)


def _fail(e: KDError):
    # the message quotes the user's keys and values: print them as they are, never as markup
    err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, markup=True, soft_wrap=True)
    raise SystemExit(1) from None


def _spec(path: Path):
    from kdcore.spec import load_spec

    return load_spec(path)


@app.command()
def validate(spec: Path = SpecArg, json_out: bool = typer.Option(False, "--json", help="print JSON"),
             check: bool = typer.Option(False, "--check", help="also draw a few samples twice from each sampler "
                                        "(alone and in a batch) and report one that is not a pure function of "
                                        "(seed, index); runs the teacher for samplers that need it")):
    """Validate a spec; print it resolved (defaults filled in), the student's size and initial weights.
    Reads the teacher's config, never its weights (unless --check runs a sampler that needs them)."""
    s = _spec(spec)  # before the heavy imports below: most mistakes are reported at once

    from kdcore.build import Builder
    from kdcore.train import count_parameters, student_seq_len

    builder = Builder(s)
    problems: list[tuple[str, str]] = []

    def attempt(build):  # collect the problems of every component, to report them all at once
        try:
            return build()
        except SpecError as e:
            problems.extend(e.problems)

    student = attempt(lambda: builder.student(student_seq_len(s)))  # the length training builds it with
    samplers = {name: attempt(lambda: builder.sampler(name)) for name in s.datasets}
    attempt(builder.check_eval)
    for i in range(len(s.phases)):
        attempt(lambda: builder.losses(i))
        if student is not None:
            attempt(lambda: builder.scheduler(i, builder.optimizer(i, student.parameters()), 1))
        if student is not None:
            attempt(lambda: builder.check_phase(i, student))
    if check:
        for name, sampler in samplers.items():
            if sampler is not None:
                attempt(lambda: builder.check_purity(name, sampler))
    if problems:
        raise SpecError(s.source, list(dict.fromkeys(problems)))
    info = {"spec": s.resolved(), "teacher_vocab": builder.teacher.vocab_size,
            "student_parameters": count_parameters(student),
            "student_init": getattr(student, "init_source", "random (seeded by phases[0].seed)")}
    if json_out:
        out.print_json(json.dumps(info))
        return
    out.print_json(json.dumps(info["spec"]))
    out.print(f"[green]{escape(str(spec))}: valid[/green] — teacher vocab {info['teacher_vocab']}, "
              f"student '{s.student.name}' has {info['student_parameters']:,} parameters" + (", samplers pure" if check else ""),
              soft_wrap=True)  # a long path stays whole (a folded one cannot be copied)
    out.print(f"initial weights: {escape(info['student_init'])}", highlight=False)


@app.command()
def plugins(kind: Optional[str] = typer.Option(None, help="only this kind: teacher, sampler, student, loss"),
            spec: Optional[Path] = typer.Option(None, "--spec", help="also the plugins this spec names")):
    """List every component: its kind, name, where it comes from and its parameters."""
    from kdcore.registry import KINDS, kind_plural, load_registry
    from kdcore.spec import spec_plugins

    if kind is not None and kind not in KINDS:
        raise KDError(f"unknown kind '{kind}'{did_you_mean(kind, list(KINDS))}")
    if spec is None:
        registry = load_registry()
    else:
        modules = spec_plugins(spec)
        try:
            registry = load_registry(modules, spec.parent)
        except KDError as e:
            raise SpecError(str(spec), [("plugins", str(e))]) from None
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
    """Describe a generated store: spec, teacher, arrays, size, completion, damage and target
    diagnostics. Exit code 1 when a block is damaged (after the report), as for any bad input."""
    from kdcore.inspect import inspect_store, print_report

    report = inspect_store(store, verify=verify)
    if json_out:
        out.print_json(json.dumps(report))
    else:
        print_report(report, out)
    if report["damaged"]:
        raise typer.Exit(1)


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="run folders (runs/<experiment>) or specs"),
            output: Optional[Path] = typer.Option(None, "--out", help="write compare.md/.json/.png here")):
    """Evaluation metrics of several runs side by side, with the baselines."""
    from kdcore.compare import compare_runs

    compare_runs(runs, output, out)


@app.command()
def study(folders: list[Path] = typer.Argument(..., help="folders of specs, e.g. experiments/study"),
          output: Optional[Path] = typer.Option(None, "--out", help="default: <runs_dir>/study"),
          complete_only: bool = typer.Option(False, "--complete-only",
                                             help="compare the specs whose runs are complete; run nothing")):
    """Run every spec in the folders (resumable), then compare them: a table per evaluation text, and
    agreement and KL against the budget where a recipe ran at several."""
    from kdcore.study import run_study

    run_study(folders, output, complete_only)


@app.command()
def sample(spec: Path = SpecArg, prompt: str = typer.Argument(..., help="text to continue"),
           max_new_tokens: int = typer.Option(24, min=0, help="tokens to add"),
           temperature: float = typer.Option(0.0, min=0.0, help="0: greedy; else sample at this temperature"),
           top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="nucleus sampling (with temperature > 0)"),
           seed: int = typer.Option(0, min=0, help="seed of the sampling"),
           chat: bool = typer.Option(False, help="wrap the prompt in the tokenizer's chat template")):
    """The teacher's and the trained student's continuations of PROMPT, side by side."""
    from kdcore.sample import continue_both

    rows = continue_both(_spec(spec), prompt, max_new_tokens, temperature, top_p, seed, chat)
    table = Table(title=f"{escape(prompt)!r} ({'greedy' if temperature == 0 else f'T={temperature:g}, top-p {top_p:g}'})",
                  show_lines=True)
    table.add_column("model")
    table.add_column("continuation", overflow="fold")
    for who, text in rows:
        table.add_row(who, escape(repr(text)))
    out.print(table)


if __name__ == "__main__":
    main()
