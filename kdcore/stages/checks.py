"""What only shows once components meet, checked before any stage spends time: each check returns
problems (file and key), and the caller raises them together or reports them all (`kd validate`).
"""

from __future__ import annotations

import torch

from kdcore.config.spec import Spec
from kdcore.eval.windows import window_starts
from kdcore.plugin.contracts import runs_teacher
from kdcore.plugin.params import content_inputs
from kdcore.problems import KDError, Problem
from kdcore.store.layout import Layout
from kdcore.system.machine import gib, memory_bytes
from kdcore.texts import read_text, text_hash

# a store's byte offsets and numpy's indices are signed 64-bit
MAX_STORE_BYTES = 2**63 - 1


def raise_any(problems: list[Problem]) -> None:
    if problems:
        raise KDError(*dict.fromkeys(problems))


def dataset_problems(spec: Spec, dataset: str, teacher) -> list[Problem]:
    """The dataset against the teacher's limits (its config only: no weights read)."""
    ds, key = spec.datasets[dataset], f"datasets.{dataset}"
    problems = []
    limit = getattr(teacher, "max_positions", None)
    if limit and ds.max_seq_len > limit:
        problems.append(Problem(f"{ds.max_seq_len} is longer than the teacher's {limit} positions",
                                f"{key}.max_seq_len", spec.source))
    if ds.logits == "topk" and ds.topk > teacher.vocab_size:
        problems.append(Problem(f"{ds.topk} is larger than the vocabulary ({teacher.vocab_size})", f"{key}.topk", spec.source))
    return problems


def store_problems(spec: Spec, dataset: str, sampler, vocab_size: int) -> list[Problem]:
    """What the dataset's store would be, given what the sampler produces."""
    ds, key = spec.datasets[dataset], f"datasets.{dataset}"
    if sampler.produces == "soft" and ds.inputs == "seed" and runs_teacher(sampler):
        return [Problem("'seed' would re-run the teacher's generation on every training batch (the sampler mixes "
                        "teacher-generated ids into float rows); use inputs = 'dense'", f"{key}.inputs", spec.source)]
    per_sample = Layout.of(ds, vocab_size, sampler.produces).bytes_per_sample()
    if per_sample * ds.samples > MAX_STORE_BYTES:
        return [Problem(f"{ds.samples} samples of {per_sample:,} bytes would make a store past 2**63 bytes, more than "
                        "a 64-bit offset can address", f"{key}.samples", spec.source)]
    return []


def phase_problems(spec: Spec, index: int, student) -> list[Problem]:
    """What only shows once a phase's dataset and the student meet: refused before any training step."""
    phase = spec.phases[index]
    ds = spec.datasets[phase.dataset]
    problems = []
    if ds.positions not in tuple(student.positions):  # the Student protocol's promise
        problems.append(Problem(f"'{ds.positions}' targets, but student '{spec.student.name}' predicts only "
                                f"{', '.join(student.positions)}: use positions = 'last' or a student that predicts "
                                "every position", f"datasets.{phase.dataset}.positions", spec.source))
    if phase.init == "kaiming" and hasattr(student, "init_weights"):
        problems.append(Problem("'kaiming' would wipe the teacher's weights the student starts from (student.init); "
                                "keep one of the two", f"phases[{index}].init", spec.source))
    return problems


def eval_text_problems(spec: Spec) -> list[Problem]:
    """Never evaluate on text a student trained on: no text a phase's sampler reads (a
    `ContentInput`) may hold the same bytes as an evaluation text, whatever either is called."""
    ev = spec.eval
    evaluated = {}
    for key, ref in [("eval.text", ev.text)] + [(f"eval.extra_texts[{i}]", t) for i, t in enumerate(ev.extra_texts)]:
        evaluated.setdefault(_hash(spec, ref, key), (key, ref))
    problems = []
    for name in spec.datasets_in_use:
        for key, ref in content_inputs(spec.datasets[name].sampler, f"datasets.{name}.sampler"):
            same = evaluated.get(_hash(spec, ref, key))
            if same:
                problems.append(Problem(f"{ref} holds the same text as {same[0]} ({same[1]}): evaluate on text the "
                                        "student never saw", key, spec.source))
    return problems


def _hash(spec: Spec, ref: str, key: str) -> str:
    try:
        return text_hash(ref, spec.base_dir, "")
    except KDError as e:  # checked with the spec: only a text removed since lands here
        raise e.at(key, spec.source) from None


def purity_problems(spec: Spec, dataset: str, sampler) -> list[Problem]:
    """A few samples drawn in a batch, again, alone and in another order must be equal: a sample is a
    pure function of (seed, index)."""
    seed = spec.datasets[dataset].seed
    batch = sampler.sample([0, 1, 2, 3], seed)
    draws = {"drawn again": (sampler.sample([0, 1, 2, 3], seed), [0, 1, 2, 3]),
             "drawn alone": (sampler.sample([2], seed), [2]),
             "drawn in another batch": (sampler.sample([3, 1], seed), [3, 1])}
    for how, (other, indices) in draws.items():
        for row, index in enumerate(indices):
            if not same_row(batch, index, other, row):
                name = spec.datasets[dataset].sampler.name
                source = spec.registry.get("sampler", name).source
                return [Problem(f"sampler '{name}' (from {source}) is not a pure function of (seed, index): sample "
                                f"{index} differs when {how}; draw every random number from the sample's own "
                                "generator (SoftSampler's `g`, or kdcore.api.generator(seed, index)), never from "
                                "torch's global one or one shared by the batch", f"datasets.{dataset}.sampler", spec.source)]
    return []


