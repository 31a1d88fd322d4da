"""The `kd` command line: arguments in, results out, and the one place problems become messages and
exit code 1 (`--traceback` shows the whole traceback of a plugin's failure instead).

Imports of torch, transformers and zarr happen inside the commands, so `kd --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from kdcore.problems import KDError, did_you_mean, missing_package
from kdcore.report.console import reporter

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LlamaKD: data-free knowledge distillation of language models.")
SpecArg = typer.Argument(..., help="experiment spec (TOML)", show_default=False)
_settings = {"traceback": False}


def _version(value: bool) -> None:
    if value:
        from kdcore import __version__

        reporter.out.print(f"llamakd {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="print the version and exit"),
             traceback: bool = typer.Option(False, "--traceback", help="on a failure in a plugin's code, "
                                            "print the whole traceback as well")) -> None:
    """LlamaKD: data-free knowledge distillation of language models."""
    _settings["traceback"] = traceback


def main() -> None:
    from kdcore.system.tuning import tune_process

    tune_process()  # the long-running commands' allocator settings (kdcore/system/tuning.py)
    args = sys.argv[1:]
    if "--traceback" in args[1:]:  # `kd validate --traceback SPEC` means what `kd --traceback validate SPEC` does
        args = ["--traceback", *(a for a in args if a != "--traceback")]
    try:
        app(args)
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
    if _settings["traceback"]:
        import traceback

        for cause in dict.fromkeys(p.cause for p in e.problems if p.cause is not None):
            traceback.print_exception(cause, file=sys.stderr)
    lines = str(e).split("\n")
    reporter.problem(lines[0])
    for line in lines[1:]:
        reporter.err.print(escape(line), highlight=False, soft_wrap=True)
    raise SystemExit(1) from None


def _spec(path: Path):
    from kdcore.config.load import load_spec

    try:
        spec = load_spec(path)
    except KDError as e:
        raise _with_student_package(e, path) from None
    _warn(spec.registry)
    return spec


def _with_student_package(e: KDError, path: Path) -> KDError:
    """An unknown student whose run saved it from an installed package (the package was uninstalled
    since, or this is another machine): the problem names the package to install."""
    unknown = [p for p in e.problems if p.key == "student.name" and p.message.startswith("unknown student")]
    if not unknown:
        return e
    from kdcore.config.load import read_toml
    from kdcore.config.spec import Spec
    from kdcore.problems import Problem
    from kdcore.run.artifact import install_hint, recorded_package
    from kdcore.run.folder import RunFolder

    data = read_toml(path)
    run = Path(str(data.get("runs_dir", Spec.model_fields["runs_dir"].default))) / str(data.get("name", ""))
    student = data.get("student", {}).get("name") if isinstance(data.get("student"), dict) else None
    package = recorded_package(RunFolder(run).reverted, student)
    if package is None:
        return e
    hint = f"; {run} holds a trained '{student}': {install_hint(package)}"
    return KDError(*(Problem(p.message + hint, p.key, p.file, p.cause) if p in unknown else p for p in e.problems))


def _warn(registry) -> None:
    for warning in registry.warnings:  # an installed plugin skipped, a hook without @hookimpl
        reporter.note(f"warning: {warning}", "yellow")


@app.command()
def validate(spec: Path = SpecArg, json_out: bool = typer.Option(False, "--json", help="print JSON"),
             check: bool = typer.Option(False, "--check", help="also draw a few samples twice from every sampler, "
                                        "built-in ones too (alone and in a batch), and report one that is not a pure "
                                        "function of (seed, index); runs the teacher for samplers that need it")):
    """Validate a spec; print it resolved (defaults filled in), the student's size and initial weights.
    Components that are not built in are tried on tiny inputs (purity, shapes, reverted student, losses).
    Reads the teacher's config, never its weights (unless a sampler tried needs them)."""
    s = _spec(spec)  # before the heavy imports below: most mistakes are reported at once
    from kdcore.stages.validate import validate as check_spec

    info = check_spec(s, purity=check)
    if json_out:
        reporter.out.print_json(json.dumps(info))
        return
    reporter.out.print_json(json.dumps(info["spec"]))
    reporter.out.print(f"[green]{escape(str(spec))}: valid[/green] — teacher vocab {info['teacher_vocab']}, "
                       f"student '{s.student.name}' has {info['student_parameters']:,} parameters"
                       + (", samplers pure" if check else ""), soft_wrap=True)  # a long path stays whole
    reporter.out.print(f"initial weights: {escape(info['student_init'])}", highlight=False)
    if info["tried"]:
        reporter.out.print(f"tried on tiny inputs: {escape(', '.join(info['tried']))}", highlight=False, soft_wrap=True)


