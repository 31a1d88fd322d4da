"""Trying the components that are not built in, in seconds, before any stage spends time on them:
`kd validate` does it by default and `kd run` before the first teacher forward.

- a sampler draws a small batch twice, alone and in another order: purity in (seed, index);
- the student runs forward on a few one-hot rows at every position kind it declares (evaluation may
  ask for any of them), and its reverted form must give the same logits on the same ids; then one
  forward and backward in training mode, as the first training step makes them;
- each loss runs on dense and on top-k targets (where it accepts them when built): a finite scalar
  with a gradient to the student;
- an optimizer and a schedule take one step.
A built-in component is tried too with `everything=True` (the suite's own check of the built-ins).
"""

from __future__ import annotations

import torch

from kdcore.plugin.calls import plugin_code
from kdcore.plugin.data import Inputs, Targets
from kdcore.plugin.params import ComponentRef
from kdcore.plugin.registry import BUILTIN_MODULE
from kdcore.problems import KDError, Problem
from kdcore.stages import checks
from kdcore.stages.builder import Builder

BATCH = 2


def trial_problems(builder: Builder, everything: bool = False) -> list[Problem]:
    """What the spec's non-built-in components (all of them with `everything`) do wrong on tiny inputs."""
    spec, problems = builder.spec, []
    tried = lambda ref: everything or _plugin(builder, ref)  # noqa: E731
    for name in spec.datasets_in_use:
        if any(tried(ref) for loc, ref in spec.all_refs() if loc.startswith(f"datasets.{name}.sampler")):
            problems += _attempt(lambda: checks.purity_problems(spec, name, builder.sampler(name)))
    student = None
    try:
        student = builder.student()
    except KDError as e:
        return problems + list(e.problems)
    if tried(spec.student):
        problems += _attempt(lambda: student_problems(builder, student))
    for i, phase in enumerate(spec.phases):
        if any(tried(loss) for loss in phase.losses):
            problems += _attempt(lambda: loss_problems(builder, i, student))
        if tried(phase.optimizer) or tried(phase.scheduler):
            problems += _attempt(lambda: step_problems(builder, i, student))
    return problems


def tried_components(builder: Builder) -> list[str]:
    """The components `trial_problems` tries (those not built in), as `kd validate` names them."""
    spec = builder.spec
    used = [f"datasets.{name}.sampler" for name in spec.datasets_in_use]
    refs = [ref for loc, ref in spec.all_refs() if not loc.startswith(("datasets.", "teacher"))
            or loc.startswith(tuple(used))]
    return list(dict.fromkeys(str(builder.origin(ref)) for ref in refs if _plugin(builder, ref)))


def _plugin(builder: Builder, ref: ComponentRef) -> bool:
    return builder.registry.get(ref.kind, ref.name).source != BUILTIN_MODULE


def _attempt(call) -> list[Problem]:
    """The problems a trial finds, or those raised on the way (a component that fails to build)."""
    try:
        return call()
    except KDError as e:
        return list(e.problems)


def student_problems(builder: Builder, student) -> list[Problem]:
    """Forward on one-hot rows at each position kind it declares; the reverted student equals it on
    ids; a training-mode forward and backward runs."""
    spec, origin = builder.spec, builder.origin(builder.spec.student)
    S, V = spec.student_seq_len, builder.vocab_size
    ids = torch.randint(0, V, (BATCH, S), generator=torch.Generator().manual_seed(0))
    lengths = torch.full((BATCH,), S)
    soft = Inputs(lengths, soft=torch.nn.functional.one_hot(ids, V).float())
    with plugin_code(origin, "revert()"):
        reverted = student.eval().revert().eval()
    used = [spec.datasets[d].positions for d in spec.datasets_in_use]
    for positions in dict.fromkeys([*used, *student.positions]):  # those in use first: their problem is named
        expected = (BATCH, V) if positions == "last" else (BATCH, S, V)
        with torch.no_grad(), plugin_code(origin, "forward()"):
            floats = student(soft, positions=positions)
            tokens = reverted(ids, lengths, positions=positions)
        for what, out in (("forward", floats), ("the reverted student's forward", tokens)):
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                return [origin.problem(f"broke its contract: {what} (positions '{positions}') must give logits "
                                       f"{expected}, got {got}")]
        if not torch.allclose(floats, tokens, atol=1e-4, rtol=1e-4):
            gap = float((floats - tokens).abs().max())
            return [origin.problem(f"revert() gives another function: on the same ids (one-hot rows for the float "
                                   f"student) the logits differ by up to {gap:.3g} (positions '{positions}'); the "
                                   "shipped student would not be the one trained")]
    return training_problems(student, soft, spec.datasets[spec.phases[0].dataset].positions, origin)


