"""A run is a list of stages: generate each dataset a phase uses, train, evaluate. Each runs unless
its status says its result is there and current (`kdcore.stages.stage`); the dry-run asks each for
its plan.
"""

from __future__ import annotations

from kdcore.config.spec import Spec
from kdcore.problems import KDError
from kdcore.report.console import reporter
from kdcore.run.folder import RunFolder
from kdcore.run.metrics_log import MetricsLog
from kdcore.stages.builder import Builder
from kdcore.stages.evaluate import EvaluateStage
from kdcore.stages.generate import GenerateStage
from kdcore.stages.stage import PlanRow
from kdcore.stages.train import TrainStage
from kdcore.stages.validate import validate
from kdcore.store.lifecycle import space_problem
from kdcore.system import dist


class Runner:
    def __init__(self, spec: Spec):
        dist.init()  # before anything asks for the rank (metrics are written by rank 0 only)
        self.spec = spec
        self.builder = Builder(spec)

    def generate_stages(self, datasets: list[str] | None = None) -> list[GenerateStage]:
        names = datasets or self.spec.datasets_in_use
        unknown = [n for n in names if n not in self.spec.datasets]
        if unknown:
            raise KDError(f"{self.spec.source}: no dataset '{unknown[0]}'")
        return [GenerateStage(self.spec, name, self.builder) for name in names]

    def stages(self) -> list:
        return [*self.generate_stages(), TrainStage(self.spec), EvaluateStage(self.spec, self.builder)]

    def generate(self, datasets: list[str] | None = None, overwrite: bool = False, repair: bool = False) -> None:
        stages = self.generate_stages(datasets)
        if len(stages) > 1:  # room for all of them, not only the first (each store checks itself too)
            self.check_space(stages)
        log = MetricsLog(RunFolder(self.spec).metrics, self.spec.registry, enabled=dist.is_main())
        for stage in stages:
            store = stage.run(overwrite=overwrite, repair=repair, log=log)
            reporter.done(f"{store.path}: {store.layout.num_samples} samples, complete")

    def check_space(self, stages: list[GenerateStage]) -> None:
        problem = None
        if dist.is_main():
            teacher = self.builder.teacher
            stores = {f"datasets.{s.dataset}": (s.path, s.layout(teacher.vocab_size, s.checked_sampler().produces), False)
                      for s in stages}
            problem = space_problem(self.spec.source, stores)
        problem = dist.broadcast_object(problem)
        if problem:
            raise KDError(problem)

    def train(self, restart: bool = False):
        return TrainStage(self.spec).run(restart)

    def evaluate(self, force: bool = True) -> dict:
        return EvaluateStage(self.spec, self.builder).run(force)

    def run(self, overwrite: bool = False) -> dict | None:
        """Every stage, each skipped when complete and current."""
        validate(self.spec)  # everything `kd validate` checks (plugins tried too), before the first teacher forward
        self.generate(overwrite=overwrite)
        self.train()
        dist.barrier()
        return self.evaluate(force=False) if dist.is_main() else None

    def plan(self) -> list[PlanRow]:
        """What `kd run` would do, with sizes, without loading the teacher's weights."""
        return [row for stage in self.stages() for row in stage.plan()]

    def up_to_date(self) -> bool:
        """Whether the evaluation report matches the spec (so every stage before it is complete)."""
        return EvaluateStage(self.spec, self.builder).status().done
