"""The stages in order — generate, train (phases), revert, evaluate — each skipped when complete."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from kdcore import dist
from kdcore.build import Builder
from kdcore.errors import KDError, StoreError
from kdcore.metrics import MetricsLog
from kdcore.spec import Spec
from kdcore.store import human_bytes

console = Console()


class Runner:
    def __init__(self, spec: Spec, progress: bool = True):
        dist.init()  # before anything asks for the rank (metrics are written by rank 0 only)
        self.spec, self.progress = spec, progress
        self.builder = Builder(spec)

    def datasets_in_use(self) -> list[str]:
        return list(dict.fromkeys(p.dataset for p in self.spec.phases))

    def generate(self, datasets: list[str] | None = None, overwrite: bool = False, repair: bool = False) -> None:
        from kdcore.generate import generate, layout_for, space_error

        names = datasets or self.datasets_in_use()
        for name in names:
            if name not in self.spec.datasets:
                raise KDError(f"{self.spec.source}: no dataset '{name}'")
        if len(names) > 1:  # room for all of them, not only the first (each store checks itself too)
            teacher = self.builder.teacher
            layouts = {n: layout_for(self.spec, n, teacher.vocab_size, self.builder.sampler(n).produces) for n in names}
            error = dist.broadcast_object(space_error(self.spec, layouts) if dist.is_main() else None)
            if error:
                raise StoreError(error)
        log = MetricsLog(self.spec.run_path / "metrics.jsonl", self.spec.registry, enabled=dist.is_main())
        for name in names:
            store = generate(self.spec, name, self.builder, overwrite=overwrite, progress=self.progress, log=log,
                             repair=repair)
            if dist.is_main():
                console.print(f"[green]✓[/green] {store.path}: {store.layout.num_samples} samples, complete")

    def train(self, restart: bool = False):
        from kdcore.plots import plot_training
        from kdcore.train import Trainer

        trainer = Trainer(self.spec, self.builder, progress=self.progress)
        if not restart and trainer.is_complete():
            console.print(f"[green]✓[/green] {trainer.run_dir}: student already trained (skipped)")
            return trainer.load_trained()
        student = trainer.train(restart=restart)
        if dist.is_main():
            plot_training(trainer.run.metrics, trainer.run_dir / "training.png")
            console.print(f"[green]✓[/green] trained student saved in {trainer.run.student_dir}, "
                          f"reverted in {trainer.run.reverted}")
        return student

    def up_to_date(self) -> bool:
        """Whether the evaluation report matches the spec (so every stage before it is complete)."""
        from kdcore.evaluate import eval_identity, report_dir

        path = report_dir(self.spec) / "report.json"
        try:
            return json.loads(path.read_text()).get("identity_hash") == eval_identity(self.spec)
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    def evaluate(self, force: bool = True) -> dict:
        from kdcore.evaluate import evaluate, print_summary, report_dir

        path = report_dir(self.spec) / "report.json"
        if not force and self.up_to_date():
            report = json.loads(path.read_text())
            console.print(f"[green]✓[/green] {path}: evaluation up to date (skipped)")
            print_summary(report, console)
            return report
        report = evaluate(self.spec, self.builder)
        print_summary(report, console)
        console.print(f"report: {report_dir(self.spec) / 'report.md'}")
        return report

    def run(self, overwrite: bool = False) -> dict | None:
        self.builder.check_eval()  # a bad evaluation text is found before hours of generation
        self.generate(overwrite=overwrite)
        self.train()
        dist.barrier()
        if dist.is_main():
            return self.evaluate(force=False)
        return None

    def print_plan(self) -> None:
        """What `kd run` would do, with sizes, without loading the teacher's weights."""
        from kdcore.generate import layout_for

        teacher = self.builder.teacher
        table = Table(title=f"{self.spec.source}: plan")
        for col in ("stage", "what", "teacher forwards", "tokens (at most)", "store size", "status"):
            table.add_column(col)
        for name in self.datasets_in_use():
            ds = self.spec.datasets[name]
            produces = self.builder.sampler(name).produces
            layout = layout_for(self.spec, name, teacher.vocab_size, produces)
            forwards = -(-ds.samples // ds.batch_size)
            table.add_row("generate", f"{name}: {ds.samples} x {ds.max_seq_len} ({ds.sampler.name})",
                          f"{forwards} batches of {ds.batch_size}", f"{ds.samples * ds.max_seq_len:,}",
                          human_bytes(layout.bytes_per_sample() * ds.samples), self.store_status(name))
        for i, p in enumerate(self.spec.phases):
            N = self.spec.datasets[p.dataset].samples
            steps = -(-N // p.batch_size) * p.epochs
            steps = min(steps, p.max_steps) if p.max_steps else steps
            table.add_row("train", f"phase {i}: {p.dataset}, {p.optimizer.name} lr {p.lr:g}, {steps} steps of {p.batch_size}",
                          "", "", "", "")
        table.add_row("eval", f"{self.spec.eval.windows} windows of {', '.join(self.spec.eval.texts)}", "", "", "", "")
        console.print(table)

    def store_status(self, dataset: str) -> str:
        """What `kd generate` would find: nothing, a store to resume, a complete one, or another spec's."""
        from kdcore.store import Store

        path = self.spec.store_path(dataset)
        if not path.exists():
            return "to generate"
        try:
            store = Store.open(path)
        except KDError as e:  # reported, not crashed on
            return f"unreadable: {e}"
        if store.differences(self.spec, dataset):
            return "made by another spec: refused (--overwrite replaces it)"
        return "complete" if store.complete else "resume"