def training_problems(student, soft: Inputs, positions: str, origin) -> list[Problem]:
    """One forward and backward in training mode (dropout and the like run only there); the
    gradients are cleared after, and the student left in eval mode."""
    student.train()
    try:
        with plugin_code(origin, "forward() in training mode"):
            out = student(soft, positions=positions)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            with plugin_code(origin, "backward()"):
                out.float().pow(2).mean().backward()
        elif any(p.requires_grad for p in student.parameters()):
            return [origin.problem(f"broke its contract: forward (positions '{positions}') in training mode gives "
                                   "logits with no gradient to its parameters (detached, or under no_grad)")]
    finally:
        student.zero_grad(set_to_none=True)
        student.eval()
    return []


def loss_problems(builder: Builder, index: int, student) -> list[Problem]:
    """Each of the phase's losses on dense and on top-k targets: a finite scalar with a gradient."""
    spec = builder.spec
    ds = spec.datasets[spec.phases[index].dataset]
    S, V = ds.max_seq_len, builder.vocab_size
    shape = (BATCH, V) if ds.positions == "last" else (BATCH, S, V)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g, requires_grad=True)
    teacher = torch.randn(shape, generator=g) * 3
    mask = torch.ones(BATCH, S, dtype=torch.bool) if ds.positions == "all" else None
    problems = []
    for kind, targets in (("dense", Targets(logits=teacher)), ("top-k", Targets.topk_of(teacher, min(ds.topk, V)))):
        for j, loss in enumerate(spec.phases[index].losses):
            origin = builder.origin(loss, f"phases[{index}].losses[{j}]")
            try:
                fn = builder._make(loss, builder.context(S, logits="topk" if kind == "top-k" else "dense",
                                                         topk=min(ds.topk, V), positions=ds.positions))
            except KDError:
                continue  # it refuses these targets when built: it says so before any training
            try:
                with plugin_code(origin, f"its call on {kind} targets"):
                    value = fn(logits, targets, mask)
            except KDError as e:
                problems += e.problems
                continue
            if not isinstance(value, torch.Tensor) or value.dim() != 0 or not torch.isfinite(value):
                problems.append(origin.problem(f"broke its contract: on {kind} targets it must give a finite scalar, "
                                               f"got {value if not isinstance(value, torch.Tensor) else tuple(value.shape)}"))
            elif not value.requires_grad:
                problems.append(origin.problem(f"broke its contract: on {kind} targets its value has no gradient to "
                                               "the student's logits (detached, or computed without them)"))
    return problems


def step_problems(builder: Builder, index: int, student) -> list[Problem]:
    """The phase's optimizer and schedule take one step on the student's parameters."""
    params = [p.detach().clone().requires_grad_(True) for p in student.parameters()][:2]
    optimizer = builder.optimizer(index, params)
    scheduler, per_epoch = builder.scheduler(index, optimizer, 10)
    sum(p.sum() for p in params).backward()
    phase = builder.spec.phases[index]
    with plugin_code(builder.origin(phase.optimizer), "step()"):
        optimizer.step()
    with plugin_code(builder.origin(phase.scheduler), "step()"):
        scheduler.step(1.0) if per_epoch else scheduler.step()
    return []
