"""Turn a validated spec into components: the teacher (built once, lazily), samplers, student, losses."""

from __future__ import annotations

from functools import cached_property

from kdcore.components import BuildContext
from kdcore.errors import KDError, SpecError
from kdcore.spec import ComponentRef, Spec


class Builder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.registry = spec.registry

    def _make(self, ref: ComponentRef, ctx: BuildContext, loc: str):
        factory = self.registry.get(ref.kind, ref.name).resolve()
        try:
            return factory(ref.params, ctx)
        except KDError as e:
            # component errors name their own key; anchor them at the component's place in the spec
            raise SpecError(self.spec.source, [(loc, str(e))]) from None

    @cached_property
    def teacher(self):
        ctx = BuildContext(vocab_size=0, max_seq_len=0, base_dir=self.spec.base_dir)
        return self._make(self.spec.teacher, ctx, "teacher")

    def context(self, max_seq_len: int) -> BuildContext:
        ctx = BuildContext(
            vocab_size=self.teacher.vocab_size,
            max_seq_len=max_seq_len,
            base_dir=self.spec.base_dir,
            teacher=lambda: self.teacher,
        )
        ctx.build = lambda kind, ref: self._make(ref, ctx, f"{kind} '{ref.name}'")
        return ctx

    def sampler(self, dataset: str):
        ds = self.spec.datasets[dataset]
        self.check_dataset(dataset)
        return self._make(ds.sampler, self.context(ds.max_seq_len), f"datasets.{dataset}.sampler")

    def check_dataset(self, dataset: str) -> None:
        ds = self.spec.datasets[dataset]
        limit = getattr(self.teacher, "max_positions", None)
        if limit and ds.max_seq_len > limit:
            raise SpecError(self.spec.source, [(f"datasets.{dataset}.max_seq_len",
                            f"{ds.max_seq_len} is longer than the teacher's {limit} positions")])
        if ds.logits == "topk" and ds.topk > self.teacher.vocab_size:
            raise SpecError(self.spec.source, [(f"datasets.{dataset}.topk",
                            f"{ds.topk} is larger than the vocabulary ({self.teacher.vocab_size})")])

    def student(self, max_seq_len: int):
        return self._make(self.spec.student, self.context(max_seq_len), "student")

    def losses(self, phase_index: int):
        phase = self.spec.phases[phase_index]
        ctx = self.context(self.spec.datasets[phase.dataset].max_seq_len)
        return [
            (loss.name, loss.weight, self._make(loss, ctx, f"phases[{phase_index}].losses[{j}]"))
            for j, loss in enumerate(phase.losses)
        ]
