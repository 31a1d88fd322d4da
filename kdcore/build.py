"""Turn a validated spec into components: the teacher (built once, lazily), samplers, student, losses."""

from __future__ import annotations

from functools import cached_property

from kdcore.components import BuildContext, CheckedSampler, check_contract, runs_teacher
from kdcore.errors import KDError, ParamError, SpecError
from kdcore.spec import ComponentRef, Spec, all_refs

# a store's byte offsets and numpy's indices are signed 64-bit
MAX_STORE_BYTES = 2**63 - 1


class Builder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.registry = spec.registry
        self._locs = {id(ref): loc for loc, ref in all_refs(spec)}  # where each component sits in the spec

    def _make(self, ref: ComponentRef, ctx: BuildContext, loc: str | None = None):
        loc = self._locs.get(id(ref), loc or ref.kind)
        component = self.registry.get(ref.kind, ref.name)
        made = self._anchored(ref, loc, lambda: component.resolve()(ref.params, ctx))
        missing = check_contract(ref.kind, made)
        if missing:  # a plugin that misses a piece is told here, not deep inside a stage
            raise SpecError(self.spec.source, [(loc, f"{ref.kind} '{ref.name}' (from {component.source}) does not "
                                                f"keep the {ref.kind} contract (kdcore.components): it lacks "
                                                f"{'; '.join(missing)}")])
        return made

    def _anchored(self, ref: ComponentRef, loc: str | None, call):
        """`call()`, its errors turned into a SpecError at the component's place in the spec."""
        loc = self._locs.get(id(ref), loc or ref.kind)
        try:
            return call()
        except ParamError as e:  # the key is the component's own: anchor it where the component sits
            raise SpecError(self.spec.source, [(e.at(loc), e.message)]) from None
        except SpecError:  # a nested component's, already anchored
            raise
        except KDError as e:
            raise SpecError(self.spec.source, [(loc, str(e))]) from None
        except (MemoryError, RuntimeError) as e:  # sizes in the spec past this machine: say which component
            if not out_of_memory(e):
                raise
            raise SpecError(self.spec.source, [(loc, "building it needs more memory than this machine has: "
                                                f"{str(e).splitlines()[0][:200]}")]) from None

    @cached_property
    def teacher(self):
        ctx = BuildContext(vocab_size=0, max_seq_len=0, base_dir=self.spec.base_dir)
        return self._make(self.spec.teacher, ctx, "teacher")

    @cached_property
    def vocab_size(self) -> int:
        """From a store generated for this very spec (no teacher load, e.g. for `kd train`), else the teacher's."""
        from kdcore.errors import StoreError
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
            if not store.differences(self.spec, name):
                return store.layout.vocab_size
        return self.teacher.vocab_size

    @cached_property
    def eval_texts(self) -> tuple:
        from kdcore.texts import resolve_text

        ev, out = self.spec.eval, []
        for key, ref in [("eval.text", ev.text)] + [(f"eval.extra_texts[{i}]", t) for i, t in enumerate(ev.extra_texts)]:
            try:
                out.append(resolve_text(ref, self.spec.base_dir, key="").resolve())
            except ParamError as e:  # checked with the spec already: only a file removed since lands here
                raise SpecError(self.spec.source, [(e.at(key), e.message)]) from None
        return tuple(out)

    def context(self, max_seq_len: int, **more) -> BuildContext:
        ctx = BuildContext(
            vocab_size=self.vocab_size,
            max_seq_len=max_seq_len,
            base_dir=self.spec.base_dir,
            teacher=lambda: self.teacher,
            **more,
        )
        ctx.build = lambda kind, ref: self._make(ref, ctx)
        return ctx

    def sampler(self, dataset: str, check: bool = True):
        ds = self.spec.datasets[dataset]
        if check:  # against the teacher's limits (generation); training rebuilds from a checked store
            self.check_dataset(dataset)
        sampler = self._make(ds.sampler, self.context(ds.max_seq_len, eval_texts=self.eval_texts,
                                                           batch_size=ds.batch_size),
                             f"datasets.{dataset}.sampler")
        # every batch it draws is checked against the contract (ids in the vocabulary, shapes)
        sampler = CheckedSampler(sampler, ds.sampler.name, self.vocab_size, ds.max_seq_len)
        if check:
            self.check_store(dataset, sampler)
        return sampler

    def check_store(self, dataset: str, sampler) -> None:
        """What the dataset's store would be, given what the sampler produces."""
        from kdcore.generate import layout_for

        ds = self.spec.datasets[dataset]
        if sampler.produces == "soft" and ds.inputs == "seed" and runs_teacher(sampler):
            raise SpecError(self.spec.source, [(f"datasets.{dataset}.inputs",
                            "'seed' would re-run the teacher's generation on every training batch (the sampler "
                            "mixes teacher-generated ids into float rows); use inputs = 'dense'")])
        per_sample = layout_for(self.spec, dataset, self.teacher.vocab_size, sampler.produces).bytes_per_sample()
        if per_sample * ds.samples > MAX_STORE_BYTES:
            raise SpecError(self.spec.source, [(f"datasets.{dataset}.samples",
                            f"{ds.samples} samples of {per_sample:,} bytes would make a store past 2**63 bytes, "
                            "more than a 64-bit offset can address")])

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
        """What only shows once dataset and student meet: refused before any training step."""
        phase = self.spec.phases[index]
        ds = self.spec.datasets[phase.dataset]
        supported = tuple(getattr(student, "positions", ("last",)))  # the Student protocol's promise
        if ds.positions not in supported:
            raise SpecError(self.spec.source, [(f"datasets.{phase.dataset}.positions",
                            f"'{ds.positions}' targets, but student '{self.spec.student.name}' predicts only "
                            f"{', '.join(supported)}: use positions = 'last' or a student that predicts every position")])
        if phase.init == "kaiming" and hasattr(student, "init_weights"):
            raise SpecError(self.spec.source, [(f"phases[{index}].init", "'kaiming' would wipe the teacher's weights "
                                                "the student starts from (student.init); keep one of the two")])

    def check_eval(self) -> None:
        """Never evaluate on text a student trained on: no text a phase's sampler reads (a
        `ContentInput`) may hold the same bytes as an evaluation text, whatever either is called."""
        from kdcore.spec import content_inputs
        from kdcore.texts import text_hash

        ev = self.spec.eval
        evaluated = {}
        for key, ref in [("eval.text", ev.text)] + [(f"eval.extra_texts[{i}]", t) for i, t in enumerate(ev.extra_texts)]:
            evaluated.setdefault(self._anchored_text(lambda: text_hash(ref, self.spec.base_dir, ""), key), (key, ref))
        for name in dict.fromkeys(p.dataset for p in self.spec.phases):
            for key, ref in content_inputs(self.spec.datasets[name].sampler, f"datasets.{name}.sampler"):
                same = evaluated.get(self._anchored_text(lambda: text_hash(ref, self.spec.base_dir, ""), key))
                if same:
                    raise SpecError(self.spec.source, [(key, f"{ref} holds the same text as {same[0]} ({same[1]}): "
                                                        "evaluate on text the student never saw")])

    def _anchored_text(self, call, key: str):
        try:
            return call()
        except ParamError as e:
            raise SpecError(self.spec.source, [(e.at(key), e.message)]) from None

    def student(self, max_seq_len: int):
        return self._make(self.spec.student, self.context(max_seq_len), "student")

    def init_student(self, student) -> None:
        """A student that starts from the teacher's weights (it has `init_weights`) gets them; others keep theirs."""
        init = getattr(student, "init_weights", None)
        if init is not None:
            self._anchored(self.spec.student, "student", lambda: init(self.teacher))

    def losses(self, phase_index: int):
        phase = self.spec.phases[phase_index]
        ds = self.spec.datasets[phase.dataset]
        ctx = self.context(ds.max_seq_len, logits=ds.logits)
        return [
            (loss.name, loss.weight, self._make(loss, ctx, f"phases[{phase_index}].losses[{j}]"))
            for j, loss in enumerate(phase.losses)
        ]

    def optimizer(self, phase_index: int, parameters):
        """Phase `phase_index`'s optimizer over `parameters`, at the phase's lr."""
        phase = self.spec.phases[phase_index]
        make = self._make(phase.optimizer, self.context(0), f"phases[{phase_index}].optimizer")
        return make(parameters, phase.lr)

    def scheduler(self, phase_index: int, optimizer, total_steps: int):
        """Phase `phase_index`'s lr schedule, and whether it is stepped per epoch with the mean loss."""
        phase = self.spec.phases[phase_index]
        make = self._make(phase.scheduler, self.context(0), f"phases[{phase_index}].scheduler")
        return make(optimizer, total_steps), bool(make.per_epoch)

    def check_purity(self, dataset: str, sampler) -> None:
        """`kd validate --check`: a few samples drawn in a batch, again, alone and in another order
        must be equal: a sample is a pure function of (seed, index)."""
        seed = self.spec.datasets[dataset].seed
        batch = sampler.sample([0, 1, 2, 3], seed)
        draws = {"drawn again": (sampler.sample([0, 1, 2, 3], seed), [0, 1, 2, 3]),
                 "drawn alone": (sampler.sample([2], seed), [2]),
                 "drawn in another batch": (sampler.sample([3, 1], seed), [3, 1])}
        for how, (other, indices) in draws.items():
            for row, index in enumerate(indices):
                if not _same_row(batch, index, other, row):
                    raise SpecError(self.spec.source, [(f"datasets.{dataset}.sampler", f"sampler "
                                    f"'{self.spec.datasets[dataset].sampler.name}' is not a pure function of (seed, "
                                    f"index): sample {index} differs when {how}")])


def out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: Python's, torch's on the CPU (a RuntimeError) or on a GPU."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e)


def _same_row(a, i: int, b, j: int) -> bool:
    import torch

    if int(a.lengths[i]) != int(b.lengths[j]):
        return False
    x, y = (a.ids, b.ids) if a.ids is not None else (a.soft, b.soft)
    return x is not None and y is not None and torch.equal(x[i], y[j])
