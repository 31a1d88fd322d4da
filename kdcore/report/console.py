"""The one place output goes: results to stdout, notes, progress and problems to stderr.

Library code never prints: it hands what a person should see to `reporter` (`note`, `show`, a
progress `bar`), and the command line is what prints problems with their exit code. Only the main
process of a torchrun job speaks. A caller that embeds LlamaKD can swap the consoles (`reporter.use`)
or silence it (`reporter.quiet = True`).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from kdcore.system import dist


class Reporter:
    def __init__(self):
        self.out = Console()  # results: tables, reports, JSON
        self.err = Console(stderr=True)  # notes, progress, problems
        self.quiet = False

    def use(self, out: Console, err: Console) -> None:
        self.out, self.err = out, err

    @property
    def speaks(self) -> bool:
        return not self.quiet and dist.is_main()

    def note(self, message: str, style: str = "") -> None:
        """A line of what happened ("store/x: complete", "regenerating block 3"), printed as written."""
        if self.speaks:
            text = f"[{style}]{escape(message)}[/{style}]" if style else escape(message)
            self.err.print(text, highlight=False, soft_wrap=True)

    def done(self, message: str) -> None:
        self.note(f"✓ {message}", "green")

    def show(self, renderable, **kw) -> None:
        """A result (a table, a report) on stdout."""
        if self.speaks:
            self.out.print(renderable, **kw)

    def problem(self, message: str) -> None:
        """A problem, as the command line reports it (`error: ...`); also when quiet."""
        self.err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)

    def bar(self, enabled: bool = True) -> Progress:
        """A progress bar for long work (on stderr; silent off the main process or when quiet)."""
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.err, disable=not (enabled and self.speaks),
            transient=False,  # the final state stays in logs too
        )


reporter = Reporter()