def same_row(a, i: int, b, j: int) -> bool:
    if int(a.lengths[i]) != int(b.lengths[j]):
        return False
    x, y = (a.ids, b.ids) if a.ids is not None else (a.soft, b.soft)
    return x is not None and y is not None and torch.equal(x[i], y[j])


# --- sizes: what cannot fit this machine, or would run for days, refused before any work ----------------

MAX_BLOCKS = 1_000_000  # a store's blocks: each a file per array, a commit record and a flag
MAX_TEACHER_TOKENS = 10**10  # positions through the teacher: days on any one machine


def size_problems(spec: Spec, teacher) -> list[Problem]:
    """What the spec asks that this machine cannot hold, or would take days: the teacher's weights,
    a store's blocks, the teacher's work, a batch's tensors, an evaluation's decode."""
    problems, memory = [], memory_bytes()
    count = getattr(teacher, "parameter_count", None)
    if callable(count) and count() * teacher.dtype.itemsize > memory:
        problems.append(Problem(f"its {count():,} parameters need {gib(count() * teacher.dtype.itemsize)}, more "
                                f"than this machine's {gib(memory)}", "teacher", spec.source))
    for name, ds in spec.datasets.items():
        problems += _dataset_size(spec, name, ds, teacher.vocab_size, memory)
    for i, phase in enumerate(spec.phases):
        ds = spec.datasets[phase.dataset]
        per_row = (ds.max_seq_len if ds.positions == "all" else 1) * (teacher.vocab_size if ds.logits == "dense" else 3 * ds.topk)
        batch = 4 * min(phase.batch_size, ds.samples) * (per_row + ds.max_seq_len * teacher.vocab_size)  # + float rows
        if batch > memory // 2:
            problems.append(Problem(f"a batch of {phase.batch_size} holds about {gib(batch)} of inputs and targets, "
                                    f"more than half this machine's {gib(memory)}", f"phases[{i}].batch_size", spec.source))
    limit = getattr(teacher, "max_positions", None) or 100_000
    if spec.eval.max_new_tokens > limit:
        problems.append(Problem(f"{spec.eval.max_new_tokens:,} tokens is past the teacher's {limit:,} positions",
                                "eval.max_new_tokens", spec.source))
    return problems


def _dataset_size(spec: Spec, name: str, ds, vocab: int, memory: int) -> list[Problem]:
    problems, key = [], f"datasets.{name}"
    blocks = -(-ds.samples // min(ds.block_size, ds.samples))
    if blocks > MAX_BLOCKS:
        problems.append(Problem(f"{ds.samples:,} samples in blocks of {ds.block_size:,} make {blocks:,} blocks (files "
                                f"each), more than {MAX_BLOCKS:,}: raise block_size", f"{key}.block_size", spec.source))
    if ds.samples * ds.max_seq_len > MAX_TEACHER_TOKENS:
        problems.append(Problem(f"{ds.samples:,} samples x {ds.max_seq_len} positions is {ds.samples * ds.max_seq_len:,} "
                                f"teacher positions, more than {MAX_TEACHER_TOKENS:,} (days on any one machine)",
                                f"{key}.samples", spec.source))
    batch = 4 * min(ds.batch_size, ds.block_size, ds.samples) * ds.max_seq_len * vocab * 2  # float rows in, logits out
    if batch > memory // 2:
        problems.append(Problem(f"a teacher batch of {ds.batch_size} holds about {gib(batch)} of rows and logits, more "
                                f"than half this machine's {gib(memory)}", f"{key}.batch_size", spec.source))
    return problems


def eval_problems(spec: Spec, teacher, student) -> list[Problem]:
    """What evaluation would meet only after generation and training: texts too short for the
    windows asked for, and positions the student cannot give."""
    problems, ev = [], spec.eval
    if ev.positions and ev.positions not in tuple(student.positions):
        problems.append(Problem(f"'{ev.positions}', but student '{spec.student.name}' predicts only "
                                f"{', '.join(student.positions)}", "eval.positions", spec.source))
    tokenizer = teacher.tokenizer()
    for key, ref in [("eval.text", ev.text)] + [(f"eval.extra_texts[{i}]", t) for i, t in enumerate(ev.extra_texts)]:
        tokens = len(tokenizer.encode(read_text(ref, spec.base_dir, key)))
        starts = window_starts(tokens, spec.student_seq_len)
        if starts < ev.windows:
            problems.append(Problem(f"{ref} has {tokens} tokens: {max(starts, 0)} windows of {spec.student_seq_len} "
                                    f"tokens (and the next), fewer than eval.windows = {ev.windows}", key, spec.source))
    return problems
