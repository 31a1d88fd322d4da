"""`kd sample`: try a trained student, its continuation of a prompt beside the teacher's.

The student is the one the run ships (loaded from runs/<name>/reverted, as `kd eval` loads it):
greedy, or sampled at a temperature with nucleus (top-p) filtering from a seed.
"""

from __future__ import annotations

import torch

from kdcore.config.spec import Spec
from kdcore.eval.decoding import greedy_teacher, picker, student_continuation
from kdcore.stages.evaluate import EvaluateStage


def continue_both(spec: Spec, prompt: str, steps: int, temperature: float = 0.0, top_p: float = 1.0,
                  seed: int = 0, chat: bool = False) -> list[tuple[str, str]]:
    """[("teacher", text), ("student", text)] continuing `prompt`."""
    stage = EvaluateStage(spec)
    student, teacher = stage.trained_student(), stage.builder.teacher
    tok = teacher.tokenizer()
    ids = tok.chat(prompt) if chat else tok.encode(prompt)
    if temperature == 0:
        by_teacher = greedy_teacher(teacher, ids, steps)
    else:
        full = teacher.generate(torch.tensor([ids]), steps, picker(temperature, top_p, seed)) if steps else None
        by_teacher = full[0, len(ids):].tolist() if steps else []
    by_student = student_continuation(student, ids, steps, spec.student_seq_len, temperature, top_p, seed)
    return [("teacher", tok.decode(by_teacher)), ("student", tok.decode(by_student))]