@app.command()
def plugins(kind: Optional[str] = typer.Option(None, help="only this kind: teacher, sampler, student, loss, "
                                               "optimizer, scheduler"),
            spec: Optional[Path] = typer.Option(None, "--spec", help="also the plugins this spec names"),
            json_out: bool = typer.Option(False, "--json", help="print JSON")):
    """List every component: its kind, name, where it comes from and its parameters (with defaults and
    descriptions)."""
    from kdcore.config.load import spec_plugins
    from kdcore.plugin.registry import KINDS, describe, load_registry
    from kdcore.report.plugins_view import plugin_tables

    if kind is not None and kind not in KINDS:
        raise KDError(f"unknown kind '{kind}'{did_you_mean(kind, list(KINDS))}")
    if spec is None:
        registry = load_registry()
    else:
        modules = spec_plugins(spec)
        try:
            registry = load_registry(modules, spec.parent)
        except KDError as e:
            raise e.at("plugins", str(spec)) from None
    _warn(registry)
    listing = describe(registry, kind)
    if json_out:
        reporter.out.print_json(json.dumps(listing))
        return
    for table in plugin_tables(listing):
        reporter.out.print(table)


@app.command()
def generate(spec: Path = SpecArg, dataset: Optional[list[str]] = typer.Option(None, help="only these datasets"),
             overwrite: bool = typer.Option(False, help="regenerate a store made from a different spec"),
             repair: bool = typer.Option(False, help="verify every block's checksums and regenerate the damaged ones")):
    """Generate the spec's datasets into the store (resumes; skips complete ones)."""
    from kdcore.stages.runner import Runner

    Runner(_spec(spec)).generate(dataset or None, overwrite=overwrite, repair=repair)


@app.command()
def train(spec: Path = SpecArg, restart: bool = typer.Option(False, help="discard checkpoints and train from scratch")):
    """Train the student through the spec's phases (resumes from the last checkpoint)."""
    from kdcore.stages.runner import Runner

    Runner(_spec(spec)).train(restart=restart)


@app.command(name="eval")
def evaluate(spec: Path = SpecArg):
    """Revert the trained student and compare it with the teacher on real text."""
    from kdcore.stages.runner import Runner

    Runner(_spec(spec)).evaluate()


@app.command()
def run(spec: Path = SpecArg, dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, run nothing"),
        overwrite: bool = typer.Option(False, help="regenerate stores made from a different spec")):
    """All stages: generate, train, revert, evaluate — each skipped when already complete."""
    from kdcore.report.plan_view import plan_table
    from kdcore.stages.runner import Runner

    runner = Runner(_spec(spec))
    if dry_run:
        reporter.out.print(plan_table(runner.plan(), f"{escape(str(spec))}: plan"))
        return
    runner.run(overwrite=overwrite)


@app.command()
def inspect(store: Path = typer.Argument(..., help="a store folder, e.g. store/negten"),
            json_out: bool = typer.Option(False, "--json", help="print JSON"),
            verify: bool = typer.Option(True, help="read every block and check its checksums")):
    """Describe a generated store: spec, teacher, arrays, size, completion, damage and target
    diagnostics. Exit code 1 when a block is damaged (after the report), as for any bad input."""
    from kdcore.report.inspect_view import print_report
    from kdcore.store.inspect import inspect_store

    report = inspect_store(store, verify=verify)
    if json_out:
        reporter.out.print_json(json.dumps(report))
    else:
        print_report(report, reporter.out)
    if report["damaged"]:
        raise typer.Exit(1)


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="run folders (runs/<experiment>) or specs"),
            output: Optional[Path] = typer.Option(None, "--out", help="write compare.md/.json/.png here")):
    """Evaluation metrics of several runs side by side, with the baselines."""
    from kdcore.report.compare import compare_runs

    compare_runs(runs, output)


@app.command()
def study(folders: list[Path] = typer.Argument(..., help="folders of specs, e.g. experiments/study"),
          output: Optional[Path] = typer.Option(None, "--out", help="default: <runs_dir>/study"),
          complete_only: bool = typer.Option(False, "--complete-only",
                                             help="compare the specs whose runs are complete; run nothing"),
          reference: Optional[str] = typer.Option(None, "--reference", metavar="RECIPE",
                                                  help="also set every run against this recipe's run at its "
                                                       "budget (shares.md): agreement as a share of it")):
    """Run every spec in the folders (resumable), then compare them: a table per evaluation text, and
    agreement and KL against the budget where a recipe ran at several."""
    from kdcore.stages.study import run_study

    run_study(folders, output, complete_only, reference)


@app.command()
def sample(spec: Path = SpecArg, prompt: str = typer.Argument(..., help="text to continue"),
           max_new_tokens: int = typer.Option(24, min=0, help="tokens to add"),
           temperature: float = typer.Option(0.0, min=0.0, help="0: greedy; else sample at this temperature"),
           top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="nucleus sampling (with temperature > 0)"),
           seed: int = typer.Option(0, min=0, help="seed of the sampling"),
           chat: bool = typer.Option(False, help="wrap the prompt in the tokenizer's chat template")):
    """The teacher's and the trained student's continuations of PROMPT, side by side."""
    from kdcore.stages.sample import continue_both

    rows = continue_both(_spec(spec), prompt, max_new_tokens, temperature, top_p, seed, chat)
    table = Table(title=f"{escape(prompt)!r} ({'greedy' if temperature == 0 else f'T={temperature:g}, top-p {top_p:g}'})",
                  show_lines=True)
    table.add_column("model")
    table.add_column("continuation", overflow="fold")
    for who, text in rows:
        table.add_row(who, escape(repr(text)))
    reporter.out.print(table)


if __name__ == "__main__":
    main()
