"""Turn a validated spec into components: the teacher (built once, lazily), samplers, student, losses."""

from __future__ import annotations

from functools import cached_property

from kdcore.components import BuildContext
from kdcore.errors import KDError, SpecError
from kdcore.spec import ComponentRef, Spec, all_refs


class Builder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.registry = spec.registry
        self._locs = {id(ref): loc for loc, ref in all_refs(spec)}  # where each component sits in the spec

    def _make(self, ref: ComponentRef, ctx: BuildContext, loc: str | None = None):
        factory = self.registry.get(ref.kind, ref.name).resolve()
        return self._anchored(ref, loc, lambda: factory(ref.params, ctx))

    def _anchored(self, ref: ComponentRef, loc: str | None, call):
        """`call()`, its KDError turned into a SpecError at the component's place in the spec."""
        loc = self._locs.get(id(ref), loc or ref.kind)
        try:
            return call()
        except SpecError:
            raise
        except KDError as e:
            # components say "sampler.high: ..."; anchor that key at the component's place in the spec
            msg = str(e)
            head, sep, rest = msg.partition(": ")
            if sep and head.startswith(f"{ref.kind}.") and " " not in head:
                raise SpecError(self.spec.source, [(f"{loc}.{head[len(ref.kind) + 1:]}", rest)]) from None
            if sep and head == ref.kind:
                msg = rest
            raise SpecError(self.spec.source, [(loc, msg)]) from None

    @cached_property
    def teacher(self):
        ctx = BuildContext(vocab_size=0, max_seq_len=0, base_dir=self.spec.base_dir)
        return self._make(self.spec.teacher, ctx, "teacher")

    @cached_property
    def vocab_size(self) -> int:
        """From a store generated for this very spec (no teacher load, e.g. for `kd train`), else the teacher's."""
        from kdcore.errors import StoreError
        from kdcore.spec import spec_hash
        from kdcore.store import Store

        for name in self.spec.datasets:
            path = self.spec.store_path(name)
            if not (path / "zarr.json").exists():
                continue
            try:
                store = Store.open(path)
            except StoreError:
                continue
            # a store of the same name made by another spec says nothing about this teacher
            if store.attrs.get("identity_hash") == spec_hash(self.spec.dataset_identity(name)):
                return store.layout.vocab_size
        return self.teacher.vocab_size

    def context(self, max_seq_len: int) -> BuildContext:
        ctx = BuildContext(
            vocab_size=self.vocab_size,
            max_seq_len=max_seq_len,
            base_dir=self.spec.base_dir,
            teacher=lambda: self.teacher,
        )
        ctx.build = lambda kind, ref: self._make(ref, ctx)
        return ctx

    def sampler(self, dataset: str, check: bool = True):
        ds = self.spec.datasets[dataset]
        if check:  # against the teacher's limits (generation); training rebuilds from a checked store
            self.check_dataset(dataset)
        sampler = self._make(ds.sampler, self.context(ds.max_seq_len), f"datasets.{dataset}.sampler")
        if check and sampler.produces == "soft" and ds.inputs == "seed" and getattr(sampler, "runs_teacher", False):
            raise SpecError(self.spec.source, [(f"datasets.{dataset}.inputs",
                            "'seed' would re-run the teacher's generation on every training batch (the sampler "
                            "mixes teacher-generated ids into float rows); use inputs = 'dense'")])
        return sampler

    def check_dataset(self, dataset: str) -> None:
        ds = self.spec.datasets[dataset]
        limit = getattr(self.teacher, "max_positions", None)
        if limit and ds.max_seq_len > limit:
            raise SpecError(self.spec.source, [(f"datasets.{dataset}.max_seq_len",
                            f"{ds.max_seq_len} is longer than the teacher's {limit} positions")])
        if ds.logits == "topk" and ds.topk > self.teacher.vocab_size:
            raise SpecError(self.spec.source, [(f"datasets.{dataset}.topk",
                            f"{ds.topk} is larger than the vocabulary ({self.teacher.vocab_size})")])

    def check_phase(self, index: int, student) -> None:
        """What only shows once dataset, student and losses meet: refused before any training step."""
        phase = self.spec.phases[index]
        ds = self.spec.datasets[phase.dataset]
        problems = []
        supported = tuple(getattr(student, "positions", ("last",)))
        if ds.positions not in supported:
            problems.append((f"datasets.{phase.dataset}.positions",
                             f"'{ds.positions}' targets, but student '{self.spec.student.name}' predicts only "
                             f"{', '.join(supported)}: use positions = 'last' or a student that predicts every position (llama)"))
        if ds.logits == "topk":
            for j, loss in enumerate(phase.losses):
                if getattr(loss.params, "temperature", 1.0) != 1.0:
                    problems.append((f"phases[{index}].losses[{j}].temperature",
                                     "must be 1 with top-k targets (the tempered tail mass is not recoverable "
                                     "from k values); use logits = 'dense' to distil at a temperature"))
        if phase.init == "kaiming" and hasattr(student, "init_weights"):
            problems.append((f"phases[{index}].init", "'kaiming' would wipe the teacher's weights the student starts from "
                             "(student.init); keep one of the two"))
        if problems:
            raise SpecError(self.spec.source, problems)

    def check_eval(self) -> None:
        """Never evaluate on text a student trained on."""
        from kdcore.texts import resolve_text

        evaluated = resolve_text(self.spec.eval.text, self.spec.base_dir).resolve()
        for loc, ref in all_refs(self.spec):
            text = getattr(ref.params, "text", None) if ref.kind == "sampler" else None
            if text and resolve_text(text, self.spec.base_dir).resolve() == evaluated:
                raise SpecError(self.spec.source, [("eval.text", f"{self.spec.eval.text} is also training text ({loc}.text): "
                                                    "evaluate on text the student never saw")])

    def student(self, max_seq_len: int):
        return self._make(self.spec.student, self.context(max_seq_len), "student")

    def init_student(self, student) -> None:
        """A student that starts from the teacher's weights (it has `init_weights`) gets them; others keep theirs."""
        init = getattr(student, "init_weights", None)
        if init is not None:
            self._anchored(self.spec.student, "student", lambda: init(self.teacher))

    def losses(self, phase_index: int):
        phase = self.spec.phases[phase_index]
        ctx = self.context(self.spec.datasets[phase.dataset].max_seq_len)
        return [
            (loss.name, loss.weight, self._make(loss, ctx, f"phases[{phase_index}].losses[{j}]"))
            for j, loss in enumerate(phase.losses)
        ]

