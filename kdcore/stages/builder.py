"""A validated spec into components: the teacher (built once, lazily), samplers, student, losses,
optimizers and schedules, each checked against its kind's contract when it is made.

Every component is made, and every call core makes into its code is run, under its `Origin` (kind,
name, plugin, key and file): a plugin's exception or broken contract is one attributed problem
(`kdcore.plugin.calls`). What only shows once components meet (a dataset past the teacher's
positions, a student that cannot learn a dataset's targets) is `kdcore.stages.checks`'s.
"""

from __future__ import annotations

from functools import cached_property

from kdcore.config.spec import Spec
from kdcore.plugin.calls import Attributed, Origin, code_folder, plugin_code
from kdcore.plugin.contracts import BuildContext, CheckedSampler, check_contract
from kdcore.plugin.params import ComponentRef
from kdcore.problems import KDError
from kdcore.texts import resolve_text


class Builder:
    def __init__(self, spec: Spec, vocab_size: int | None = None):
        """`vocab_size`: known already (from a store made for this spec), so that building a student
        or a sampler does not read the teacher's config."""
        self.spec = spec
        self.registry = spec.registry
        self._vocab_size = vocab_size
        self._locs = {id(ref): loc for loc, ref in spec.all_refs()}  # where each component sits in the spec

    # --- making one, attributed ---
    def origin(self, ref: ComponentRef, loc: str | None = None) -> Origin:
        component = self.registry.get(ref.kind, ref.name)
        target = component.target if not isinstance(component.target, str) else None
        return Origin(ref.kind, ref.name, component.source, self._locs.get(id(ref), loc or ref.kind), self.spec.source,
                      code_folder(target) if target is not None else "")

    def _make(self, ref: ComponentRef, ctx: BuildContext, loc: str | None = None):
        origin = self.origin(ref, loc)
        try:
            target = self.registry.get(ref.kind, ref.name).resolve()
        except KDError as e:  # a lazy "module:attr" that does not import
            raise e.at(origin.key, origin.file) from None
        with plugin_code(origin, "its constructor"):
            try:
                made = target(ref.params, ctx)
            except (MemoryError, RuntimeError) as e:  # sizes in the spec past this machine: say which component
                if not out_of_memory(e):
                    raise
                raise KDError(origin.problem(f"needs more memory than this machine has to build: "
                                             f"{str(e).splitlines()[0][:200]}")) from None
        broken = check_contract(ref.kind, made)
        if broken:  # a plugin that misses a piece is told here, not deep inside a stage
            raise KDError(*(origin.problem(f"does not keep the {ref.kind} contract (kdcore.api.{ref.kind.title()}): "
                                           f"{p.message}") for p in broken))
        return made

    def context(self, max_seq_len: int, **more) -> BuildContext:
        ctx = BuildContext(vocab_size=self.vocab_size, max_seq_len=max_seq_len, base_dir=self.spec.base_dir,
                           teacher=lambda: self.teacher, **more)
        ctx.build = lambda kind, ref: self._make(ref, ctx)
        return ctx

    # --- the components ---
    @cached_property
    def teacher(self):
        ctx = BuildContext(vocab_size=0, max_seq_len=0, base_dir=self.spec.base_dir)
        return Attributed(self._make(self.spec.teacher, ctx, "teacher"), self.origin(self.spec.teacher, "teacher"))

    @property
    def vocab_size(self) -> int:
        return self._vocab_size if self._vocab_size is not None else self.teacher.vocab_size

    @cached_property
    def eval_texts(self) -> tuple:
        ev = self.spec.eval
        keys = [("eval.text", ev.text)] + [(f"eval.extra_texts[{i}]", t) for i, t in enumerate(ev.extra_texts)]
        out = []
        for key, ref in keys:  # checked with the spec already: only a file removed since fails here
            try:
                out.append(resolve_text(ref, self.spec.base_dir, key="").resolve())
            except KDError as e:
                raise e.at(key, self.spec.source) from None
        return tuple(out)

    def sampler(self, dataset: str) -> CheckedSampler:
        """The dataset's sampler; every batch it draws is checked against the contract (ids in the
        vocabulary, shapes) and attributed."""
        ds = self.spec.datasets[dataset]
        ctx = self.context(ds.max_seq_len, eval_texts=self.eval_texts, batch_size=ds.batch_size)
        made = self._make(ds.sampler, ctx, f"datasets.{dataset}.sampler")
        return CheckedSampler(made, self.origin(ds.sampler), self.vocab_size, ds.max_seq_len)

    def student(self, max_seq_len: int | None = None):
        """The float-input student (an nn.Module: calls into it are attributed where core makes them)."""
        return self._make(self.spec.student, self.context(max_seq_len or self.spec.student_seq_len), "student")

    def init_student(self, student) -> None:
        """A student that starts from the teacher's weights (it has `init_weights`) gets them; others keep theirs."""
        init = getattr(student, "init_weights", None)
        if init is not None:
            with plugin_code(self.origin(self.spec.student), "init_weights()"):
                init(self.teacher)

    def losses(self, phase_index: int) -> list[tuple[str, float, Attributed]]:
        """(name, weight, loss) of each of the phase's losses, in spec order."""
        phase = self.spec.phases[phase_index]
        ds = self.spec.datasets[phase.dataset]
        ctx = self.context(ds.max_seq_len, logits=ds.logits, topk=ds.topk if ds.logits == "topk" else None,
                           positions=ds.positions)
        out = []
        for j, loss in enumerate(phase.losses):
            made = self._make(loss, ctx, f"phases[{phase_index}].losses[{j}]")
            out.append((loss.name, loss.weight, Attributed(made, self.origin(loss))))
        return out

    def optimizer(self, phase_index: int, parameters):
        """Phase `phase_index`'s optimizer over `parameters`, at the phase's lr."""
        phase = self.spec.phases[phase_index]
        make = self._make(phase.optimizer, self.context(0), f"phases[{phase_index}].optimizer")
        with plugin_code(self.origin(phase.optimizer), "making the optimizer"):
            return make(parameters, phase.lr)

    def scheduler(self, phase_index: int, optimizer, total_steps: int):
        """Phase `phase_index`'s lr schedule, and whether it is stepped per epoch with the mean loss."""
        phase = self.spec.phases[phase_index]
        make = self._make(phase.scheduler, self.context(0), f"phases[{phase_index}].scheduler")
        with plugin_code(self.origin(phase.scheduler), "making the schedule"):
            return make(optimizer, total_steps), bool(make.per_epoch)


def out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: Python's, torch's on the CPU (a RuntimeError) or on a GPU."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e)
