"""`kd validate`: every component built against the teacher's config (never its weights, unless a
sampler needs them), every check that needs two of them together, and the components that are not
built in tried on tiny inputs; all problems reported at once."""

from __future__ import annotations

from kdcore.config.spec import Spec
from kdcore.problems import KDError, Problem
from kdcore.stages import checks
from kdcore.stages.builder import Builder
from kdcore.stages.train_state import count_parameters
from kdcore.stages.trial import tried_components, trial_problems


def validate(spec: Spec, purity: bool = False) -> dict:
    """What `kd validate` prints (the resolved spec, the teacher's vocabulary, the student's size and
    initial weights); a KDError with every problem found. `purity`: every sampler is drawn twice,
    the built-in ones too (`--check`)."""
    builder, problems = Builder(spec), []

    def attempt(call):  # collect the problems of every component, to report them all at once
        try:
            return call()
        except KDError as e:
            problems.extend(e.problems)

    problems.extend(attempt(lambda: checks.size_problems(spec, builder.teacher)) or [])
    checks.raise_any(problems)  # nothing built that cannot fit
    student = attempt(builder.student)
    samplers = {name: attempt(lambda: _sampler(builder, name)) for name in spec.datasets}
    problems.extend(attempt(lambda: checks.eval_text_problems(spec)) or [])
    if student is not None:
        problems.extend(attempt(lambda: checks.eval_problems(spec, builder.teacher, student)) or [])
    for i in range(len(spec.phases)):
        attempt(lambda: builder.losses(i))
        if student is not None:
            attempt(lambda: builder.scheduler(i, builder.optimizer(i, student.parameters()), 1))
            problems.extend(checks.phase_problems(spec, i, student))
    if not problems:
        problems.extend(trial_problems(builder))
    if purity and not problems:
        for name, sampler in samplers.items():
            problems.extend(attempt(lambda: checks.purity_problems(spec, name, sampler)) or [])
    checks.raise_any(problems)
    return {"spec": spec.resolved(), "teacher_vocab": builder.teacher.vocab_size,
            "student_parameters": count_parameters(student),
            "student_init": getattr(student, "init_source", "random (seeded by phases[0].seed)"),
            "tried": tried_components(builder)}


def _sampler(builder: Builder, name: str):
    spec, teacher = builder.spec, builder.teacher
    problems: list[Problem] = checks.dataset_problems(spec, name, teacher)
    try:
        sampler = builder.sampler(name)
    except KDError as e:
        raise KDError(*problems, *e.problems) from None
    problems += checks.store_problems(spec, name, sampler, teacher.vocab_size)
    checks.raise_any(problems)
    return sampler
